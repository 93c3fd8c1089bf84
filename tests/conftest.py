"""Shared fixtures: one real Redis for the run, isolated per test by a unique key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_redis_statedb.local_servers import PrivateCluster, PrivateServer, delete_prefixed
from statedb import StateDBConfig, open_sync_client
from tests.revoke_streams import RevokeStream
from tests.workers import WorkerHarness


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of the run's server (an outside one is never flushed)."""
    outside = os.environ.get("STATEDB_TEST_REDIS_URL", "").strip()
    if outside:
        redis.Redis.from_url(outside).ping()
        yield outside
        return
    with PrivateServer() as server:
        yield server.url


def unique_prefix(url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys on ``url`` are deleted afterwards."""
    prefix = f"statedb-test:{uuid.uuid4().hex}:"
    yield prefix
    delete_prefixed(url, prefix)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A prefix no other test uses; its keys are deleted afterwards."""
    yield from unique_prefix(redis_url)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    """A server of our own, for tests that stop, restart or flush it."""
    with PrivateServer() as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[WorkerHarness]:
    """Real ``celery worker`` subprocesses; broker keys live under the test's key prefix."""
    workers = WorkerHarness(tmp_path, redis_url, broker_prefix=f"{key_prefix}broker:")
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def state_prefix(key_prefix: str) -> str:
    """The statedb key prefix of a worker test (under ``key_prefix``, so its keys are deleted)."""
    return f"{key_prefix}state:"


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A ``redis+cluster://`` URL of a 3-primary cluster for the run (an outside one is never flushed)."""
    outside = os.environ.get("STATEDB_TEST_CLUSTER_URL", "").strip()
    if outside:
        yield outside
        return
    # Redis's own node timeout: a node slow to answer on a loaded machine is not taken for failed
    # (three primaries without replicas: one failed node takes the whole cluster down).
    with PrivateCluster(node_timeout_ms=15_000) as cluster:
        yield cluster.url


@pytest.fixture
def cluster_client(cluster_url: str) -> Iterator[redis.RedisCluster]:
    """An admin client of the test cluster (keys of any slot)."""
    client: Any = open_sync_client(StateDBConfig(url=cluster_url))
    yield client.cluster
    client.close()


@pytest.fixture
def cluster_prefix(cluster_url: str) -> Iterator[str]:
    """A key prefix no other test uses on the test cluster; its keys are deleted afterwards."""
    yield from unique_prefix(cluster_url)


@pytest.fixture
def streams() -> Iterator[list[RevokeStream]]:
    """Revoke streams a test starts (tests/revoke_streams.py): stopped at the end, whatever happened."""
    started: list[RevokeStream] = []
    yield started
    for stream in started:
        stream._stop.set()
