"""The sync twins for scripts and cron, and the admin surface reaching live workers."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_redis_statedb import (
    ConfigurationError,
    purge_old_revoked_tasks,
    restore_tasks,
    revoke_tasks,
    statedb_url,
)
from statedb.keys import KeySchema
from tests.file_statedb import write_celery_statedb
from tests.keys import revoked_key
from tests.workers import WorkerHarness, assert_discarded, new_task_id


def make_app(key_prefix: str, **conf: object) -> Celery:
    app = Celery("sync-admin", set_as_current=False)
    app.conf.update(redis_state_key_prefix=key_prefix, **conf)
    return app


def test_purge_old_revoked_tasks_as_in_the_seed_readme(redis_url: str, key_prefix: str,
                                                       redis_client: redis.Redis) -> None:
    schema, now = KeySchema(key_prefix), time.time()
    redis_client.zadd(schema.revoked_key("worker1@hostname"), {"old": now - 40 * 86400, "new": now})
    redis_client.zadd(schema.revoked_key("worker2@hostname"), {"old": now - 40 * 86400})
    app = make_app(key_prefix, worker_state_db=redis_url)
    assert purge_old_revoked_tasks(app, timedelta(days=30), worker_name="worker1@hostname") == 1
    assert purge_old_revoked_tasks(app, older_than=timedelta(days=30)) == 1
    assert redis_client.zcard(schema.revoked_key("worker1@hostname")) == 1


def test_url_resolution_order(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_STATEDB_URL", raising=False)
    app = Celery("u", set_as_current=False, broker="amqp://guest@localhost//")
    with pytest.raises(ConfigurationError, match="no Redis URL"):
        statedb_url(app)
    app.conf.broker_url = "redis://broker:6379/0"
    assert statedb_url(app) == "redis://broker:6379/0"
    monkeypatch.setenv("REDIS_STATEDB_URL", "redis://env:6379/1")
    assert statedb_url(app) == "redis://env:6379/1"
    app.conf.worker_state_db = "/var/run/worker.db"  # a file path is not a statedb URL
    assert statedb_url(app) == "redis://env:6379/1"
    app.conf.worker_state_db = "redis://conf:6379/2"
    assert statedb_url(app) == "redis://conf:6379/2"
    assert statedb_url(app, "redis://explicit:6379/3") == "redis://explicit:6379/3"


@pytest.mark.e2e
def test_restore_reaches_a_live_worker_and_the_task_then_runs(
    harness: WorkerHarness, redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    app_dir = harness.app(install=True, conf={"redis_state_key_prefix": key_prefix})
    worker = harness.worker(app_dir, redis_url).start()
    task_id = new_task_id()
    harness.revoke(worker, [task_id])
    assert redis_client.zscore(revoked_key(key_prefix, worker.name), task_id) is not None

    admin_app = harness.control_app
    admin_app.conf.update(redis_state_key_prefix=key_prefix, worker_state_db=redis_url)
    result = restore_tasks(admin_app, [task_id], reply_timeout=3.0)
    assert result.removed == 1
    assert any("1 of 1 ids restored" in str(reply) for reply in result.replies), result.replies
    assert redis_client.zscore(revoked_key(key_prefix, worker.name), task_id) is None

    harness.send(worker, task_id)
    harness.wait_ran(worker, task_id)  # no restart needed


@pytest.mark.e2e
def test_a_producer_revoke_reaches_a_worker_that_was_not_running(
    harness: WorkerHarness, redis_url: str, key_prefix: str
) -> None:
    admin_app = harness.control_app
    admin_app.conf.update(redis_state_key_prefix=key_prefix, worker_state_db=redis_url)
    task_id = new_task_id()
    assert revoke_tasks(admin_app, [task_id]) == 1  # nobody is listening yet

    app_dir = harness.app(install=True, conf={"redis_state_key_prefix": key_prefix})
    worker = harness.worker(app_dir, redis_url).start()  # worker scope: reads the fleet set too
    assert_discarded(harness, worker, task_id)


@pytest.mark.e2e
def test_worker_option_migrates_a_file_statedb_at_boot(
    harness: WorkerHarness, redis_url: str, key_prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    task_id = new_task_id()
    db = tmp_path / "old-worker.db"
    write_celery_statedb(db, [task_id], 5)
    app_dir = harness.app(install=False, conf={"redis_state_key_prefix": key_prefix})
    worker = harness.worker(app_dir, redis_url, extra_args=["--migrate-statedb", str(db)]).start()
    assert "redis-statedb: migrated" in worker.log()
    assert redis_client.zscore(revoked_key(key_prefix, worker.name), task_id) is not None
    assert_discarded(harness, worker, task_id)  # in memory at this very boot
