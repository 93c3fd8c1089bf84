"""Fault injection with real processes: no acknowledged revoke is ever lost.

Workers are real ``celery worker`` subprocesses (tests/workers.py); the statedb
server is, wherever a test kills, stalls or wipes it, a private ``redis-server``
(or embedded Valkey) of its own (celery_redis_statedb.local_servers), while the broker stays on
the run's server. A revoke counts as *acknowledged* when the worker's reply to
the revoke command reached the sender: from then on it must be in Redis and be
honoured after any restart.

Each scenario prints one ``GUARANTEE ...`` line with what it measured.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from celery.utils.collections import LimitedSet

from celery_redis_statedb import WorkerStatePersistence
from celery_redis_statedb.local_servers import PrivateServer, free_port
from statedb import Scope, StateDBConfig
from tests.guarantees import guarantee, missing_from
from tests.keys import clock_key, revoked_key, shared_key
from tests.revoke_streams import RevokeStream, assert_clean
from tests.workers import (
    SOCKET_TIMEOUT,
    WorkerHarness,
    WorkerProcess,
    assert_discarded,
    fast_env,
    new_task_id,
    one_critical_line,
    wait_until,
)

pytestmark = pytest.mark.e2e


def start_worker(harness: WorkerHarness, server: PrivateServer, state_prefix: str) -> tuple[WorkerProcess, str]:
    """A worker on ``server`` whose clock is saved every second (a vanished clock key is how data loss
    without a reconnect shows), started; and its revoked key."""
    worker = harness.worker(harness.app(install=True), server.url, env=fast_env(state_prefix, clock_interval=1))
    return worker.start(), revoked_key(state_prefix, worker.name)


# -- the worker is SIGKILLed again and again while revokes arrive ------------------------

KILL_CYCLES = 20


@pytest.mark.slow
def test_repeated_worker_sigkill_loses_no_acknowledged_revoke(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str,
    streams: list[RevokeStream], capsys: pytest.CaptureFixture[str],
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url).start()
    key = revoked_key(state_prefix, worker.name)
    harness.wait_reachable(worker)
    stream = RevokeStream(harness, worker, reply_timeout=0.5).start()
    streams.append(stream)
    rng = random.Random(4)
    last_before_kill: list[str] = []
    for _ in range(KILL_CYCLES):
        stream.wait_acked(len(stream.acked) + stream.batch)  # revokes arrive in every life of the worker
        time.sleep(rng.uniform(0.0, 0.3))
        worker.kill()
        if stream.acked:
            last_before_kill.append(stream.acked[-1])
        worker.start()
    stream.wait_acked(len(stream.acked) + stream.batch)
    stream.stop()

    acked = list(stream.acked)
    not_stored = set(missing_from(redis_client, key, acked))
    in_memory = harness.revoked_in_memory(worker)
    not_in_memory = set(acked) - in_memory
    # The riskiest ids (the last acknowledged before each kill) and a sample of the rest, as real tasks.
    sample = list(dict.fromkeys(last_before_kill + rng.sample(acked, min(60, len(acked)))))
    lost = not_stored | not_in_memory
    guarantee(capsys, "worker-sigkill", faults=KILL_CYCLES, revokes_sent=stream.sent, acked=len(acked),
              lost=len(lost), max_reply_s=f"{max(stream.latencies):.2f}")
    assert not lost, f"{len(not_stored)} acked ids not in Redis, {len(not_in_memory)} not in memory after restart"
    assert len(acked) >= KILL_CYCLES * stream.batch
    assert_discarded(harness, worker, sample)
    assert_clean(worker)


# -- Redis SIGKILLed during a revoke burst: back with its data (AOF), or empty -------------


@pytest.mark.slow
@pytest.mark.parametrize("comeback", ["aof-data", "empty"])
def test_redis_sigkill_during_a_revoke_burst(
    harness: WorkerHarness, state_prefix: str, streams: list[RevokeStream], capsys: pytest.CaptureFixture[str],
    comeback: str,
) -> None:
    server = PrivateServer(appendonly=comeback == "aof-data").start()
    client = server.client()
    try:
        worker, key = start_worker(harness, server, state_prefix)
        harness.wait_reachable(worker)
        stream = RevokeStream(harness, worker, reply_timeout=5.0).start()
        streams.append(stream)
        stream.wait_acked(30)
        before_kill = list(stream.acked)

        server.kill()
        if comeback == "empty":
            server.wipe()
        acked_at_kill = len(stream.acked)
        stream.wait_acked(acked_at_kill + 15)  # the worker keeps answering revokes while Redis is down
        during = stream.acked[acked_at_kill:]
        server.start()
        if comeback == "aof-data":
            # appendfsync always: what was acknowledged before the kill is on disk.
            assert not missing_from(client, key, before_kill)
        stream.wait_acked(len(stream.acked) + 30)
        stream.stop()
        acked = list(stream.acked)

        # Within a bounded time, every revoke the worker holds is in Redis again.
        try:
            wait_until(lambda: not missing_from(client, key, acked), 20, "every acked revoke back in Redis",
                       interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {len(missing_from(client, key, acked))} missing\n{worker.log()}") from None
        in_memory = harness.revoked_in_memory(worker)
        assert set(acked) <= in_memory
        assert not missing_from(client, key, sorted(in_memory))
        wait_until(lambda: client.get(clock_key(state_prefix, worker.name)), 10, "the clock back in Redis")
        lost = len(set(acked) - set(stored_ids(client, key)))
        guarantee(capsys, f"redis-sigkill-{comeback}", faults=1, revokes_sent=stream.sent, acked=len(acked),
                  acked_while_down=len(during), lost=lost, max_reply_s=f"{max(stream.latencies):.2f}")
        assert lost == 0
        assert worker.running
        assert_discarded(harness, worker, [before_kill[0], during[0], acked[-1]])
        assert_clean(worker)
    finally:
        client.close()
        server.close()


def stored_ids(client: redis.Redis, key: str) -> list[str]:
    members: list[bytes] = client.zrange(key, 0, -1)  # type: ignore[assignment]
    return [member.decode() for member in members]


def test_redis_flushed_under_a_running_worker_is_repaired(harness: WorkerHarness, state_prefix: str) -> None:
    """Data lost without a reconnect (FLUSHALL, a failover behind a proxy): the vanished clock tells."""
    server = PrivateServer().start()
    client = server.client()
    try:
        worker, key = start_worker(harness, server, state_prefix)
        revoked = [new_task_id() for _ in range(5)]
        harness.revoke(worker, revoked)
        client.flushall()
        try:
            wait_until(lambda: not missing_from(client, key, revoked), 15, "the ids written back", interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{worker.log()}") from None
        assert client.get(clock_key(state_prefix, worker.name)) is not None
        assert_clean(worker)
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("refusal", ["out-of-memory", "read-only-replica"])
def test_redis_refusing_writes_keeps_revokes_pending_then_writes_them(
    harness: WorkerHarness, state_prefix: str, capsys: pytest.CaptureFixture[str], refusal: str
) -> None:
    """OOM (maxmemory reached, noeviction) or READONLY (a replica after a failover): transient, not fatal."""
    server = PrivateServer().start()
    client = server.client()
    try:
        worker, key = start_worker(harness, server, state_prefix)
        before = new_task_id()
        harness.revoke(worker, [before])
        if refusal == "out-of-memory":
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
        else:
            client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
        with pytest.raises(redis.exceptions.ResponseError):
            client.zadd(key, {"probe": 1.0})

        during = [new_task_id() for _ in range(3)]
        started = time.monotonic()
        for task_id in during:
            assert harness.try_revoke(worker, [task_id], timeout=5), worker.log()
        latency = (time.monotonic() - started) / len(during)
        warning = worker.wait_for_log("NOT yet stored in Redis")
        assert "cannot take writes" in warning, warning
        assert_discarded(harness, worker, during)  # honoured in memory
        assert missing_from(client, key, during) == during

        if refusal == "out-of-memory":
            client.config_set("maxmemory", "0")
        else:
            client.execute_command("REPLICAOF", "NO", "ONE")
        try:
            wait_until(lambda: not missing_from(client, key, [before, *during]), 15, "the pending ids",
                       interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{worker.log()}") from None
        guarantee(capsys, f"redis-refuses-writes-{refusal}", revokes_sent=len(during), acked=len(during),
                  mean_reply_s=f"{latency:.2f}", lost=0)
        assert worker.running
        assert_clean(worker)
    finally:
        client.close()
        server.close()


# -- Redis stalls longer than the socket timeout ------------------------------------------


STALL_SECONDS = 3.0


def start_stall(server: PrivateServer, client: redis.Redis, stall: str) -> threading.Thread | None:
    """Make the server stop answering (writes, or everything) for STALL_SECONDS."""
    if stall == "client-pause-write":
        client.execute_command("CLIENT", "PAUSE", int(STALL_SECONDS * 1000), "WRITE")
        return None

    def debug_sleep() -> None:
        blocking = server.client(socket_timeout=STALL_SECONDS + 10)
        try:
            blocking.execute_command("DEBUG", "SLEEP", STALL_SECONDS)
        finally:
            blocking.close()

    sleeper = threading.Thread(target=debug_sleep, daemon=True)
    sleeper.start()
    return sleeper


def revoke_through_a_stall(harness: WorkerHarness, worker: WorkerProcess, server: PrivateServer,
                           client: redis.Redis, stall: str) -> tuple[list[str], list[float], float]:
    """Revoke one id after another while the server stalls: (ids, reply latencies, stall length)."""
    sleeper = start_stall(server, client, stall)
    stall_started = time.monotonic()
    time.sleep(0.1)
    during: list[str] = []
    latencies: list[float] = []
    while time.monotonic() - stall_started < STALL_SECONDS - 0.6:
        task_id = new_task_id()
        started = time.monotonic()
        acked = harness.try_revoke(worker, [task_id], timeout=5)
        latencies.append(time.monotonic() - started)
        assert acked, f"no reply to a revoke during the stall:\n{worker.log()}"
        during.append(task_id)
        time.sleep(0.05)
    if sleeper is not None:
        sleeper.join(STALL_SECONDS + 10)
    return during, latencies, time.monotonic() - stall_started


@pytest.mark.slow
@pytest.mark.parametrize("stall", ["client-pause-write", "debug-sleep"])
def test_a_stalled_redis_does_not_block_revokes(
    harness: WorkerHarness, state_prefix: str, capsys: pytest.CaptureFixture[str], stall: str
) -> None:
    server = PrivateServer(enable_debug=stall == "debug-sleep").start()
    client = server.client()
    try:
        worker, key = start_worker(harness, server, state_prefix)
        harness.wait_reachable(worker)
        first = new_task_id()
        assert harness.try_revoke(worker, [first], timeout=5)
        assert client.zscore(key, first) is not None

        during, latencies, stalled_for = revoke_through_a_stall(harness, worker, server, client, stall)

        guarantee(capsys, f"redis-stall-{stall}", stall_s=STALL_SECONDS, socket_timeout_s=SOCKET_TIMEOUT,
                  revokes_during_stall=len(during), max_reply_latency_s=f"{max(latencies):.2f}",
                  second_max_latency_s=f"{sorted(latencies)[-2]:.2f}")
        assert stalled_for >= STALL_SECONDS - 0.6
        # One revoke meets the stall: it waits about twice the socket timeout (one reconnect), no more.
        assert max(latencies) < 2 * SOCKET_TIMEOUT + 1.0, latencies
        # The others do no I/O while Redis is failing (a timer probe may hold one of them briefly).
        assert sorted(latencies)[-2] < 2 * SOCKET_TIMEOUT + 0.5, latencies
        assert len(during) >= 3

        # Honoured in memory meanwhile, then written once Redis answers again.
        try:
            wait_until(lambda: not missing_from(client, key, during), 15, "the ids revoked during the stall",
                       interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{worker.log()}") from None
        assert_discarded(harness, worker, [during[0], during[-1]])
        assert_clean(worker)
    finally:
        client.close()
        server.close()


# -- Redis down when the worker starts ------------------------------------------------------


def test_redis_down_at_boot_stops_the_worker_with_one_line(harness: WorkerHarness, state_prefix: str) -> None:
    server = PrivateServer().start()
    try:
        server.kill()
        app = harness.app(install=True)
        worker = harness.worker(app, server.url, env=fast_env(state_prefix, clock_interval=1, boot_timeout=1))
        started = time.monotonic()
        worker.start(wait_ready=False)
        code = worker.wait_exit(20)
        log = worker.log()
        assert code == 69, log
        assert time.monotonic() - started < 15
        line = one_critical_line(worker)
        assert f"127.0.0.1:{server.port}" in line and "redis_state_on_unavailable=degrade" in line
    finally:
        server.close()


@pytest.mark.slow
def test_degraded_boot_merges_the_stored_state_when_redis_comes_back(
    harness: WorkerHarness, state_prefix: str
) -> None:
    server = PrivateServer(appendonly=True).start()
    client = server.client()
    try:
        app = harness.app(install=True)
        worker = harness.worker(app, server.url, env=fast_env(state_prefix, clock_interval=1, boot_timeout=1,
                                                              on_unavailable="degrade"))
        key, clock = revoked_key(state_prefix, worker.name), clock_key(state_prefix, worker.name)
        seeded, fleet_seeded = new_task_id(), new_task_id()
        client.zadd(key, {seeded: time.time() - 60})
        client.zadd(shared_key(state_prefix), {fleet_seeded: time.time() - 30})
        client.set(clock, 1000)
        server.kill()

        worker.start()
        warning = worker.wait_for_log("starting DEGRADED")
        assert "WARNING" in warning and f"127.0.0.1:{server.port}" in warning
        during = new_task_id()
        assert harness.try_revoke(worker, [during], timeout=5)

        server.start()  # same port, its data back from the AOF
        try:
            worker.wait_for_log("redis-statedb: restored 2 revoked ids", timeout=20)
            wait_until(lambda: client.zscore(key, during), 15, "the id revoked while degraded", interval=0.2)
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(f"{exc}:\n{worker.log()}") from None
        assert_discarded(harness, worker, [seeded, fleet_seeded, during])
        assert client.zscore(key, seeded) is not None  # nothing stored was lost
        assert client.zscore(shared_key(state_prefix), fleet_seeded) is not None
        assert int(client.get(clock) or 0) > 1000
        assert_clean(worker)
    finally:
        client.close()
        server.close()


# -- signals -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: s.name)
def test_state_survives_every_way_a_worker_stops(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, signum: signal.Signals
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    # The console script, as deployed: Celery's SIGHUP restart re-executes sys.argv, which fails under -m.
    worker = harness.worker(app, redis_url, script=True).start()
    key, clock = revoked_key(state_prefix, worker.name), clock_key(state_prefix, worker.name)
    revoked = new_task_id()
    harness.revoke(worker, [revoked])
    assert redis_client.zscore(key, revoked) is not None
    clock_before = int(redis_client.get(clock) or 0)

    if signum is signal.SIGKILL:
        worker.kill()
        worker.start()
    elif signum is signal.SIGHUP:
        worker.send_signal(signum)  # Celery re-executes itself (os.execv): same process, same log
        worker.wait_for_log_count(f"{worker.name} ready.", 2, timeout=30)
        assert worker.log_count("redis-statedb: restored 1 revoked ids") == 1, worker.log()
    else:
        worker.send_signal(signum)
        # A warm shutdown either way; Celery itself exits 1 after SIGINT (Ctrl+C).
        assert worker.wait_exit() == (1 if signum is signal.SIGINT else 0), worker.log()
        assert "Warm shutdown" in worker.log()
        worker.start()

    assert_discarded(harness, worker, [revoked])
    after = new_task_id()
    harness.revoke(worker, [after])  # write-through is on again after the restart
    assert redis_client.zscore(key, after) is not None
    assert int(redis_client.get(clock) or 0) > clock_before
    assert_clean(worker)
    assert "redis-statedb: at shutdown" not in worker.all_logs()


# -- two workers with the same hostname (a misconfiguration) ----------------------------------


def revoke_twins(harness: WorkerHarness, name: str, twins: list[WorkerProcess], task_ids: list[str]) -> None:
    """Revoke on every live twin (one destination name) and wait for all their replies.

    Celery's pidbox with a duplicated name is itself a misconfiguration: wait until every live twin
    answers a ping (each subscribes after ``ready.``) and retry a revoke that got too few replies
    (revoking is idempotent), so that what is checked is the stored state, not pidbox delivery.
    """
    control = harness.control_app.control
    live = sum(twin.running for twin in twins)

    def all_answer() -> bool:
        return len(control.ping(destination=[name], timeout=0.5, limit=live) or []) >= live

    wait_until(all_answer, 15, f"{live} twins to answer a ping", interval=0.05)
    for _ in range(3):
        replies = control.broadcast("revoke", arguments={"task_id": task_ids}, destination=[name], reply=True,
                                    timeout=5, limit=live) or []
        if len(replies) >= live:
            return
    raise AssertionError(f"{len(replies)} of {live} twins answered the revoke:\n"
                         + "\n".join(twin.log()[-3000:] for twin in twins))


def test_two_workers_with_one_hostname_lose_nothing(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    name = f"twin-{uuid.uuid4().hex[:8]}@statedb-test"
    first = harness.worker(app, redis_url, name=name).start()
    second = harness.worker(app, redis_url, name=name).start()
    twins = [first, second]
    key, clock = revoked_key(state_prefix, name), clock_key(state_prefix, name)

    both = new_task_id()
    revoke_twins(harness, name, twins, [both])  # both twins get it (same destination)
    second.kill()
    only_first = new_task_id()
    revoke_twins(harness, name, twins, [only_first])
    clock_seen = int(redis_client.get(clock) or 0)
    second.start()  # boots from what the twin wrote, then writes its own state: adds only
    first.kill()
    only_second = new_task_id()
    revoke_twins(harness, name, twins, [only_second])
    first.start()

    expected = {both, only_first, only_second}
    assert expected <= set(stored_ids(redis_client, key))
    assert int(redis_client.get(clock) or 0) >= clock_seen
    # Both consume different queues: each discards every id, whoever revoked it.
    assert_discarded(harness, first, sorted(expected))
    assert_discarded(harness, second, sorted(expected))
    assert_clean(first)
    assert_clean(second)


# -- shared scope: 8 writers and a purge, concurrently ------------------------------------------

WRITERS = 8
BATCHES = 40
BATCH_SIZE = 10


def writer_ids(index: int) -> list[str]:
    """What writer ``index`` revokes: batches through update() and single ids through add()."""
    ids = [f"w{index}-b{b}-{i}" for b in range(BATCHES) for i in range(BATCH_SIZE)]
    return ids + [f"w{index}-single-{b}" for b in range(BATCHES)]


def run_writer(config: StateDBConfig, index: int, barrier: threading.Barrier) -> None:
    """One worker's persistence on its own LimitedSet, revoking in batches and one by one."""
    revoked = LimitedSet(maxlen=50_000, expires=10_800)
    persistence = WorkerStatePersistence(config, f"writer-{index}@h", revoked=revoked, clock=None)
    try:
        persistence.boot()
        barrier.wait(10)
        for batch in range(BATCHES):
            revoked.update([f"w{index}-b{batch}-{i}" for i in range(BATCH_SIZE)])
            revoked.add(f"w{index}-single-{batch}")
        assert not persistence.pending and not persistence.failing
    finally:
        persistence.save()


