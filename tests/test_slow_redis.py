"""A slow or stalled Redis behind a delaying proxy (tests/proxy.py), with real workers.

Replies late by less than the socket timeout are not errors to redis-py: the write
budget (``redis_state_write_budget``) is what keeps the worker's event loop free. At
boot, no attempt's socket timeouts may run past ``redis_state_boot_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from celery_redis_statedb.local_servers import PrivateServer, free_port
from tests.guarantees import guarantee
from tests.keys import revoked_key
from tests.proxy import DelayingProxy
from tests.workers import CANNOT_START, WorkerHarness, WorkerProcess, new_task_id, wait_until

pytestmark = pytest.mark.e2e

REPLY_DELAY = 1.5  # under the default 2 s socket timeout
REVOKES = 20
BOOT_TIMEOUT = 5.0


@pytest.fixture
def proxied() -> Iterator[tuple[PrivateServer, DelayingProxy]]:
    server = PrivateServer().start()
    proxy = DelayingProxy(server.port)
    try:
        yield server, proxy
    finally:
        proxy.close()
        server.close()


def ping_latency(harness: WorkerHarness, worker: WorkerProcess, timeout: float = 40.0) -> float:
    started = time.monotonic()
    replies = harness.control_app.control.broadcast("ping", destination=[worker.name], reply=True, limit=1,
                                                    timeout=timeout) or []
    assert any(worker.name in reply for reply in replies), f"no ping reply:\n{worker.log()[-4000:]}"
    return time.monotonic() - started


def test_a_slow_redis_does_not_hold_the_event_loop(
    harness: WorkerHarness, proxied: tuple[PrivateServer, DelayingProxy], state_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every reply 1.5 s late: a ping queued behind 20 revokes is answered within 2 s, and the
    timer writes the 20 ids (through the same slow Redis) soon after."""
    server, proxy = proxied
    client = server.client()
    try:
        app = harness.app(install=True)
        worker = harness.worker(app, proxy.url, env={
            "CELERY_REDIS_STATE_KEY_PREFIX": state_prefix,
            "CELERY_REDIS_STATE_CLOCK_INTERVAL": "3600",  # no clock save during the measure
        }).start()
        key = revoked_key(state_prefix, worker.name)
        warm = new_task_id()
        harness.revoke(worker, [warm])  # the write-through connection is open, Redis fast
        assert client.zscore(key, warm) is not None
        baseline = ping_latency(harness, worker)

        proxy.delay = REPLY_DELAY
        ids = [new_task_id() for _ in range(REVOKES)]
        control = harness.control_app.control
        started = time.monotonic()
        for task_id in ids:
            control.broadcast("revoke", arguments={"task_id": [task_id]}, destination=[worker.name], reply=False)
        latency = ping_latency(harness, worker)
        behind = time.monotonic() - started

        assert set(ids) <= harness.revoked_in_memory(worker)  # honoured at once
        worker.wait_for_log("NOT yet stored in Redis", timeout=10)
        written_after = None
        try:
            wait_until(lambda: all(client.zscore(key, t) is not None for t in ids), 30, "the ids in Redis",
                       interval=0.2)
            written_after = time.monotonic() - started
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{worker.log()[-4000:]}") from None
        guarantee(capsys, "slow-redis", reply_delay_s=REPLY_DELAY, socket_timeout_s=2, write_budget_s=0.5,
                  revokes=REVOKES, ping_behind_revokes_s=f"{latency:.2f}", from_first_revoke_s=f"{behind:.2f}",
                  ping_fast_redis_s=f"{baseline:.2f}", all_stored_after_s=f"{written_after:.1f}", lost=0)
        assert behind <= 2.0, worker.log()[-4000:]
        assert "Traceback" not in worker.log()
    finally:
        client.close()


def boot_seconds(worker: WorkerProcess) -> tuple[int, float]:
    started = time.monotonic()
    worker.start(wait_ready=False)
    code = worker.wait_exit(60)
    return code, time.monotonic() - started


