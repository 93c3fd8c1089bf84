"""Revokes lost without a word (issue 11): eviction, the fleet set, rollback, the blind window,
clock skew, a restore during a partition. Real servers of our own, real workers.

Each end-to-end scenario prints one ``GUARANTEE ...`` line with what it measured.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.utils.collections import LimitedSet

from celery_redis_statedb import restore_tasks
from celery_redis_statedb import watch as watch_module
from celery_redis_statedb.local_servers import PrivateServer
from celery_redis_statedb.settings import resolve_config
from statedb import ConfigurationError, EvictionPolicyError, StateDBConfig
from tests.acl import ACL_PASSWORD, worker_acl_rule
from tests.clocks import SkewedTime
from tests.guarantees import guarantee, missing_from
from tests.keys import clock_key, revoked_key, shared_key
from tests.persistences import Persistences
from tests.proxy import DelayingProxy
from tests.round_trips import round_trips
from tests.workers import (
    CANNOT_START,
    WorkerHarness,
    WorkerProcess,
    assert_discarded,
    fast_env,
    new_task_id,
    wait_until,
)

EVICTING = ("--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru")


@pytest.fixture
def server(private_server: PrivateServer) -> PrivateServer:
    """A server of this test's own (the tests stop, flush and reconfigure it)."""
    return private_server


@pytest.fixture
def admin(server: PrivateServer) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


def wait_stored(client: redis.Redis, key: str, ids: list[str], timeout: float, worker: WorkerProcess) -> float:
    """Seconds until ``key`` holds every id of ``ids`` (fails after ``timeout``)."""
    started = time.monotonic()
    try:
        wait_until(lambda: not missing_from(client, key, ids), timeout, f"{len(ids)} ids in {key}", interval=0.02)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {len(missing_from(client, key, ids))} missing\n{worker.log()[-6000:]}") from None
    return time.monotonic() - started


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("YES", True), ("1", True), (True, True),
                                               ("off", False), ("0", False), (False, False), (0, False)])
def test_accept_eviction_parses_booleans(raw: object, expected: bool) -> None:
    config = resolve_config("redis://localhost:6379/0", conf={"redis_state_accept_eviction": raw})
    assert config.accept_eviction is expected


def test_accept_eviction_rejects_anything_else_clearly() -> None:
    with pytest.raises(ConfigurationError, match=r"CELERY_REDIS_STATE_ACCEPT_EVICTION='maybe' is not valid: "
                                                 r"expected true or false"):
        resolve_config("redis://localhost:6379/0", env={"CELERY_REDIS_STATE_ACCEPT_EVICTION": "maybe"})
    with pytest.raises(ConfigurationError, match="accept_eviction must be True or False"):
        StateDBConfig(url="redis://localhost:6379/0", accept_eviction="yes")  # type: ignore[arg-type]


# -- unit level, on a real private server ---------------------------------------------------

@pytest.fixture
def make(key_prefix: str) -> Iterator[Persistences]:
    with Persistences(key_prefix) as persistences:
        yield persistences


def test_an_evicting_policy_refuses_boot_unless_accepted(make: Persistences, caplog: pytest.LogCaptureFixture) -> None:
    server = PrivateServer(extra_args=EVICTING).start()
    try:
        with pytest.raises(EvictionPolicyError, match=r"maxmemory-policy allkeys-lru.*redis_state_accept_eviction"):
            make(server.url).boot()
        with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
            accepted = make(server.url, accept_eviction=True)
            accepted.boot()
        assert accepted.loaded
        assert "may evict keys without a TTL (maxmemory-policy allkeys-lru)" in caplog.text
        accepted.save()
    finally:
        server.close()


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"])
def test_policies_that_cannot_evict_our_keys_boot_quietly(server: PrivateServer, admin: redis.Redis, make: Persistences,
                                                          policy: str, caplog: pytest.LogCaptureFixture) -> None:
    admin.config_set("maxmemory-policy", policy)
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        make(server.url).boot()
    assert "evict" not in caplog.text


def test_the_policy_is_checked_on_the_timer(server: PrivateServer, admin: redis.Redis, make: Persistences,
                                            caplog: pytest.LogCaptureFixture) -> None:
    persistence = make(server.url, clock_interval=0.2)
    persistence.boot()
    admin.config_set("maxmemory-policy", "allkeys-lru")
    time.sleep(0.25)
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        persistence.tick()
    assert "may evict keys without a TTL (maxmemory-policy allkeys-lru)" in caplog.text
    assert persistence.watch.policy == "allkeys-lru"
    caplog.clear()
    time.sleep(0.25)
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        persistence.tick()
    assert "may evict" not in caplog.text  # rate-limited