def run_purger(url: str, key: str, cutoff: float, barrier: threading.Barrier, stop: threading.Event,
               removed: list[int]) -> None:
    """Purge the shared key below ``cutoff`` (strictly older), over and over, until told to stop."""
    client = redis.Redis.from_url(url)
    try:
        barrier.wait(10)
        while not stop.is_set():
            removed.append(int(client.zremrangebyscore(key, "-inf", f"({cutoff!r}")))
    finally:
        client.close()


def test_shared_scope_concurrent_writers_and_purge_give_the_expected_set(
    redis_url: str, redis_client: redis.Redis, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Eight persistences (each with its own LimitedSet, as eight workers) write while a purge runs.

    The purge cutoff is older than every revoke of the test: it must remove the pre-seeded old
    ids and nothing the writers wrote.
    """
    config = StateDBConfig(url=redis_url, key_prefix=key_prefix, scope=Scope.SHARED)
    key = config.keys.shared_revoked_key
    started = time.time()
    old = {f"old-{i}": started - 86400 - i for i in range(200)}
    redis_client.zadd(key, old)  # type: ignore[arg-type,unused-ignore]
    barrier = threading.Barrier(WRITERS + 1)
    errors: list[BaseException] = []
    removed: list[int] = []
    stop_purge = threading.Event()

    def guarded(function: Any, *args: Any) -> None:
        try:
            function(*args)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=guarded, args=(run_writer, config, i, barrier), daemon=True)
               for i in range(WRITERS)]
    purge_thread = threading.Thread(
        target=guarded, args=(run_purger, redis_url, key, started - 3600, barrier, stop_purge, removed), daemon=True
    )
    for thread in [*threads, purge_thread]:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop_purge.set()
    purge_thread.join(10)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in [*threads, purge_thread])

    expected = {task_id for index in range(WRITERS) for task_id in writer_ids(index)}
    rows: list[tuple[bytes, float]] = redis_client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    final = {member.decode(): score for member, score in rows}
    guarantee(capsys, "shared-scope-8-writers-and-purge", writers=WRITERS, revokes_sent=len(expected),
              acked=len(expected), purge_rounds=len(removed), old_removed=sum(removed),
              lost=len(expected - set(final)))
    assert set(final) == expected  # every write kept, every old id purged
    assert sum(removed) == len(old)
    assert all(score >= started - 1 for score in final.values())
