"""End to end: stamped-header revokes kept in Redis by real ``celery worker`` processes.

A task is stamped the way Celery's own stamping API sends it: ``stamped_headers`` (the
names) and ``stamps`` (name -> value) in the message headers, which is what
``Request.stamped_headers`` / ``Request.stamps`` read (``app.send_task(...,
stamped_headers=[name], name=value)`` builds exactly that).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from celery_redis_statedb import purge_old_revoked_tasks, restore_stamps
from celery_redis_statedb.local_servers import PrivateServer
from statedb.stamps import add_stamps
from tests.acl import ACL_PASSWORD, acl_log, admin_acl_rule, worker_acl_rule
from tests.keys import shared_stamps_key, stamp, stamps_key
from tests.pickles import payloads
from tests.workers import TASK_NAME, WorkerHarness, WorkerProcess, fast_env, new_task_id

pytestmark = pytest.mark.e2e


def send_stamped(harness: WorkerHarness, worker: WorkerProcess, header: str, value: str) -> str:
    task_id = new_task_id()
    harness.control_app.send_task(TASK_NAME, args=[task_id], task_id=task_id, queue=worker.queue,
                                  stamped_headers=[header], **{header: value})
    return task_id


def revoke_stamp(harness: WorkerHarness, worker: WorkerProcess, header: str, value: str) -> None:
    harness.wait_reachable(worker)
    replies = harness.control_app.control.broadcast(
        "revoke_by_stamped_headers", arguments={"headers": {header: value}, "terminate": False, "signal": None},
        destination=[worker.name], reply=True, timeout=5) or []
    answers = [reply[worker.name] for reply in replies if worker.name in reply]
    assert answers == [{"ok": f"headers {{{header!r}: {value!r}}} flagged as revoked, but not terminated"}], replies


def assert_discarded_by_header(harness: WorkerHarness, worker: WorkerProcess, header: str, value: str) -> None:
    revoked = send_stamped(harness, worker, header, value)
    control = new_task_id()
    harness.send(worker, control)
    harness.wait_ran(worker, control)
    worker.wait_for_log(f"Discarding revoked task: {TASK_NAME}[{revoked}] (revoked by header: "
                        f"{{{header!r}: {value!r}}})")
    assert not worker.app.ran(revoked), worker.log()


def assert_runs(harness: WorkerHarness, worker: WorkerProcess, header: str, value: str) -> None:
    task_id = send_stamped(harness, worker, header, value)
    harness.wait_ran(worker, task_id)


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("prefork", 2)])
def test_stamp_revoke_survives_sigkill_then_restore_and_purge_lift_it(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, pool: str,
    concurrency: int,
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, pool=pool, concurrency=concurrency).start()
    assert "redis-statedb: restored 0 stamped-header revokes" in worker.log()
    key = stamps_key(state_prefix, worker.name)

    before = time.time()
    revoke_stamp(harness, worker, "batch", "b-1")
    score = redis_client.zscore(key, stamp("batch", "b-1"))  # stored before the reply
    assert score is not None and before - 1 <= score <= time.time() + 1, worker.log()

    worker.kill()
    worker.start()
    assert "redis-statedb: restored 1 stamped-header revokes" in worker.log()
    assert_discarded_by_header(harness, worker, "batch", "b-1")
    assert_runs(harness, worker, "batch", "other")

    # restore --stamp: lifted in Redis and in the live worker, no restart.
    admin_app = harness.control_app
    admin_app.conf.redis_state_key_prefix = state_prefix
    result = restore_stamps(admin_app, [("batch", "b-1")], redis_url=redis_url, reply_timeout=3)
    assert result.removed == 1 and redis_client.exists(key) == 0
    assert any(worker.name in reply for reply in result.replies), result.replies
    assert_runs(harness, worker, "batch", "b-1")

    # Revoked again, then purged by age: lifted live too.
    revoke_stamp(harness, worker, "batch", "b-2")
    assert_discarded_by_header(harness, worker, "batch", "b-2")
    time.sleep(0.05)
    purge_old_revoked_tasks(admin_app, older_than=0, redis_url=redis_url)
    assert redis_client.exists(key) == 0
    harness.wait_reachable(worker)  # the purge broadcast came first on the same mailbox
    assert_runs(harness, worker, "batch", "b-2")
    assert "Traceback" not in worker.all_logs()


def test_a_fleet_stamp_binds_a_worker_with_a_new_hostname(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    operation = add_stamps(shared_stamps_key(state_prefix), [("tenant", "t-9")], time.time(), chunk_size=100)
    pipe = redis_client.pipeline(transaction=False)
    operation.stage(pipe)
    assert operation.result(pipe.execute(raise_on_error=False)) == 1  # as a producer writes it

    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url).start()
    assert "redis-statedb: restored 1 stamped-header revokes" in worker.log()
    assert_discarded_by_header(harness, worker, "tenant", "t-9")
    assert_runs(harness, worker, "tenant", "t-1")
    assert redis_client.exists(stamps_key(state_prefix, worker.name)) == 0  # boot only reads


def test_without_the_redis_statedb_stamps_are_celerys_alone(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, None).start()  # installed, but no --statedb
    revoke_stamp(harness, worker, "batch", "b-1")
    assert_discarded_by_header(harness, worker, "batch", "b-1")
    assert not list(redis_client.scan_iter(match=f"{state_prefix}*"))


# -- least privilege and never-unpickle, for the stamps keys too ------------------------------------


def test_a_worker_and_the_admin_keep_to_the_documented_acl(harness: WorkerHarness, state_prefix: str) -> None:
    server = PrivateServer().start()
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "statedb", *worker_acl_rule(state_prefix, admin))
        admin.execute_command("ACL", "SETUSER", "statedb-admin", *admin_acl_rule(state_prefix, admin))
        admin.execute_command("ACL", "LOG", "RESET")
        admin.zadd(shared_stamps_key(state_prefix), {stamp("tenant", "t-1"): time.time()})
        url = f"redis://statedb:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
        admin_url = f"redis://statedb-admin:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
        app = harness.app(install=True)
        worker = harness.worker(app, url, env=fast_env(state_prefix)).start()
        assert "restored 1 stamped-header revokes" in worker.log()
        revoke_stamp(harness, worker, "batch", "b-1")
        assert admin.zscore(stamps_key(state_prefix, worker.name), stamp("batch", "b-1")) is not None
        worker.kill()
        worker.start()
        assert_discarded_by_header(harness, worker, "batch", "b-1")

        admin_app = harness.control_app
        admin_app.conf.redis_state_key_prefix = state_prefix
        assert restore_stamps(admin_app, [("batch", "b-1")], redis_url=admin_url, reply_timeout=3).removed == 1
        assert purge_old_revoked_tasks(admin_app, older_than=0, redis_url=admin_url) == 0
        assert admin.exists(shared_stamps_key(state_prefix)) == 0
        assert worker.terminate() == 0
        assert acl_log(admin) == [], "a command outside the documented ACL was sent"
    finally:
        admin.close()
        server.close()


def test_planted_pickles_in_stamps_keys_are_never_loaded(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, tmp_path: Path,
) -> None:
    from celery_redis_statedb import stamp_rows
    from statedb import CorruptValueError

    marker = tmp_path / "PICKLE-CODE-RAN"
    for payload in payloads(marker):
        app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
        worker = harness.worker(app, redis_url)
        key = stamps_key(state_prefix, worker.name)
        redis_client.zadd(key, {payload: time.time()})
        worker.start()  # skipped, with an error line naming the key: never loaded
        assert any("ERROR" in line and repr(key) in line for line in worker.log().splitlines()), worker.log()
        assert "Traceback" not in worker.log()
        worker.kill()
        control = harness.control_app
        control.conf.redis_state_key_prefix = state_prefix
        with pytest.raises(CorruptValueError):
            stamp_rows(control, worker.name, redis_url=redis_url)
        redis_client.delete(key)
    assert not marker.exists(), "a pickle read from Redis was loaded: its code ran"