def test_a_tick_is_one_round_trip(server: PrivateServer, make: Persistences) -> None:
    persistence = make(server.url, clock_interval=1000)
    persistence.boot()
    persistence.revoked.add("a")
    with round_trips() as sent:
        persistence.tick()
    assert len(sent) == 1, sent  # GET clock, ZCARD, ZMSCORE, TIME (no INFO: not due), no flush


def test_fleet_ids_go_back_to_the_fleet_set(server: PrivateServer, admin: redis.Redis, make: Persistences,
                                            key_prefix: str) -> None:
    now = time.time()
    admin.zadd(f"{key_prefix}shared:fleet-revoked", {"fleet-1": now - 10, "fleet-2": now - 20, "both": now - 5})
    admin.zadd(f"{key_prefix}w@host:revoked", {"own-1": now - 30, "both": now - 5})
    persistence = make(server.url)
    persistence.boot()
    assert set(persistence.fleet_only) == {"fleet-1", "fleet-2"}
    persistence.revoked.add("live")
    admin.flushall()
    persistence.tick()
    own = {m.decode() for m in admin.zrange(f"{key_prefix}w@host:revoked", 0, -1)}
    fleet = {m.decode() for m in admin.zrange(f"{key_prefix}shared:fleet-revoked", 0, -1)}
    assert own == {"own-1", "both", "live"}
    assert fleet == {"fleet-1", "fleet-2"}
    # Written back as old as memory holds it: boot stamps by windows of 1% of the expiry (108 s here).
    assert -1 < (admin.zscore(f"{key_prefix}shared:fleet-revoked", "fleet-2") or 0) - (now - 20) < 108 + 1


def test_a_restore_in_flight_is_not_taken_for_a_rollback(server: PrivateServer, admin: redis.Redis, make: Persistences,
                                                         key_prefix: str) -> None:
    """The operator removes the newest id from Redis, then its broadcast lifts it here: no write-back."""
    persistence = make(server.url)
    persistence.boot()
    persistence.revoked.update(["older", "newest"])
    persistence.tick()  # the watch now knows "newest" as the set's sentinel
    admin.zrem(f"{key_prefix}w@host:revoked", "newest")
    persistence.tick()  # missing once: suspected, not repaired
    persistence.lift(["newest"])  # the statedb_restore broadcast arrives
    persistence.tick()
    assert admin.zscore(f"{key_prefix}w@host:revoked", "newest") is None
    assert persistence.watch.repairs == []


@pytest.mark.parametrize("skew", [-4 * 3600.0, 3600.0], ids=["4h-behind", "1h-ahead"])
def test_a_skewed_host_stamps_on_the_servers_clock(server: PrivateServer, admin: redis.Redis, make: Persistences,
                                                   key_prefix: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], skew: float) -> None:
    monkeypatch.setattr(watch_module, "time", SkewedTime(skew))
    skewed = make(server.url, hostname="skewed@host")
    skewed.boot()
    assert abs(skewed.watch.offset + skew) < 1
    skewed.revoked.add("write-through")
    skewed.revoked.update(["batch-1", "batch-2"])
    admin.flushall()
    skewed.tick()  # repaired (resync path): stamped from memory on the server's clock
    skewed.revoked.add("after-repair")
    key = f"{key_prefix}skewed@host:revoked"
    seconds, micros = admin.time()
    server_now = seconds + micros / 1e6
    scores = {m.decode(): s for m, s in admin.zrange(key, 0, -1, withscores=True)}
    assert set(scores) == {"write-through", "batch-1", "batch-2", "after-repair"}
    worst = max(abs(score - server_now) for score in scores.values())
    assert worst < 3, scores
    monkeypatch.setattr(watch_module, "time", time)
    # A new pod (right clock) with the default 3 h expiry holds them in memory, not only in the index.
    pod = make(server.url, hostname="skewed@host", revoked=LimitedSet(maxlen=100, expires=3 * 3600))
    pod.boot()
    assert set(scores) <= set(pod.revoked._data)
    guarantee(capsys, f"clock-skew-{'behind' if skew < 0 else 'ahead'}", skew_s=f"{skew:+.0f}",
              max_score_error_s=f"{worst:.2f}", lost=0)


# -- end to end, real workers ---------------------------------------------------------------


