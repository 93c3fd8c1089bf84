"""End to end on a 3-primary Redis Cluster: 20 real workers whose keys spread over every
primary boot, take revokes, are SIGKILLed, restart and discard the revoked tasks; the admin
APIs and ``celery statedb workers/where/purge`` see every node.

The broker stays the run's standalone server; only the statedb is the cluster. The URL is
claimed three ways: ``--statedb``, the ``worker_state_db`` setting, ``$CELERY_WORKER_STATEDB``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from statedb import admin
from statedb.keys import KeySchema
from tests.cli_runner import cli_app, run_cli
from tests.keys import revoked_key
from tests.workers import TASK_NAME, WorkerHarness, WorkerProcess, new_task_id, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKERS = 20
BOOT_TIMEOUT = 120.0  # 20 workers booting at once on a small machine


def spread_names(client: RedisCluster, prefix: str, count: int) -> list[str]:
    """``count`` worker names whose revoked sets land on every primary of the cluster."""
    primaries = {node.name for node in client.get_primaries()}
    while True:
        token = uuid.uuid4().hex[:8]
        names = [f"cl{i}-{token}@statedb-test" for i in range(count)]
        if {client.get_node_from_key(KeySchema(prefix).revoked_key(n)).name for n in names} == primaries:
            return names


def start_all(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.start(wait_ready=False)
    for worker in workers:
        worker.wait_ready(BOOT_TIMEOUT)


def test_twenty_workers_on_a_cluster(
    harness: WorkerHarness, cluster_url: str, cluster_client: RedisCluster, cluster_prefix: str, redis_url: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = cluster_prefix
    plain = harness.app(install=False)  # the celery.commands entry point claims the URL
    configured = harness.app(install=True, conf={"worker_state_db": cluster_url, "redis_state_key_prefix": prefix})
    workers = []
    for i, name in enumerate(spread_names(cluster_client, prefix, WORKERS)):
        if i % 3 == 0:
            worker = harness.worker(plain, cluster_url, name=name, extra_args=["--redis-state-key-prefix", prefix])
        elif i % 3 == 1:
            worker = harness.worker(configured, None, name=name)
        else:
            worker = harness.worker(plain, None, name=name, env={"CELERY_WORKER_STATEDB": cluster_url,
                                                                 "CELERY_REDIS_STATE_KEY_PREFIX": prefix})
        workers.append(worker)
    start_all(workers)
    for worker in workers:
        assert "redis-statedb: restored 0 revoked ids" in worker.log(), worker.log()

    revoked = {worker.name: new_task_id() for worker in workers}
    for worker in workers:  # each stored on its set's primary before the reply
        harness.revoke(worker, [revoked[worker.name]])
        assert cluster_client.zscore(revoked_key(prefix, worker.name), revoked[worker.name]) is not None

    for worker in workers:
        worker.kill()
    start_all(workers)
    controls = {}
    for worker in workers:
        assert "redis-statedb: restored 1 revoked ids" in worker.log(), worker.log()
        controls[worker.name] = new_task_id()
        harness.send(worker, revoked[worker.name])
        harness.send(worker, controls[worker.name])
    for worker in workers:
        harness.wait_ran(worker, controls[worker.name], timeout=30)
        worker.wait_for_log(f"Discarding revoked task: {TASK_NAME}[{revoked[worker.name]}]")
        assert not worker.app.ran(revoked[worker.name])
        assert "Traceback" not in worker.all_logs(), worker.all_logs()

    names = sorted(revoked)
    # The admin APIs and the CLI see every primary.
    assert asyncio.run(admin.list_workers(cluster_url, key_prefix=prefix)) == names
    for name in names[:3]:
        places = asyncio.run(admin.where_revoked(cluster_url, revoked[name], key_prefix=prefix))
        assert [place.worker for place in places] == [name]
    cli = cli_app(tmp_path, redis_url, prefix, monkeypatch)
    listed = json.loads(run_cli(cli, cluster_url, "workers", "--json").output)
    assert sorted(state["worker"] for state in listed) == names
    assert all(state["revoked_count"] == 1 for state in listed)
    where = json.loads(run_cli(cli, cluster_url, "where", revoked[names[-1]], "--json").output)
    assert [place["worker"] for place in where] == [names[-1]]
    wait_until(lambda: time.time() - max(state["newest_epoch"] for state in listed) > 1.5, 5, "the revokes to age")
    purged = json.loads(run_cli(cli, cluster_url, "purge", "--older-than", "1s", "--force", "--yes", "--json").output)
    assert purged["removed"] == WORKERS
    assert all(state.revoked_count == 0
               for state in asyncio.run(admin.inspect_workers(cluster_url, key_prefix=prefix)))


def test_a_plain_url_naming_a_cluster_node_stops_the_worker_with_a_hint(
    harness: WorkerHarness, cluster_client: RedisCluster, cluster_prefix: str
) -> None:
    """Was exit 65 ("Redis rejected a command on key ...: 16029 ...": a MOVED reply) for most names."""
    node = cluster_client.get_primaries()[0]
    worker = harness.worker(harness.app(install=False), f"redis://{node.host}:{node.port}/0",
                            extra_args=["--redis-state-key-prefix", cluster_prefix])
    worker.start(wait_ready=False)
    assert worker.wait_exit(BOOT_TIMEOUT) == 78, worker.log()
    assert "is a Redis Cluster node" in worker.log() and "use redis+cluster://" in worker.log()
    assert "Traceback" not in worker.log()
