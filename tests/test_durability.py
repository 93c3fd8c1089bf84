"""Writes that count once replicated or on disk (issue 13): WAIT / WAITAOF after every durable write,
staged through the command layer, and what a worker does when too few replicas acknowledge."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import WorkerStatePersistence, resolve_config
from celery_redis_statedb.local_servers import REPLICATION_ARGS, PrivateServer, replicas_in_sync
from statedb import ConfigurationError, RedisUnavailableError, StateDBConfig, StateOperations, SyncStateRepository
from statedb.durability import Durability, check_support, durable
from statedb.errors import NotDurableError
from statedb.stamps import add_stamps
from tests.recording_pipeline import RecordingPipeline
from tests.workers import wait_until

URL = "redis://localhost:6379/0"


# -- the command layer ------------------------------------------------------------------------


def test_settings_give_the_durability_of_every_worker_write() -> None:
    assert resolve_config(URL).durability is None
    config = resolve_config(URL, env={"CELERY_REDIS_STATE_MIN_REPLICAS": "2",
                                      "CELERY_REDIS_STATE_REPLICA_TIMEOUT": "0.25"})
    assert config.durability == Durability(replicas=2, timeout_ms=250, fsync=False)
    assert resolve_config(URL, conf={"redis_state_fsync": "yes"}).durability == Durability(0, 100, fsync=True)
    operations = StateOperations.for_worker(config, "w1")
    for operation in (operations.add_revoked(["a"], 1.0), operations.add_revoked_at([("a", 1.0)]),
                      operations.add_fleet_revoked_at([("a", 1.0)]), operations.add_stamps([("h", "v")], 1.0)):
        pipe = RecordingPipeline()
        operation.stage(pipe)
        assert pipe.calls[-1][:2] == ("execute_command", ("WAIT", 2, 250))
        assert operation.keys[-1] is None
    assert StateOperations.for_worker(resolve_config(URL), "w1").add_revoked(["a"], 1.0).keys == ("celery:worker:"
                                                                                                    "state:w1:revoked",)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"env": {"CELERY_REDIS_STATE_MIN_REPLICAS": "-1"}}, "CELERY_REDIS_STATE_MIN_REPLICAS='-1' is not valid: "
                                                             "expected a whole number"),
        ({"conf": {"redis_state_min_replicas": 1.5}}, "expected a whole number"),
        ({"conf": {"redis_state_min_replicas": True}}, "expected a whole number"),
        ({"conf": {"redis_state_replica_timeout": 0}}, "replica_timeout must be finite and greater than zero"),
        ({"conf": {"redis_state_fsync": "maybe"}}, "expected true or false"),
        ({"conf": {"redis_state_min_replicas": 1, "redis_state_replica_timeout": 0.5}},
         "replica_timeout (redis_state_replica_timeout) is 0.5 s: it must be shorter than the write budget"),
        ({"conf": {"redis_state_fsync": True, "redis_state_socket_timeout": 0.1}}, "shorter than the write budget"),
    ],
)
def test_bad_durability_settings_name_the_fault(kwargs: dict[str, dict[str, object]], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_config(URL, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_a_long_replica_timeout_is_fine_without_replicas_to_wait_for() -> None:
    assert resolve_config(URL, conf={"redis_state_replica_timeout": 5}).durability is None


def test_wait_is_staged_after_the_write_and_its_reply_decides() -> None:
    operation = durable(add_stamps("k", [("h", "v")], 1.0, 10), Durability(1, 100))
    pipe = RecordingPipeline()
    operation.stage(pipe)
    assert [name for name, *_ in pipe.calls] == ["zadd", "execute_command"]
    assert operation.result([1, 1]) == 1
    assert operation.result([0, 3]) == 0
    with pytest.raises(NotDurableError, match="only 0 of 1 replica acknowledged the write within 100 ms "
                                              r"\(redis_state_min_replicas\): it does not count and is retried"):
        operation.result([1, 0])


def test_waitaof_checks_the_local_fsync_and_the_replicas() -> None:
    operation = durable(add_stamps("k", [("h", "v")], 1.0, 10), Durability(2, 50, fsync=True))
    pipe = RecordingPipeline()
    operation.stage(pipe)
    assert pipe.calls[-1][:2] == ("execute_command", ("WAITAOF", 1, 2, 50))
    assert operation.result([1, [1, 2]]) == 1
    with pytest.raises(NotDurableError, match="not fsynced to the primary's AOF within 50 ms"):
        operation.result([1, [0, 2]])
    with pytest.raises(NotDurableError, match="only 1 of 2 replicas fsynced the write"):
        operation.result([1, [1, 1]])


@pytest.mark.parametrize(
    ("reply", "error", "fragment"),
    [
        (redis.ResponseError("unknown command 'WAITAOF', with args beginning with: "), ConfigurationError,
         "redis_state_fsync needs WAITAOF (Redis >= 7.2, or Valkey)"),
        (redis.ResponseError("WAITAOF cannot be used when numlocal is set but appendonly is disabled."),
         ConfigurationError, "needs the server's append-only file (appendonly yes)"),
        (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), RedisUnavailableError, "NOREPLICAS"),
        (redis.ResponseError("WAIT cannot be used with replica instances. Please also note ..."),
         RedisUnavailableError, "cannot serve us right now"),
    ],
)
def test_errors_of_wait_are_named_for_what_was_asked(reply: Exception, error: type[Exception], fragment: str) -> None:
    operation = durable(add_stamps("k", [("h", "v")], 1.0, 10), Durability(1, 100, fsync=True))
    with pytest.raises(error, match=None) as info:
        operation.result([1, reply])
    assert fragment in str(info.value)


def test_an_error_of_the_write_itself_comes_first() -> None:
    operation = durable(add_stamps("k", [("h", "v")], 1.0, 10), Durability(1, 100))
    with pytest.raises(RedisUnavailableError, match="cannot take writes to 'k'"):
        operation.result([redis.ResponseError("READONLY You can't write against a read only replica."),
                          redis.ResponseError("WAIT cannot be used with replica instances.")])


def test_nothing_written_waits_for_nothing() -> None:
    operation = durable(add_stamps("k", [], 1.0, 10), Durability(1, 100))
    assert operation.keys == ()
    assert check_support(add_stamps("k", [], 1.0, 10), Durability(1, 100)).keys == ()  # replicas: no probe


# -- a primary and its replica ----------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[PrivateServer, PrivateServer]]:
    """A primary and one replica of it (no Sentinel)."""
    with PrivateServer(extra_args=REPLICATION_ARGS) as primary:
        replica = PrivateServer(kind=primary.kind, extra_args=(*REPLICATION_ARGS, "--replicaof", "127.0.0.1",
                                                               str(primary.port)))
        with replica:
            wait_until(lambda: replicas_in_sync(primary, 1) or None, 15, "the replica in sync")
            yield primary, replica


def online_replicas(server: PrivateServer) -> int:
    client = server.client()
    try:
        info = client.info("replication")
    finally:
        client.close()
    return sum(1 for name, value in info.items() if name.startswith("slave") and isinstance(value, dict)
               and value.get("state") == "online")


def test_a_write_counts_once_a_replica_has_it(pair: tuple[PrivateServer, PrivateServer], key_prefix: str) -> None:
    primary, replica = pair
    config = StateDBConfig(url=primary.url, key_prefix=key_prefix, min_replicas=1)
    with SyncStateRepository.open(config, "w1") as repository:
        assert repository.add_revoked(["a"]) == 1
        replica.kill()
        wait_until(lambda: online_replicas(primary) == 0 or None, 15, "the primary to drop its replica")
        with pytest.raises(NotDurableError, match="only 0 of 1 replica acknowledged"):
            repository.add_revoked(["b"])
        with pytest.raises(NotDurableError, match="only 1 of 2 replicas acknowledged"), SyncStateRepository.open(
                StateDBConfig(url=primary.url, key_prefix=key_prefix, min_replicas=2), "w1") as wanting_two:
            replica.start()
            wait_until(lambda: replicas_in_sync(primary, 1) or None, 15, "the replica back in sync")
            wanting_two.add_revoked(["c"])
        assert repository.add_revoked(["b"]) == 0  # applied the first time, counted now
        assert repository.count_revoked() == 3


@pytest.fixture
def make(key_prefix: str) -> Iterator[Callable[..., WorkerStatePersistence]]:
    made: list[WorkerStatePersistence] = []

    def factory(url: str, **settings: Any) -> WorkerStatePersistence:
        persistence = WorkerStatePersistence(StateDBConfig(url=url, key_prefix=key_prefix, **settings), "w@host",
                                             revoked=LimitedSet(maxlen=50_000, expires=10_800), clock=LamportClock())
        made.append(persistence)
        return persistence

    yield factory
    for persistence in made:
        persistence.save()


def test_a_worker_keeps_unreplicated_revokes_pending_then_writes_them(
    pair: tuple[PrivateServer, PrivateServer], make: Callable[..., WorkerStatePersistence], key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, replica = pair
    persistence = make(primary.url, min_replicas=1, retry_backoff_base=0.05, retry_backoff_cap=0.2)
    persistence.boot()
    persistence.revoked.add("durable")
    assert not persistence.pending
    replica.kill()
    wait_until(lambda: online_replicas(primary) == 0 or None, 15, "the primary to drop its replica")
    connections = persistence.connections.count
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        persistence.revoked.update(["x", "y"])
    assert set(persistence.pending) == {"x", "y"}  # applied on the primary alone: not counted
    assert persistence.revoked.__contains__("x")  # honoured in memory all the same
    assert "2 revoked ids are honoured in memory but NOT yet stored" in caplog.text
    assert "only 0 of 1 replica acknowledged" in caplog.text
    persistence.tick()
    assert set(persistence.pending) == {"x", "y"}  # still no replica: still pending
    replica.start()
    wait_until(lambda: replicas_in_sync(primary, 1) or None, 15, "the replica back in sync")
    wait_until(lambda: (persistence.tick(), not persistence.pending)[1] or None, 15, "the pending ids written")
    assert not persistence.failing
    # Redis answered throughout: the pending ids were written, not the whole set again.
    assert persistence.connections.count == connections
    assert "held in memory back to" not in caplog.text
    replica_client = replica.client()
    try:
        assert {m.decode() for m in replica_client.zrange(f"{key_prefix}w@host:revoked", 0, -1)} == {
            "durable", "x", "y"}
    finally:
        replica_client.close()


# -- fsync (WAITAOF) ----------------------------------------------------------------------------


def test_fsync_needs_the_append_only_file_and_says_so_at_boot(make: Callable[..., WorkerStatePersistence]) -> None:
    with (PrivateServer(kind="embedded") as without_aof,
          pytest.raises(ConfigurationError, match="redis_state_fsync needs the server's append-only file")):
        make(without_aof.url, fsync=True).boot()
    with PrivateServer(kind="embedded", appendonly=True, appendfsync="everysec") as with_aof:
        persistence = make(with_aof.url, fsync=True, replica_timeout=0.4, write_budget=2.0)
        persistence.boot()
        persistence.revoked.update(["a", "b"])
        assert not persistence.pending and not persistence.failing