def test_boot_against_a_stalled_redis_ends_at_the_boot_timeout(
    harness: WorkerHarness, proxied: tuple[PrivateServer, DelayingProxy], state_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Connections are accepted, nothing is ever answered: exit 69 within boot_timeout + ~1 s.

    The time a worker takes to start and exit without any boot wait (Redis refusing
    connections, boot timeout 0) is measured first and subtracted.
    """
    _, proxy = proxied
    app = harness.app(install=False)
    env = {"CELERY_REDIS_STATE_KEY_PREFIX": state_prefix}
    refused = harness.worker(app, f"redis://127.0.0.1:{free_port()}/0",
                             env={**env, "CELERY_REDIS_STATE_BOOT_TIMEOUT": "0"})
    code, overhead = boot_seconds(refused)
    assert code == 69, refused.log()

    proxy.stalled = True
    stalled = harness.worker(app, proxy.url, env={**env, "CELERY_REDIS_STATE_BOOT_TIMEOUT": str(BOOT_TIMEOUT)})
    code, elapsed = boot_seconds(stalled)
    log = stalled.log()
    assert code == 69, log
    lines = [line for line in log.splitlines() if CANNOT_START in line]
    assert len(lines) == 1 and f"127.0.0.1:{proxy.port}" in lines[0], log
    boot = elapsed - overhead
    guarantee(capsys, "boot-stalled-redis", boot_timeout_s=BOOT_TIMEOUT, socket_timeout_s=2,
              boot_wait_s=f"{boot:.2f}", exit_code=code, process_overhead_s=f"{overhead:.2f}")
    assert boot <= BOOT_TIMEOUT + 1.0, log
    assert boot >= BOOT_TIMEOUT - 1.5, log  # it did keep trying until about the timeout
    assert proxy.connections >= 2  # more than one attempt


def test_a_write_over_budget_never_retries_on_a_timeout(proxied: tuple[PrivateServer, DelayingProxy],
                                                        key_prefix: str) -> None:
    """The write-through client: one attempt within the budget (a stall costs the budget, not twice)."""
    from celery.utils.collections import LimitedSet

    from celery_redis_statedb import WorkerStatePersistence
    from statedb import StateDBConfig

    server, proxy = proxied
    config = StateDBConfig(url=proxy.url, key_prefix=key_prefix, write_budget=0.3)
    revoked = LimitedSet(maxlen=1000, expires=3600)
    persistence = WorkerStatePersistence(config, "budget@h", revoked=revoked, clock=None)
    client = redis.Redis.from_url(server.url)
    try:
        persistence.boot()
        revoked.add("fast-1")
        assert client.zscore(config.keys.revoked_key("budget@h"), "fast-1") is not None
        proxy.stalled = True
        started = time.monotonic()
        revoked.add("stalled-1")
        took = time.monotonic() - started
        assert took < 0.3 + 0.2, took
        assert persistence.failing and "stalled-1" in persistence.pending
        proxy.stalled = False
        def written() -> bool:
            persistence.tick()
            return not persistence.pending

        wait_until(written, 10, "the pending id written", interval=0.2)
        assert client.zscore(config.keys.revoked_key("budget@h"), "stalled-1") is not None
    finally:
        persistence.save()
        client.close()


def test_a_hit_of_the_index_is_confirmed_within_the_budget(proxied: tuple[PrivateServer, DelayingProxy],
                                                           key_prefix: str) -> None:
    """A stored revoke beyond memory, checked against a Redis that answers in 1.5 s: honoured within the budget."""
    from celery.utils.collections import LimitedSet

    from celery_redis_statedb import WorkerStatePersistence
    from statedb import StateDBConfig

    server, proxy = proxied
    config = StateDBConfig(url=proxy.url, key_prefix=key_prefix, write_budget=0.3)
    client = redis.Redis.from_url(server.url)
    client.zadd(config.keys.revoked_key("budget@h"), {"week-old": time.time() - 7 * 86400})
    revoked = LimitedSet(maxlen=1000, expires=3600)
    persistence = WorkerStatePersistence(config, "budget@h", revoked=revoked, clock=None)
    try:
        persistence.boot()
        proxy.delay = 1.5
        started = time.monotonic()
        assert "week-old" in revoked  # discarded: a revoked task must not run
        assert time.monotonic() - started < 0.3 + 0.2
        assert "never-revoked" not in revoked  # no Redis call at all
    finally:
        proxy.delay = 0.0
        persistence.save()
        client.close()


def test_the_timers_check_stays_within_the_budget_on_a_slow_redis(proxied: tuple[PrivateServer, DelayingProxy],
                                                                  key_prefix: str) -> None:
    """The once-a-second loss check runs on the event loop: a Redis answering in 1.5 s must not hold it
    1.5 s every second. Past the budget it counts as an outage and backs off."""
    from celery.utils.collections import LimitedSet
    from kombu.clocks import LamportClock

    from celery_redis_statedb import WorkerStatePersistence
    from statedb import StateDBConfig

    _, proxy = proxied
    config = StateDBConfig(url=proxy.url, key_prefix=key_prefix, write_budget=0.3)
    revoked = LimitedSet(maxlen=1000, expires=3600)
    persistence = WorkerStatePersistence(config, "budget@h", revoked=revoked, clock=LamportClock())
    try:
        persistence.boot()
        revoked.add("an-id")
        proxy.delay = 1.5
        started = time.monotonic()
        persistence.tick()
        assert time.monotonic() - started < 0.3 + 0.3
        assert persistence.failing  # backing off: the next ticks do no I/O until the next attempt is due
        started = time.monotonic()
        persistence.tick()
        assert time.monotonic() - started < 0.05
    finally:
        proxy.delay = 0.0
        persistence.save()
