"""Hardening, end to end with real workers: a forged clock and bad fleet members never stop a boot.

- A ``worker-heartbeat`` event with a clock of 2**60, sent on the broker, reaches every
  gossiping worker, which stores it: the worker still boots (with a warning), again and again.
- A non-UTF-8 member and a ``+inf`` score in the fleet set are skipped with an error line and
  counted (``statedb_status``); ``celery statedb ls --fleet`` lists the rest and flags them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from tests.cli_runner import cli_app, run_cli
from tests.keys import clock_key, shared_key
from tests.workers import CANNOT_START, WorkerHarness, assert_discarded, new_task_id, wait_until

FORGED = 2**60


def send_forged_heartbeat(harness: WorkerHarness, clock: int) -> None:
    """One ``worker-heartbeat`` event from a made-up node, carrying ``clock`` (Celery's own dispatcher)."""
    app = harness.new_control_app()
    try:
        app.clock.value = clock - 1  # the dispatcher sends clock.forward()
        with app.connection_for_write() as connection:
            dispatcher = app.events.Dispatcher(connection, hostname="forger@nowhere", enabled=True)
            dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=0)
            dispatcher.close()
    finally:
        app.close()


def worker_clock(harness: WorkerHarness, name: str) -> int:
    replies = harness.control_app.control.inspect(destination=[name], timeout=1.0).clock() or {}
    return int(replies.get(name, {}).get("clock", 0))


@pytest.mark.e2e
def test_a_forged_clock_from_a_heartbeat_event_never_stops_a_boot(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, gossip=True, env={"CELERY_REDIS_STATE_CLOCK_INTERVAL": "0.5"})
    assert "--without-gossip" not in worker.argv
    worker.start()
    harness.wait_reachable(worker)
    revoked = new_task_id()
    harness.revoke(worker, [revoked])

    def adopted() -> bool:
        send_forged_heartbeat(harness, FORGED)  # until the worker's gossip has subscribed
        return worker_clock(harness, worker.name) > FORGED

    wait_until(adopted, 20, "the worker to adopt the forged clock", interval=0.5)
    key = clock_key(state_prefix, worker.name)
    wait_until(lambda: int(redis_client.get(key) or 0) > FORGED, 10, "the forged clock stored")
    warning = worker.wait_for_log("implausible logical clock")
    assert repr(key) in warning and "above 2**53" in warning, warning
    assert worker.terminate() == 0
    stored = int(redis_client.get(key) or 0)
    assert stored > FORGED

    for _ in range(2):  # it boots, and boots again, on the stored forged clock
        worker.start()
        assert CANNOT_START not in worker.log()
        assert worker.log_count("implausible logical clock") == 1, worker.log()
        assert_discarded(harness, worker, revoked)
        assert worker_clock(harness, worker.name) > stored
        assert worker.terminate() == 0
        assert int(redis_client.get(key) or 0) > stored  # still exact: compared as integers, never doubles
        stored = int(redis_client.get(key) or 0)
    assert "Traceback" not in worker.all_logs()


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, state_prefix: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    return cli_app(tmp_path, redis_url, state_prefix, monkeypatch)


@pytest.mark.e2e
def test_bad_members_of_the_fleet_set_are_skipped_counted_and_flagged(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, cli: CliRunner
) -> None:
    fleet = shared_key(state_prefix)
    good, old = new_task_id(), new_task_id()
    redis_client.zadd(fleet, {good: time.time(), b"\xff\xfe-not-utf8": time.time() - 5, "inf-score": float("inf"),
                              old: time.time() - 7 * 86400})  # old: beyond memory, through the index
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    workers = [harness.worker(app, redis_url).start() for _ in range(2)]
    for worker in workers:  # every worker boots, skipping them with one error line each
        log = worker.log()
        errors = [line for line in log.splitlines() if "ERROR" in line and repr(fleet) in line]
        assert len(errors) == 2, log
        assert any("not UTF-8 text" in line for line in errors) and any("non-finite" in line for line in errors)
        assert_discarded(harness, worker, good)
        assert_discarded(harness, worker, old)
        status = harness.statedb_status(worker)
        assert status["bad_members"] == 2 and status["unreadable_keys"] == [], status
        assert status["index_size"] >= 1 and status["pending"] == 0, status
    assert redis_client.zcard(fleet) == 4  # left in Redis for the operator

    result = run_cli(cli, redis_url, "ls", "--fleet")
    assert result.exit_code == 0, result.output
    assert good in result.output and old in result.output
    assert "skipped 2 bad members" in result.output and repr(fleet)[1:-1] in result.output
