"""The operator's commands against real ``celery worker`` processes (issue 12).

- The CLI reads the Redis the workers use, as ``celery worker`` resolves it (defect 1).
- ``restore --worker`` is not undone at the worker's next restart (defect 3).
- ``forget`` and ``prune`` never touch a live worker (defect 5).
- ``health`` and ``metrics``: a worker whose Redis is stopped reports pending ids and failing,
  ``health`` exits 1; once Redis is back, 0 (needs the worker side's ``statedb_status`` of
  decision 4: ``failing``, ``last_clock_save``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from celery_redis_statedb.local_servers import PrivateServer
from statedb.keys import KeySchema
from tests.cli_runner import APP_ENV, cli_app
from tests.workers import WorkerHarness, assert_discarded, fast_env, new_task_id, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("CELERY_", "REDIS_STATEDB_"))]:
        monkeypatch.delenv(name)


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, clean_env: None
        ) -> CliRunner:
    """An app on the harness's broker (and its key prefix), for broadcasts and pings to the test's workers."""
    return cli_app(tmp_path, redis_url, key_prefix, monkeypatch)


def statedb(cli: CliRunner, *args: str) -> Result:
    from celery.bin.celery import celery

    return cli.invoke(celery, ["-A", os.environ[APP_ENV], "statedb", *args], catch_exceptions=False)


def test_the_cli_reads_the_redis_a_worker_of_the_app_uses(
    harness: WorkerHarness, tmp_path: Path, redis_url: str, key_prefix: str, state_prefix: str,
    monkeypatch: pytest.MonkeyPatch, clean_env: None,
) -> None:
    """The worker takes $CELERY_WORKER_STATEDB over app.conf.worker_state_db (Celery's order); so does the CLI."""
    base = redis_url.rsplit("/", 1)[0]
    used, configured = f"{base}/3", f"{base}/4"
    cli = cli_app(tmp_path, redis_url, key_prefix, monkeypatch, worker_state_db=configured)  # as the worker's app
    app = harness.app(install=False, conf={"redis_state_key_prefix": state_prefix, "worker_state_db": configured})
    worker = harness.worker(app, None, env={"CELERY_WORKER_STATEDB": used}).start()
    task_id = new_task_id()
    harness.revoke(worker, [task_id])
    clients = [redis.Redis.from_url(url) for url in (used, configured)]
    try:
        assert clients[0].zscore(f"{state_prefix}{worker.name}:revoked", task_id) is not None
        assert not list(clients[1].scan_iter(match=f"{state_prefix}*"))
        monkeypatch.setenv("CELERY_WORKER_STATEDB", used)
        report = json.loads(statedb(cli, "--key-prefix", state_prefix, "check", "--worker", worker.name,
                                    "--json").output)
        assert report["url"] == used and report["revoked_count"] == 1, report
        assert report["url_source"] == "environment variable CELERY_WORKER_STATEDB"
        listed = statedb(cli, "--key-prefix", state_prefix, "ls", worker.name)
        assert listed.exit_code == 0 and task_id in listed.output
    finally:
        for client in clients:
            for key in client.scan_iter(match=f"{state_prefix}*"):
                client.delete(key)
            client.close()


def test_restore_for_one_worker_is_not_undone_at_its_next_restart(
    harness: WorkerHarness, cli: CliRunner, redis_url: str, state_prefix: str, redis_client: redis.Redis,
) -> None:
    task_id = new_task_id()
    stored = statedb(cli, "--url", redis_url, "--key-prefix", state_prefix, "revoke", task_id, "--no-broadcast")
    assert stored.exit_code == 0, stored.output  # in the fleet set: read by every worker at boot
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url).start()
    harness.revoke(worker, [task_id])  # and in its own set
    assert_discarded(harness, worker, task_id)

    harness.wait_reachable(worker)
    restored = statedb(cli, "--url", redis_url, "--key-prefix", state_prefix, "restore", "--worker", worker.name,
                       task_id)
    assert restored.exit_code == 0, restored.output
    assert f"removed 2 stored revocations ({worker.name}: 1, (fleet): 1)" in restored.output
    assert "note: also removed from the fleet set, which binds every worker at boot" in restored.output
    assert f"{worker.name}: 1 of 1 ids restored" in restored.output  # the broadcast reached it
    harness.send(worker, task_id, marker="after-restore")
    harness.wait_ran(worker, "after-restore")

    worker.kill()
    worker.start()
    harness.send(worker, task_id, marker="after-restart")
    harness.wait_ran(worker, "after-restart")  # was discarded before: the fleet set re-bound it at boot
    assert redis_client.zscore(KeySchema(state_prefix).shared_revoked_key, task_id) is None