@pytest.mark.e2e
def test_eviction_refused_accepted_detected_and_repaired(
    harness: WorkerHarness, state_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lru = PrivateServer(extra_args=EVICTING).start()
    client = lru.client()
    try:
        app = harness.app(install=True)
        refused = harness.worker(app, lru.url, env=fast_env(state_prefix))
        refused.start(wait_ready=False)
        assert refused.wait_exit() == 78, refused.log()
        critical = [line for line in refused.log().splitlines() if "CRITICAL" in line]
        assert len(critical) == 1 and CANNOT_START in critical[0], refused.log()
        assert "maxmemory-policy allkeys-lru" in critical[0] and "Traceback" not in refused.log()

        worker = harness.worker(app, lru.url, env=fast_env(state_prefix, accept_eviction="true"))
        worker.start()
        assert "may evict keys without a TTL (maxmemory-policy allkeys-lru)" in worker.log()
        key, clock = revoked_key(state_prefix, worker.name), clock_key(state_prefix, worker.name)
        revoked = [new_task_id() for _ in range(20)]
        harness.revoke(worker, revoked)
        time.sleep(1.5)  # the watch has seen the set holding them
        assert worker.process is not None
        os.kill(worker.process.pid, signal.SIGSTOP)  # so that nothing touches the set while memory fills
        try:
            dump = client.dump(key)
            assert isinstance(dump, bytes)
            client.restore(key, 0, dump, replace=True, idletime=10**6)  # the least recently used key
            junk = 0
            while client.object("idletime", key) is not None and junk < 5000:
                client.get(clock)  # keep the clock key recently used
                client.set(f"{state_prefix}junk:{junk}", b"x" * 65536)
                junk += 1
            evicted = int(client.info("stats")["evicted_keys"])
            assert client.exists(key) == 0, f"the set was not evicted after {junk} junk keys"
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
        repaired_in = wait_stored(client, key, revoked, 10, worker)
        line = worker.wait_for_log("writing back every revoked id")
        assert "evicted" in line, line
        guarantee(capsys, "eviction-allkeys-lru", refused_exit=78, evicted_keys=evicted, acked=len(revoked),
                  repaired_s=f"{repaired_in:.2f}", lost=len(missing_from(client, key, revoked)))
        assert_discarded(harness, worker, revoked[:5])

        client.config_set("maxmemory-policy", "noeviction")
        time.sleep(0.2)
        client.config_set("maxmemory-policy", "allkeys-random")  # at runtime: warned on the timer
        worker.wait_for_log("(maxmemory-policy allkeys-random)", timeout=15)
    finally:
        client.close()
        lru.close()


@pytest.mark.e2e
def test_the_policy_changed_at_runtime_is_warned(harness: WorkerHarness, state_prefix: str, server: PrivateServer,
                                                  admin: redis.Redis) -> None:
    app = harness.app(install=True)
    worker = harness.worker(app, server.url, env=fast_env(state_prefix, clock_interval=1))
    worker.start()
    assert "evict" not in worker.log()
    admin.config_set("maxmemory-policy", "allkeys-lru")
    line = worker.wait_for_log("may evict keys without a TTL", timeout=5)
    assert "ERROR" in line and "allkeys-lru" in line and "redis_state_accept_eviction" in line
    assert worker.running


@pytest.mark.e2e
def test_the_fleet_set_is_repaired_for_the_next_pod(
    harness: WorkerHarness, state_prefix: str, server: PrivateServer, admin: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet_ids = [new_task_id() for _ in range(10)]
    admin.zadd(shared_key(state_prefix), {task_id: time.time() - 60 for task_id in fleet_ids})
    app = harness.app(install=True)
    worker = harness.worker(app, server.url, env=fast_env(state_prefix)).start()
    assert "restored 10 revoked ids" in worker.log(), worker.log()
    own = [new_task_id() for _ in range(3)]
    harness.revoke(worker, own)
    admin.flushall()  # Redis came back empty
    repaired_in = wait_stored(admin, shared_key(state_prefix), fleet_ids, 5, worker)
    wait_stored(admin, revoked_key(state_prefix, worker.name), own, 5, worker)
    assert missing_from(admin, revoked_key(state_prefix, worker.name), fleet_ids) == fleet_ids  # not in its own
    newcomer = harness.worker(app, server.url, env=fast_env(state_prefix)).start()  # another hostname
    assert_discarded(harness, newcomer, fleet_ids)
    guarantee(capsys, "flushed-fleet-set-repaired", fleet_ids=len(fleet_ids), repaired_s=f"{repaired_in:.2f}",
              lost=len(missing_from(admin, shared_key(state_prefix), fleet_ids)))


@pytest.mark.e2e
def test_a_rollback_is_noticed_and_repaired(
    harness: WorkerHarness, state_prefix: str, server: PrivateServer, admin: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = harness.app(install=True)
    worker = harness.worker(app, server.url, env=fast_env(state_prefix)).start()
    key, clock = revoked_key(state_prefix, worker.name), clock_key(state_prefix, worker.name)
    early = [new_task_id() for _ in range(5)]
    harness.revoke(worker, early)
    time.sleep(1.2)
    snapshot = {name: admin.dump(name) for name in (key, clock)}  # a replica's (or a backup's) copy
    snapshot_clock = int(admin.get(clock) or 0)
    late = [new_task_id() for _ in range(5)]
    harness.revoke(worker, late)
    wait_until(lambda: int(admin.get(clock) or 0) > snapshot_clock, 5, "the worker's newer clock saved")
    for name, value in snapshot.items():  # the stale copy is promoted
        admin.restore(name, 0, value, replace=True)
    assert missing_from(admin, key, late) == late
    repaired_in = wait_stored(admin, key, early + late, 5, worker)
    line = worker.wait_for_log("writing back every revoked id")
    assert "rolled back" in line, line
    assert int(admin.get(clock) or 0) > snapshot_clock
    worker.kill()
    worker.start()
    assert_discarded(harness, worker, early + late)
    guarantee(capsys, "rollback-stale-replica", acked=len(early + late), lost_by_rollback=len(late),
              repaired_s=f"{repaired_in:.2f}", lost=len(missing_from(admin, key, early + late)))
    assert repaired_in < 1.6


@pytest.mark.e2e
def test_flushall_under_an_idle_worker_is_repaired_within_a_second(
    harness: WorkerHarness, state_prefix: str, server: PrivateServer, admin: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = harness.app(install=True)
    # The default clock interval (10 s): the loss check does not wait for the clock save.
    worker = harness.worker(app, server.url, env=fast_env(state_prefix)).start()
    key = revoked_key(state_prefix, worker.name)
    revoked = [new_task_id() for _ in range(30)]
    harness.revoke(worker, revoked)
    time.sleep(1.5)  # idle
    admin.flushall()
    flushed = time.monotonic()
    repaired_in = wait_stored(admin, key, revoked, 5, worker)
    time.sleep(max(0.0, flushed + 3 - time.monotonic()))
    worker.kill()  # 3 s after the flush
    lost = missing_from(admin, key, revoked)
    worker.start()
    assert_discarded(harness, worker, revoked)
    guarantee(capsys, "flushall-idle-worker", acked=len(revoked), repaired_s=f"{repaired_in:.2f}",
              sigkill_after_s=3, lost=len(lost))
    assert not lost
    assert repaired_in < 1.5


@pytest.mark.e2e
def test_a_restore_during_a_partition_is_not_undone(
    harness: WorkerHarness, state_prefix: str, server: PrivateServer, admin: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = DelayingProxy(server.port)
    operator: Celery | None = None
    try:
        app = harness.app(install=True)
        worker = harness.worker(app, proxy.url, env=fast_env(state_prefix)).start()
        key = revoked_key(state_prefix, worker.name)
        before = new_task_id()
        harness.revoke(worker, [before])
        proxy.cut()
        restored, kept = new_task_id(), new_task_id()
        assert harness.try_revoke(worker, [restored, kept], timeout=5), worker.log()
        worker.wait_for_log("NOT yet stored in Redis")
        # The operator, who reaches Redis directly: Redis first, then the broadcast over the broker.
        operator = harness.new_control_app()
        operator.conf.redis_state_key_prefix = state_prefix
        result = restore_tasks(operator, [restored], redis_url=server.url, reply_timeout=3)
        assert any(worker.name in reply for reply in result.replies), result
        proxy.heal()
        wait_stored(admin, key, [before, kept], 15, worker)
        time.sleep(2.5)  # the resync after the outage, and more ticks
        assert admin.zscore(key, restored) is None, worker.log()
        worker.kill()
        worker.start()
        harness.send(worker, restored)
        harness.wait_ran(worker, restored)
        assert_discarded(harness, worker, [before, kept])
        guarantee(capsys, "restore-during-partition", pending=2, restored=1, rewritten=0, lost=0)
    finally:
        if operator is not None:
            operator.close()
        proxy.close()


def test_an_acl_without_time_and_info_still_runs_and_says_so(server: PrivateServer, admin: redis.Redis,
                                                              make: Persistences, key_prefix: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    older = [arg for arg in worker_acl_rule(key_prefix, admin) if arg not in ("+time", "+info")]  # the README's
    admin.execute_command("ACL", "SETUSER", "old-acl", *older)  # worker rule, without +time +info
    url = f"redis://old-acl:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        persistence = make(url, clock_interval=0.1)
        persistence.boot()
        persistence.revoked.add("a")
        time.sleep(0.15)
        persistence.tick()
        persistence.tick()
    assert persistence.loaded and not persistence.failing
    assert caplog.text.count("cannot be checked (grant the worker's ACL user +info and +time)") == 1
    assert admin.zscore(f"{key_prefix}w@host:revoked", "a") is not None
    persistence.save()
