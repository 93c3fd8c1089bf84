"""The sync twins for scripts and cron, and the admin surface reaching live workers."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_redis_statedb import (
    ConfigurationError,
    InvalidInputError,
    SyncStateAdmin,
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
    monkeypatch.delenv("CELERY_WORKER_STATEDB", raising=False)
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
    monkeypatch.setenv("CELERY_WORKER_STATEDB", "redis://worker-env:6379/4")  # before worker_state_db: as
    assert statedb_url(app) == "redis://worker-env:6379/4"  # celery worker reads them (issue 12)


class Spy:
    """Celery's broadcasts (and pings) of an app, recorded; ``alive`` answer pings."""

    def __init__(self, app: Celery, monkeypatch: pytest.MonkeyPatch, alive: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

        def broadcast(command: str, arguments: Any = None, destination: Any = None, **kwargs: Any) -> Any:
            self.calls.append((command, arguments, destination))
            if command == "ping":
                return [{name: {"ok": "pong"}} for name in alive]
            return [{name: {"ok": "done"}} for name in (destination or alive)] if kwargs.get("reply") else None

        monkeypatch.setattr(app.control, "broadcast", broadcast)


def test_sync_admin_binds_the_app_and_tells_live_workers(redis_url: str, key_prefix: str,
                                                         redis_client: redis.Redis,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    schema, now = KeySchema(key_prefix), time.time()
    redis_client.zadd(schema.revoked_key("w1@h"), {"t": now - 40 * 86400})
    redis_client.zadd(schema.shared_revoked_key, {"t": now - 40 * 86400})
    redis_client.set(schema.clock_key("w1@h"), 1)
    redis_client.set(schema.clock_key("w2@h"), 1)
    app = make_app("unused-prefix:", worker_state_db=redis_url)
    spy = Spy(app, monkeypatch, alive=("w2@h",))
    admin = SyncStateAdmin.for_app(app, key_prefix=key_prefix, scope="worker")
    assert admin.config.key_prefix == key_prefix and admin.url_source is not None
    assert admin.url_source.source == "app.conf.worker_state_db"

    result = admin.restore(["t"], worker="w1@h")
    assert (result.removed, result.report.fleet_removed) == (2, 1) and result.report.note  # type: ignore[union-attr]
    # The fleet entry went too: every live worker is told (w1@h lifts all, the others their fleet-only ids).
    assert spy.calls[-1] == ("statedb_restore", {"task_id": ["t"], "fleet": True, "worker": "w1@h"}, None)
    assert result.replies == [{"w2@h": {"ok": "done"}}]
    redis_client.zadd(schema.revoked_key("w1@h"), {"own": now})
    admin.restore(["own"], worker="w1@h")  # in that worker's set only: to that worker only
    assert spy.calls[-1] == ("statedb_restore", {"task_id": ["own"]}, ["w1@h"])

    redis_client.zadd(schema.revoked_key("w1@h"), {"old": now - 40 * 86400})
    report = admin.purge_old_revoked("30d")
    assert report.removed == 1 and [c[0] for c in spy.calls[-2:]] == ["statedb_purge", "statedb_purge_stamps"]
    assert admin.purge_old_revoked("30d", dry_run=True).dry_run and spy.calls[-1][0] == "statedb_purge_stamps"

    with pytest.raises(InvalidInputError, match="w2@h is alive"):
        admin.forget(["w2@h"])
    assert spy.calls[-1][0] == "ping"
    assert [w.worker for w in admin.forget(["w1@h"], dry_run=True).workers] == ["w1@h"]
    pruned = admin.prune("1s", include_unknown=True)
    assert pruned.kept_live == ("w2@h",) and [w.worker for w in pruned.workers] == ["w1@h"]
    assert redis_client.exists(schema.clock_key("w2@h")) and not redis_client.exists(schema.clock_key("w1@h"))


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


def test_a_restore_from_the_fleet_set_lifts_only_what_it_bound(redis_url: str, key_prefix: str,
                                                              redis_client: redis.Redis,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Restoring the fleet set's entry tells every worker to lift what the fleet set alone bound them to:
    a worker whose own set holds the id (it heard the revoke live) stays bound."""
    schema = KeySchema(key_prefix)
    redis_client.zadd(schema.revoked_key("w1@h"), {"x-1": 1.0})
    redis_client.zadd(schema.shared_revoked_key, {"other": 1.0})
    app = make_app(key_prefix, worker_state_db=redis_url)
    spy = Spy(app, monkeypatch)
    result = SyncStateAdmin.for_app(app).restore(["x-1"], worker="fleet")
    assert result.removed == 0 and redis_client.zscore(schema.revoked_key("w1@h"), "x-1") == 1.0
    assert spy.calls[-1] == ("statedb_restore", {"task_id": ["x-1"], "fleet": True, "worker": "fleet"}, None)


def test_in_the_shared_scope_a_purge_or_restore_for_one_worker_tells_every_worker(
    redis_url: str, key_prefix: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker's set is the fleet set there: what one worker's purge or restore removes bound them all."""
    schema = KeySchema(key_prefix)
    redis_client.set(schema.clock_key("w1@h"), 3)
    redis_client.zadd(schema.shared_revoked_key, {"x-1": 1.0, "x-2": 2.0, "x-3": time.time()})
    app = make_app(key_prefix, worker_state_db=redis_url, redis_state_scope="shared")
    spy = Spy(app, monkeypatch)
    admin = SyncStateAdmin.for_app(app)
    assert admin.purge_old_revoked("1d", worker="w1@h").removed == 2
    purges = [(command, destination) for command, _, destination in spy.calls if "purge" in command]
    assert purges == [("statedb_purge", None), ("statedb_purge_stamps", None)]
    admin.restore(["x-3"], worker="w1@h")
    assert spy.calls[-1] == ("statedb_restore", {"task_id": ["x-3"], "fleet": True, "worker": "w1@h"}, None)