def test_restore_for_one_worker_lifts_the_fleet_entry_on_every_live_worker_for_good(
    harness: WorkerHarness, cli: CliRunner, redis_url: str, state_prefix: str, redis_client: redis.Redis,
) -> None:
    """The fleet entry is gone: workers bound only through it run the task too, and none of them writes
    it back to the fleet set (their loss checks run every second) nor into its own set."""
    task_id = new_task_id()
    stored = statedb(cli, "--url", redis_url, "--key-prefix", state_prefix, "revoke", task_id, "--no-broadcast")
    assert stored.exit_code == 0, stored.output
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    first, other = (harness.worker(app, redis_url, env=fast_env(clock_interval=0.5)).start() for _ in range(2))
    for worker in (first, other):
        assert_discarded(harness, worker, task_id)  # bound through the fleet set only
        harness.wait_reachable(worker)

    restored = statedb(cli, "--url", redis_url, "--key-prefix", state_prefix, "restore", "--worker", first.name,
                       task_id)
    assert restored.exit_code == 0, restored.output
    assert f"{first.name}: 1 of 1 ids restored" in restored.output
    assert f"{other.name}: 1 of 1 ids restored (those bound here only through the fleet set)" in restored.output
    for worker in (first, other):
        harness.send(worker, task_id, marker=f"after-restore-{worker.name}")
        harness.wait_ran(worker, f"after-restore-{worker.name}")
    schema = KeySchema(state_prefix)
    time.sleep(3)  # three loss checks of each worker
    assert redis_client.zscore(schema.shared_revoked_key, task_id) is None
    assert all(redis_client.zscore(schema.revoked_key(w.name), task_id) is None for w in (first, other))


def test_forget_and_prune_never_touch_a_live_worker(
    harness: WorkerHarness, cli: CliRunner, redis_url: str, state_prefix: str, redis_client: redis.Redis,
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url).start()
    harness.wait_reachable(worker)
    schema = KeySchema(state_prefix)
    redis_client.set(schema.clock_key("dead@h"), 1)
    redis_client.hset(schema.info_key("dead@h"), mapping={"last_seen": "1000.0", "scope": "worker"})
    refused = statedb(cli, "--url", redis_url, "--key-prefix", state_prefix, "forget", worker.name, "dead@h", "--yes")
    assert refused.exit_code == 1 and f"worker {worker.name} is alive (it answered a ping)" in refused.output
    assert redis_client.exists(schema.clock_key("dead@h"))  # all or nothing

    # The live worker seen long ago (as if its clock saves stopped): prune keeps it all the same.
    redis_client.hset(schema.info_key(worker.name), mapping={"last_seen": "1000.0", "scope": "worker"})
    pruned = statedb(cli, "--url", redis_url, "--key-prefix", state_prefix, "prune", "--idle-for", "1d", "--yes",
                     "--json")
    assert pruned.exit_code == 0, pruned.output
    report = json.loads(pruned.output)
    assert [w["worker"] for w in report["workers"]] == ["dead@h"]
    assert worker.name not in [w["worker"] for w in report["workers"]]
    assert redis_client.exists(schema.clock_key(worker.name)) and not redis_client.exists(schema.clock_key("dead@h"))


def _status(cli: CliRunner, url: str, prefix: str, worker: str) -> dict[str, Any]:
    result = statedb(cli, "--url", url, "--key-prefix", prefix, "health", "--worker", worker, "--json")
    report = json.loads(result.output)
    (found,) = [w["status"] for w in report["workers"] if w["hostname"] == worker]
    return {**found, "exit_code": result.exit_code, "problems": report["problems"]}


def test_health_and_metrics_of_a_worker_whose_redis_is_stopped(
    harness: WorkerHarness, cli: CliRunner, state_prefix: str,
) -> None:
    """The issue's proof: pending > 0 and failing while its Redis is stopped, health exits 1; back, 0."""
    server = PrivateServer().start()
    try:
        app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
        worker = harness.worker(app, server.url, env=fast_env()).start()
        harness.wait_reachable(worker)
        args = ("--url", server.url, "--key-prefix", state_prefix)
        healthy = statedb(cli, *args, "health", "--worker", worker.name)
        assert healthy.exit_code == 0, healthy.output

        server.stop()
        harness.revoke(worker, [new_task_id()])  # answered: honoured in memory, waiting to be written
        status = _status(cli, server.url, state_prefix, worker.name)
        assert status["pending"] > 0 and status["failing"] is True, status
        assert status["hostname"] == worker.name and status["last_clock_save"] is not None
        sick = statedb(cli, *args, "health", "--worker", worker.name)
        assert sick.exit_code == 1
        lines = sick.output.splitlines()
        assert lines[0].startswith(f"Redis: cannot reach Redis at {server.url}")
        assert f"{worker.name}: {status['pending']} revoked id" in sick.output
        assert f"{worker.name}: Redis failing since " in sick.output
        assert statedb(cli, *args, "health").exit_code == 1  # every live worker
        metrics = statedb(cli, *args, "metrics")
        assert metrics.exit_code == 0, metrics.output
        assert f'celery_statedb_pending_ids{{hostname="{worker.name}"}} {float(status["pending"])}' in metrics.output
        assert f'celery_statedb_failing{{hostname="{worker.name}"}} 1.0' in metrics.output
        assert "celery_statedb_redis_up 0.0" in metrics.output

        server.start()
        wait_until(lambda: statedb(cli, *args, "health", "--worker", worker.name).exit_code == 0, 30,
                   "health to pass once Redis is back", interval=0.5)
        status = _status(cli, server.url, state_prefix, worker.name)
        assert status["pending"] == 0 and status["failing"] is False and status["exit_code"] == 0
    finally:
        server.close()
