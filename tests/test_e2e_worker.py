"""End to end: real ``celery worker`` processes keeping revoked ids and the clock in Redis.

Every test uses unique worker names and queues, and its broker and statedb keys
live under the test's ``key_prefix`` (deleted afterwards), so runs on one shared
server never see each other. A "SIGKILL" kills the worker's whole process group,
prefork children included, like a container being killed.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import redis

from celery_redis_statedb.local_servers import PrivateServer, free_port
from tests.keys import clock_key, revoked_key, shared_key
from tests.workers import (
    CANNOT_START,
    WorkerHarness,
    WorkerProcess,
    assert_discarded,
    new_task_id,
    one_critical_line,
    wait_until,
)

pytestmark = pytest.mark.e2e

DEFAULT_PREFIX = "celery:worker:state:"


def revoke_and_check_stored(harness: WorkerHarness, worker: WorkerProcess, client: redis.Redis, key: str) -> str:
    """Revoke a new id on ``worker``; it must be in ``key`` as soon as the reply is in."""
    task_id = new_task_id()
    before = time.time()
    harness.revoke(worker, [task_id])
    score = client.zscore(key, task_id)
    assert score is not None, f"{task_id} not in {key} right after the revoke reply:\n{worker.log()}"
    assert before - 1 <= score <= time.time() + 1, "the score is not the wall-clock time of the revoke"
    return task_id


def assert_clean_output(worker: WorkerProcess) -> None:
    log = worker.all_logs()
    assert "Traceback" not in log, log
    assert "redis-statedb: at shutdown" not in log, log


def assert_revoke_survives_sigkill(
    harness: WorkerHarness, worker: WorkerProcess, client: redis.Redis, key: str
) -> None:
    """Revoke (stored before the reply), SIGKILL, restart under the same name: the task is discarded."""
    revoked = revoke_and_check_stored(harness, worker, client, key)
    worker.kill()
    worker.start()
    assert "redis-statedb: restored 1 revoked ids" in worker.log()
    assert_discarded(harness, worker, revoked)
    assert_clean_output(worker)


# -- revokes survive a SIGKILL ---------------------------------------------


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("prefork", 2), ("threads", 4), ("gevent", 10)])
def test_revoke_survives_sigkill_with_install(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, pool: str,
    concurrency: int,
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, pool=pool, concurrency=concurrency).start()
    assert "redis-statedb: restored 0 revoked ids" in worker.log()
    assert_revoke_survives_sigkill(harness, worker, redis_client, revoked_key(state_prefix, worker.name))


def test_revoke_survives_sigkill_without_code_change(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    """No install_redis_statedb in the app: the celery.commands entry point does it all."""
    app = harness.app(install=False)
    worker = harness.worker(app, redis_url, extra_args=["--redis-state-key-prefix", state_prefix]).start()
    assert_revoke_survives_sigkill(harness, worker, redis_client, revoked_key(state_prefix, worker.name))


def test_shared_scope_another_worker_discards(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True)
    shared = ["--redis-state-scope", "shared"]
    env = {"CELERY_REDIS_STATE_KEY_PREFIX": state_prefix}
    first = harness.worker(app, redis_url, extra_args=shared, env=env).start()

    revoked = revoke_and_check_stored(harness, first, redis_client, shared_key(state_prefix))
    assert not redis_client.exists(revoked_key(state_prefix, first.name))
    first.kill()

    second = harness.worker(app, redis_url, extra_args=shared, env=env).start()
    assert second.name != first.name
    assert_discarded(harness, second, revoked)
    # The clock stays per worker.
    assert redis_client.get(clock_key(state_prefix, second.name)) is not None
    assert not redis_client.exists(revoked_key(state_prefix, second.name))
    assert_clean_output(second)


# -- the clock ----------------------------------------------------------------


def test_clock_never_goes_back_across_restarts(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url)
    key = clock_key(state_prefix, worker.name)

    def stored() -> int:
        raw = redis_client.get(key)
        assert raw is not None, f"no clock at {key}:\n{worker.log()}"
        return int(raw)

    worker.start()
    first_boot = stored()
    assert worker.terminate() == 0
    after_term = stored()
    assert after_term >= first_boot

    worker.start()
    second_boot = stored()
    assert second_boot > after_term
    worker.kill()
    assert stored() >= second_boot

    worker.start()
    third_boot = stored()
    assert third_boot > second_boot
    assert_clean_output(worker)


# -- Redis lost while the worker runs -------------------------------------------


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("threads", 2), ("gevent", 5)])
def test_revokes_during_outage_are_written_back_when_redis_returns(
    harness: WorkerHarness, private_server: PrivateServer, state_prefix: str, pool: str, concurrency: int
) -> None:
    """The broker stays up; the statedb server is killed and comes back empty.

    solo runs the retries on the event loop's timer; threads and gevent on a timer thread or greenlet.
    """
    app = harness.app(install=True)
    worker = harness.worker(app, private_server.url, pool=pool, concurrency=concurrency, env={
        "CELERY_REDIS_STATE_CLOCK_INTERVAL": "1", "CELERY_REDIS_STATE_KEY_PREFIX": state_prefix,
    }).start()
    key, clock = revoked_key(state_prefix, worker.name), clock_key(state_prefix, worker.name)
    client = redis.Redis.from_url(private_server.url, socket_timeout=5)
    try:
        before = revoke_and_check_stored(harness, worker, client, key)

        private_server.kill()
        assert not list(private_server.data_dir.glob("*.rdb")), "the server would come back with data"
        during = new_task_id()
        harness.revoke(worker, [during])  # the broker answers; Redis cannot take the write
        assert_discarded(harness, worker, during)  # honoured in memory meanwhile

        private_server.start()

        def repaired() -> bool:
            stored = [client.zscore(key, task_id) for task_id in (before, during)]
            return None not in stored and client.get(clock) is not None

        try:
            wait_until(repaired, 15, "the worker to write its revoked ids back", interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{worker.log()}") from None
        assert worker.running
        counts = re.findall(r"redis-statedb: wrote (\d+) revoked ids held in memory back", worker.log())
        assert counts and set(counts) == {"2"}, counts  # each id once, even when in memory and pending
        assert "Traceback" not in worker.log()
    finally:
        client.close()


# -- boot without Redis -----------------------------------------------------------


@pytest.mark.parametrize("install", [True, False], ids=["install", "no-code-change"])
def test_boot_with_unreachable_redis_exits_69(harness: WorkerHarness, install: bool) -> None:
    port = free_port()
    app = harness.app(install=install)
    worker = harness.worker(app, f"redis://127.0.0.1:{port}/0", env={"CELERY_REDIS_STATE_BOOT_TIMEOUT": "1"})
    started = time.monotonic()
    worker.start(wait_ready=False)

    code = worker.wait_exit(20)
    elapsed = time.monotonic() - started

    log = worker.log()
    assert code == os.EX_UNAVAILABLE == 69, log
    assert elapsed < 20
    line = one_critical_line(worker)
    assert worker.name in line and f"127.0.0.1:{port}" in line


def test_boot_on_a_key_of_the_wrong_type_names_it_and_boots_on(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    """The 0.2 format was a pickled blob: it is never read, the worker says which key is wrong and boots."""
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url)
    key = revoked_key(state_prefix, worker.name)
    redis_client.set(key, b"x\x9c not a sorted set")
    worker.start()

    log = worker.log()
    lines = [line for line in log.splitlines() if repr(key) in line]
    assert len(lines) == 1 and "ERROR" in lines[0] and "another type" in lines[0], log
    assert CANNOT_START not in log and "Traceback" not in log
    assert redis_client.get(key) == b"x\x9c not a sorted set"  # left as it was


# -- a file path keeps Celery's shelve --------------------------------------------


def test_file_statedb_keeps_celery_shelve(harness: WorkerHarness, redis_client: redis.Redis, tmp_path: Path) -> None:
    db = tmp_path / "shelve" / "w.db"
    db.parent.mkdir()
    app = harness.app(install=True)
    worker = harness.worker(app, str(db)).start()

    revoked = new_task_id()
    harness.revoke(worker, [revoked])
    assert worker.terminate() == 0
    assert list(db.parent.glob("w.db*")), f"Celery wrote no statedb file:\n{worker.log()}"

    worker.start()
    assert_discarded(harness, worker, revoked)  # Celery's own persistence still works

    log = worker.all_logs()
    assert "redis-statedb" not in log, log
    assert not redis_client.exists(revoked_key(DEFAULT_PREFIX, worker.name), clock_key(DEFAULT_PREFIX, worker.name))
    assert "Traceback" not in log
