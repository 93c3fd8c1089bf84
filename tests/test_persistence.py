"""WorkerStatePersistence against a real server: boot, write-through, outages, repair, shutdown."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb.local_servers import PrivateServer, free_port
from statedb import AccessDeniedError, RedisUnavailableError, WrongKeyTypeError
from tests.persistences import Persistences
from tests.round_trips import round_trips


@pytest.fixture
def make(key_prefix: str, redis_url: str) -> Iterator[Persistences]:
    with Persistences(key_prefix, redis_url) as persistences:
        yield persistences


def stored(url: str, key: str) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    try:
        return {m.decode(): s for m, s in client.zrange(key, 0, -1, withscores=True)}
    finally:
        client.close()


def test_boot_merges_newest_first_within_memory_limits(make: Persistences, redis_client: redis.Redis,
                                                       key_prefix: str) -> None:
    now = time.time()
    key = f"{key_prefix}w@host:revoked"
    redis_client.zadd(key, {"expired": now - 7200, **{f"id{i}": now - 10 * i for i in range(1, 6)}})
    revoked = LimitedSet(maxlen=3, expires=3600)
    before = time.monotonic()
    make(revoked=revoked).boot()
    assert sorted(revoked._data) == ["id1", "id2", "id3"]
    stamp_age = before - revoked._data["id3"][0]
    # Stamped on the local monotonic clock, as old as it really is to within one window
    # (1% of the expiry, 36 s here), younger never older: id3 (30 s old) may look new.
    assert 30 - 0.01 * 3600 - 1 < stamp_age < 32
    assert redis_client.zcard(key) == 6  # boot reads, never trims Redis


def test_boot_reads_every_window_and_page_and_stamps_within_one_window(
    make: Persistences, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Three hours of revokes, several pages per window (chunk 7), a fleet set beside the
    # worker's own, ids sharing one time, and a limit below what is stored.
    now = time.time()
    own = {f"own{i}": now - 3 * i for i in range(3000)}  # 0 .. 9000 s old
    own.update({f"batch{i}": now - 500 for i in range(40)})
    fleet = {f"fleet{i}": now - 7 * i for i in range(400)}
    redis_client.zadd(f"{key_prefix}w@host:revoked", own)
    redis_client.zadd(f"{key_prefix}shared:fleet-revoked", fleet)
    revoked = LimitedSet(maxlen=2500, expires=10800)
    before = time.monotonic()
    make(revoked=revoked, load_chunk_size=7).boot()
    after = time.monotonic()
    newest = sorted({**own, **fleet}.items(), key=lambda row: row[1], reverse=True)
    # The limit keeps the newest, to within one window at the boundary (about 50 ids here).
    assert set(revoked._data) >= {task_id for task_id, _ in newest[:2400]}
    assert len(revoked) == 2500
    width = 0.01 * 10800
    for task_id, (stamp, *_) in revoked._data.items():
        age = now - {**own, **fleet}[task_id]
        # never older than it is, at most one window younger
        assert before - stamp <= age + (after - before) + 0.01 and age - width - 1 <= after - stamp


@pytest.mark.parametrize("expires", [3600.0, 0.0, math.inf], ids=["id-windows", "exact-scores", "never-expire"])
@pytest.mark.parametrize("protocol", [None, 3], ids=["default-resp2", "resp3-from-url"])
def test_boot_reads_the_same_over_resp2_and_resp3(make: Persistences, redis_client: redis.Redis, key_prefix: str,
                                                  redis_url: str, protocol: int | None, expires: float) -> None:
    now = time.time()
    redis_client.zadd(f"{key_prefix}w@host:revoked", {"future": now + 60, **{f"id{i}": now - i for i in range(50)}})
    url = redis_url if protocol is None else f"{redis_url}{'&' if '?' in redis_url else '?'}protocol={protocol}"
    revoked = LimitedSet(maxlen=100, expires=expires)
    persistence = make(url=url, revoked=revoked, load_chunk_size=7)
    persistence.boot()
    client = persistence.repository.client
    assert client.connection_pool.connection_kwargs["protocol"] in ((2,) if protocol is None else (3, "3"))
    assert sorted(revoked._data) == sorted(["future", *(f"id{i}" for i in range(50))])
    revoked.add("live")  # and the write-through works over it
    assert "live" in stored(redis_url, f"{key_prefix}w@host:revoked")


def test_boot_merges_and_stores_the_clock(make: Persistences, redis_client: redis.Redis, key_prefix: str) -> None:
    redis_client.set(f"{key_prefix}w@host:clock", 100)
    clock = LamportClock(initial_value=3)
    make(clock=clock).boot()
    assert clock.value == 101
    assert redis_client.get(f"{key_prefix}w@host:clock") == b"101"


def test_memory_ttl_setting_is_applied(make: Persistences) -> None:
    revoked = LimitedSet(maxlen=10, expires=10800)
    make(revoked=revoked, revoke_expires=60).boot()
    assert revoked.expires == 60


def test_every_addition_is_in_redis_when_the_call_returns(make: Persistences, redis_url: str, key_prefix: str) -> None:
    revoked = LimitedSet(maxlen=100, expires=3600)
    persistence = make(revoked=revoked)
    persistence.boot()
    revoked.add("one")
    assert "one" in stored(redis_url, f"{key_prefix}w@host:revoked")
    revoked.update(["a", "b", "c"])
    assert {"a", "b", "c"} <= set(stored(redis_url, f"{key_prefix}w@host:revoked"))
    assert persistence.pending == {}


def test_many_ids_are_one_round_trip(make: Persistences, monkeypatch: pytest.MonkeyPatch) -> None:
    revoked = LimitedSet(maxlen=100_000)
    persistence = make(revoked=revoked)
    persistence.boot()
    revoked.add("first")  # the writer's connection is made: its handshake is not counted below
    calls: list[int] = []
    original = persistence.writer.add_revoked  # write-through goes through the budgeted writer

    def counting(task_ids: Any, **kwargs: Any) -> int:
        calls.append(len(task_ids))
        return original(task_ids, **kwargs)

    monkeypatch.setattr(persistence.writer, "add_revoked", counting)
    with round_trips() as sent:
        revoked.update([f"t{i}" for i in range(20_000)])
    assert calls == [20_000]
    assert len(sent) == 1, sent


def test_clear_in_a_prefork_child_deletes_nothing(make: Persistences, redis_url: str, key_prefix: str) -> None:
    revoked = LimitedSet(maxlen=100)
    make(revoked=revoked).boot()
    revoked.add("kept")
    revoked.clear()
    assert "kept" in stored(redis_url, f"{key_prefix}w@host:revoked")


def test_ids_that_cannot_be_stored_are_honoured_in_memory(make: Persistences, caplog: pytest.LogCaptureFixture) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(revoked=revoked)
    persistence.boot()
    with caplog.at_level(logging.ERROR, logger="celery_redis_statedb"):
        revoked.add(12345)
        revoked.add("x" * 100_000)
    assert 12345 in revoked
    assert persistence.pending == {}
    assert "not storable" in caplog.text


def test_revokes_during_an_outage_are_kept_and_written_when_redis_is_back(
    make: Persistences, private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(url=private_server.url, revoked=revoked, socket_timeout=1, socket_connect_timeout=1)
    persistence.boot()
    revoked.add("before")
    private_server.kill()
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        started = time.monotonic()
        revoked.update(["during-1", "during-2"])
        revoked.add("during-3")
        assert time.monotonic() - started < 3  # the consumer is not held up
    assert {"during-1", "during-2", "during-3"} <= set(revoked._data)
    assert set(persistence.pending) == {"during-1", "during-2", "during-3"}
    assert "NOT yet stored in Redis" in caplog.text
    persistence.tick()  # still down: nothing raised into Celery's timer
    private_server.start()  # back, and empty
    deadline = time.monotonic() + 10
    key = persistence.repository.keys.revoked
    while time.monotonic() < deadline and not {"before", "during-3"} <= set(stored(private_server.url, key)):
        time.sleep(persistence.config.flush_interval)
        persistence.tick()
    assert {"before", "during-1", "during-2", "during-3"} <= set(stored(private_server.url, key))
    assert persistence.pending == {}


def test_a_redis_that_lost_its_data_is_repaired(make: Persistences, private_server: PrivateServer) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(url=private_server.url, revoked=revoked, clock_interval=0.1)
    persistence.boot()
    revoked.update(["a", "b"])
    first_time = stored(private_server.url, persistence.repository.keys.revoked)["a"]
    redis.Redis.from_url(private_server.url).flushall()
    time.sleep(0.15)
    persistence.tick()  # the clock it wrote at boot is gone: data loss
    repaired = stored(private_server.url, persistence.repository.keys.revoked)
    assert set(repaired) == {"a", "b"}
    assert abs(repaired["a"] - first_time) < 1.0  # times rebuilt from the monotonic stamps


def test_a_restart_is_noticed_through_the_reconnect(make: Persistences, private_server: PrivateServer) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(url=private_server.url, revoked=revoked)
    persistence.boot()
    revoked.add("a")
    private_server.kill()
    private_server.start()
    revoked.add("b")  # succeeds on a fresh connection to an empty server
    persistence.tick()
    assert set(stored(private_server.url, persistence.repository.keys.revoked)) == {"a", "b"}


def test_boot_gives_up_after_the_budget(make: Persistences) -> None:
    persistence = make(url=f"redis://127.0.0.1:{free_port()}/0", boot_timeout=1, retry_backoff_base=0.1,
                       socket_connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RedisUnavailableError, match="cannot reach Redis"):
        persistence.boot()
    assert time.monotonic() - started < 5


def test_degrade_starts_without_redis_and_merges_later(
    make: Persistences, private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = private_server.port
    private_server.kill()
    revoked = LimitedSet(maxlen=100)
    persistence = make(url=private_server.url, revoked=revoked, boot_timeout=0, on_unavailable="degrade",
                       socket_connect_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        persistence.boot()
    assert "DEGRADED" in caplog.text
    revoked.add("while-degraded")
    assert "while-degraded" in revoked
    private_server.start()
    assert private_server.port == port
    key = persistence.repository.keys.revoked
    redis.Redis.from_url(private_server.url).zadd(key, {"stored-before": time.time() - 5})
    time.sleep(persistence.config.flush_interval)
    persistence.tick()
    assert "stored-before" in revoked
    assert {"stored-before", "while-degraded"} <= set(stored(private_server.url, key))


def test_a_key_of_another_type_is_reported_and_the_boot_goes_on(
    make: Persistences, redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"{key_prefix}w@host:revoked"
    redis_client.set(key, b"old blob")
    redis_client.zadd(f"{key_prefix}shared:fleet-revoked", {"fleet-id": time.time()})
    revoked = LimitedSet(maxlen=100, expires=100)
    persistence = make(revoked=revoked)
    with caplog.at_level(logging.ERROR, logger="celery_redis_statedb"):
        persistence.boot()
    assert "fleet-id" in revoked  # what can be read is honoured
    assert any(repr(key) in r.getMessage() and "another type" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR), caplog.text
    assert persistence.status()["unreadable_keys"] == [key]
    revoked.add("new")  # honoured in memory, waiting for the key to be repaired
    assert "new" in revoked and "new" in persistence.pending
    assert redis_client.get(key) == b"old blob"
    with pytest.raises(WrongKeyTypeError):
        persistence.repository.add_revoked(["x"])


def test_wrong_password_stops_boot_at_once(make: Persistences) -> None:
    server = PrivateServer(password="good").start()
    try:
        started = time.monotonic()
        with pytest.raises(AccessDeniedError):
            make(url=f"redis://:bad@127.0.0.1:{server.port}/0").boot()
        assert time.monotonic() - started < 2  # not retried: waiting cannot fix a password
    finally:
        server.close()


def test_save_flushes_and_moves_the_clock_forward(make: Persistences, redis_client: redis.Redis,
                                                  key_prefix: str) -> None:
    clock = LamportClock()
    persistence = make(clock=clock)
    persistence.boot()
    at_boot = clock.value
    persistence.save()
    persistence.save()  # idempotent
    assert int(redis_client.get(f"{key_prefix}w@host:clock") or 0) == at_boot + 1


def test_save_reports_what_could_not_be_written(
    make: Persistences, private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(url=private_server.url, revoked=revoked, socket_timeout=0.5, socket_connect_timeout=0.5)
    persistence.boot()
    private_server.kill()
    revoked.update(["x", "y"])
    with caplog.at_level(logging.ERROR, logger="celery_redis_statedb"):
        persistence.save()
    assert "2 revoked ids could not be written" in caplog.text


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: a stalled or unreachable Redis."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        listener.close()


def test_while_failing_revokes_do_no_io_and_the_timer_probe_is_short(
    make: Persistences, black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(url=black_hole, revoked=revoked, socket_timeout=0.3, socket_connect_timeout=0.3,
                       boot_timeout=0, on_unavailable="degrade")
    persistence.boot()
    assert persistence.failing
    writes: list[object] = []
    monkeypatch.setattr(persistence.repository, "add_revoked_at", writes.append)
    started = time.monotonic()
    for i in range(50):
        revoked.add(f"t{i}")
    assert time.monotonic() - started < 0.2
    assert writes == []
    assert len(persistence.pending) == 50
    persistence.outage._next_attempt = 0.0  # the backoff has run out: the timer probes now
    started = time.monotonic()
    persistence.tick()
    assert time.monotonic() - started < 1.0  # one short PING, not the full command timeouts
    assert persistence.failing
    assert persistence.outage._next_attempt > time.monotonic()  # backing off, measured from the failure


def test_resync_reads_the_entries_of_every_celery_release(make: Persistences, redis_url: str) -> None:
    """Celery <= 5.6 keeps (stamp, item) entries, 5.7 (stamp, seq, item): only entry[0] is used."""
    revoked = LimitedSet(maxlen=100)
    persistence = make(revoked=revoked)
    persistence.boot()
    stamp = time.monotonic() - 60
    revoked._data = {"old-layout": (stamp, "old-layout"), "new-layout": (stamp, 7, "new-layout")}
    persistence._resync()
    times = stored(redis_url, persistence.repository.keys.revoked)
    assert set(times) == {"old-layout", "new-layout"}
    assert abs(times["old-layout"] - (time.time() - 60)) < 2


def test_shutdown_after_data_loss_writes_everything_back(make: Persistences, private_server: PrivateServer) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(url=private_server.url, revoked=revoked, clock=LamportClock())
    persistence.boot()
    revoked.update(["a", "b"])
    redis.Redis.from_url(private_server.url).flushall()
    persistence.save()  # the clock save finds its key gone: everything is written back
    assert set(stored(private_server.url, persistence.repository.keys.revoked)) == {"a", "b"}


def test_save_detaches_the_write_through(make: Persistences) -> None:
    revoked = LimitedSet(maxlen=100)
    persistence = make(revoked=revoked)
    persistence.boot()
    persistence.save()
    assert type(revoked) is LimitedSet
