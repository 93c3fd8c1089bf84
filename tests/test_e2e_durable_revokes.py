"""End to end: a stored revoke binds real workers beyond Celery's in-memory window, until lifted.

The holes of 0.4.0, each now closed with real ``celery worker`` processes: an id older
than the in-memory expiry at a restart, an id pushed out by the size cap, and (with
restore and purge) the way back to running the task on a live worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_redis_statedb import install_redis_statedb, purge_old_revoked_tasks, restore_tasks
from tests.keys import revoked_key, shared_key
from tests.workers import WorkerHarness, WorkerProcess, assert_discarded, new_task_id, wait_until

pytestmark = pytest.mark.e2e

POOLS = [("solo", 1), ("prefork", 2)]


def assert_runs(harness: WorkerHarness, worker: WorkerProcess, task_id: str, marker: str) -> None:
    harness.send(worker, task_id, marker)
    harness.wait_ran(worker, marker)


@pytest.fixture
def admin_app(harness: WorkerHarness, redis_url: str, state_prefix: str) -> Iterator[Celery]:
    """An operator's app: the workers' statedb URL and prefix (a control app of its own)."""
    app = harness.new_control_app()
    app.conf.redis_state_key_prefix = state_prefix
    app.conf.worker_state_db = redis_url
    yield app
    app.close()


@pytest.mark.parametrize(("pool", "concurrency"), POOLS)
def test_a_revoke_older_than_the_memory_expiry_binds_after_a_restart(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, admin_app: Celery,
    pool: str, concurrency: int,
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, pool=pool, concurrency=concurrency,
                            env={"CELERY_REDIS_STATE_TTL": "3"}).start()
    revoked = new_task_id()
    harness.revoke(worker, [revoked])
    worker.kill()
    time.sleep(4)  # older than the in-memory expiry when the worker comes back
    worker.start()
    assert "1 more by the index of stored revokes" in worker.log(), worker.log()
    assert revoked not in harness.revoked_in_memory(worker)  # beyond Celery's own set...
    assert_discarded(harness, worker, revoked)  # ...and discarded all the same
    assert redis_client.zscore(revoked_key(state_prefix, worker.name), revoked) is not None

    # Restored: runnable at once on the live worker (the id is a new message: same id, new marker).
    result = restore_tasks(admin_app, [revoked])
    assert result.removed == 1
    assert_runs(harness, worker, revoked, f"{revoked}-after-restore")


@pytest.mark.parametrize(("pool", "concurrency"), POOLS)
def test_a_revoke_pushed_out_by_the_size_cap_binds_until_purged(
    harness: WorkerHarness, redis_url: str, state_prefix: str, admin_app: Celery, pool: str, concurrency: int,
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, pool=pool, concurrency=concurrency,
                            env={"CELERY_WORKER_REVOKES_MAX": "5"}).start()
    first = new_task_id()
    harness.revoke(worker, [first])
    harness.revoke(worker, [new_task_id() for _ in range(15)])
    assert first not in harness.revoked_in_memory(worker)
    assert_discarded(harness, worker, first)

    # A purge lifts it in the live worker too (every id in Redis is older than "now").
    time.sleep(0.05)
    purged = purge_old_revoked_tasks(admin_app, 0)
    assert purged == 16
    wait_until(lambda: not harness.revoked_in_memory(worker), 10, "the purge to reach the worker")
    assert_runs(harness, worker, first, f"{first}-after-purge")


@pytest.mark.slow
def test_a_task_never_revoked_runs_beside_a_million_stored_ids(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str,
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, name=f"million-{new_task_id()[:8]}@statedb-test")
    key = revoked_key(state_prefix, worker.name)
    old = time.time() - 7 * 86400  # a week old: far beyond the 3 h in-memory window
    stored = [f"old-{i:07d}-{'x' * 24}" for i in range(1_000_000)]
    pipe = redis_client.pipeline(transaction=False)
    for i in range(0, len(stored), 20_000):
        pipe.zadd(key, {task_id: old + j * 1e-3 for j, task_id in enumerate(stored[i : i + 20_000], i)})
    pipe.execute()
    worker.start(timeout=60)
    assert "1000000 more by the index of stored revokes" in worker.log(), worker.log()
    fresh = new_task_id()
    assert_runs(harness, worker, fresh, fresh)
    assert_discarded(harness, worker, stored[123_456])


def test_a_producer_revoke_with_no_worker_online_binds_a_new_prefork_worker_until_restored(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, admin_app: Celery,
) -> None:
    install_redis_statedb(admin_app)
    task_id = new_task_id()
    admin_app.control.revoke(task_id)  # no worker online: nobody hears the broadcast
    assert redis_client.zscore(shared_key(state_prefix), task_id) is not None
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, pool="prefork", concurrency=2).start()  # a new hostname
    assert_discarded(harness, worker, task_id)
    assert restore_tasks(admin_app, [task_id]).removed == 1
    assert_runs(harness, worker, task_id, f"{task_id}-after-restore")
