"""Redis Cluster: the client factory, execution on cluster pipelines, errors, the admin APIs over
every primary, and a worker's persistence, against real 3-primary clusters the suite starts."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from celery.utils.collections import LimitedSet
from celery.worker.state import Persistent
from kombu.clocks import LamportClock
from redis.cluster import RedisCluster

from celery_redis_statedb import WorkerStatePersistence
from celery_redis_statedb import admin as sync_admin
from celery_redis_statedb.durable_control import store_revoked_ids
from celery_redis_statedb.local_servers import PrivateCluster, delete_prefixed, free_port
from celery_redis_statedb.migration import migrate_file_statedb
from statedb import (
    AccessDeniedError,
    AsyncStateRepository,
    ConfigurationError,
    RedisUnavailableError,
    StateDBConfig,
    SyncStateRepository,
    admin,
    open_async_client,
    open_sync_client,
    stamps_admin,
)
from statedb._sync.clients import DeferredCluster, is_cluster_client
from statedb._sync.repository import run_staged
from statedb.client import cluster_options
from statedb.errors import StateDataError
from statedb.keys import KeySchema
from statedb.translate import translate_exception, translate_reply_error


def primary_of(client: RedisCluster, key: str) -> str:
    return str(client.get_node_from_key(key).name)


def names_on_every_primary(client: RedisCluster, prefix: str, per_node: int) -> list[str]:
    """Worker names whose revoked sets spread over every primary, ``per_node`` on each."""
    by_node: dict[str, list[str]] = {node.name: [] for node in client.get_primaries()}
    while any(len(names) < per_node for names in by_node.values()):
        name = f"w-{uuid.uuid4().hex[:8]}@host"
        names = by_node[primary_of(client, KeySchema(prefix).revoked_key(name))]
        if len(names) < per_node:
            names.append(name)
    return [name for names in by_node.values() for name in names]


# -- the factory ---------------------------------------------------------------------


def test_a_cluster_url_opens_a_cluster_client_with_the_library_options() -> None:
    config = StateDBConfig(url="rediss+cluster://user:p%40ss@h1:7000,h2:7001?ssl_cert_reqs=none&client_name=w",
                           socket_timeout=1.5, socket_connect_timeout=0.5)
    target, options = cluster_options(config)
    assert target.nodes == (("h1", 7000), ("h2", 7001))
    assert options["protocol"] == 2 and options["decode_responses"] is False
    assert options["socket_timeout"] == 1.5 and options["socket_connect_timeout"] == 0.5
    assert options["ssl"] is True and options["ssl_cert_reqs"] == "none"
    assert (options["username"], options["password"], options["client_name"]) == ("user", "p@ss", "w")
    assert "db" not in options and "host" not in options
    # Opening does no I/O (redis-py's sync RedisCluster would connect in its constructor).
    sync_client = open_sync_client(config)
    assert isinstance(sync_client, DeferredCluster) and is_cluster_client(sync_client)
    sync_client.close()
    async_client = open_async_client(config)
    asyncio.run(async_client.aclose())


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_unreachable_cluster_is_unavailable_and_masks_the_password(flavour: str) -> None:
    config = StateDBConfig(url=f"redis+cluster://:topsecret@127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
                           socket_connect_timeout=0.5)
    with pytest.raises(RedisUnavailableError) as info:
        if flavour == "sync":
            with SyncStateRepository.open(config, "w@h") as repo:
                repo.add_revoked(["a"])
        else:
            async def write() -> None:
                async with AsyncStateRepository.open(config, "w@h") as repo:
                    await repo.add_revoked(["a"])

            asyncio.run(write())
    assert "topsecret" not in str(info.value)
    assert "redis+cluster://:***@127.0.0.1" in str(info.value)


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster(password="right-pass") as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_cluster_credentials(password_cluster: PrivateCluster, flavour: str) -> None:
    wrong = StateDBConfig(url=password_cluster.url.replace("right-pass", "wrong-pass"))

    def ping(config: StateDBConfig) -> bool:
        if flavour == "sync":
            with SyncStateRepository.open(config, "w@h") as repo:
                return repo.ping()

        async def run() -> bool:
            async with AsyncStateRepository.open(config, "w@h") as repo:
                return await repo.ping()

        return asyncio.run(run())

    with pytest.raises(AccessDeniedError) as info:
        ping(wrong)
    assert "wrong-pass" not in str(info.value) and "right-pass" not in str(info.value)
    assert ping(StateDBConfig(url=password_cluster.url)) is True


def test_a_cluster_url_naming_a_plain_server_is_a_configuration_error(redis_url: str, key_prefix: str) -> None:
    parts = urlsplit(redis_url)
    with SyncStateRepository.open(StateDBConfig(url=f"redis+cluster://{parts.hostname}:{parts.port}",
                                                key_prefix=key_prefix),
                                  "w@h") as repo, pytest.raises(ConfigurationError, match="not a Redis Cluster node"):
        repo.ping()


def test_a_plain_url_naming_a_cluster_node_is_told_to_use_redis_cluster(
    cluster_client: RedisCluster, cluster_prefix: str
) -> None:
    node = cluster_client.get_primaries()[0]
    url = f"redis://{node.host}:{node.port}/0"
    names = names_on_every_primary(cluster_client, cluster_prefix, 1)
    for name in names:  # at boot, whichever node the worker's keys are on
        with SyncStateRepository.open(StateDBConfig(url=url, key_prefix=cluster_prefix), name) as repo:
            with pytest.raises(ConfigurationError, match=r"use redis\+cluster://"):
                repo.check_server()
            if primary_of(cluster_client, repo.keys.revoked) != node.name:
                # Past the boot check a MOVED reply is transient (resharding), never a data error.
                with pytest.raises(RedisUnavailableError, match=r"use redis\+cluster://") as info:
                    repo.add_revoked(["a"])
                assert not isinstance(info.value, StateDataError)
    for scan in (admin.list_workers(url, key_prefix=cluster_prefix),  # listings would see one node only
                 admin.where_revoked(url, "a", key_prefix=cluster_prefix),
                 stamps_admin.inspect_stamps(url, key_prefix=cluster_prefix)):
        with pytest.raises(ConfigurationError, match=r"use redis\+cluster://"):
            asyncio.run(scan)


@pytest.mark.parametrize("reply", [
    redis.exceptions.MovedError("3999 127.0.0.1:6381"), redis.exceptions.AskError("3999 127.0.0.1:6381"),
    redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
    redis.exceptions.ClusterDownError("The cluster is down"), redis.exceptions.ResponseError("MOVED 1 h:1"),
    redis.exceptions.ClusterError("TTL exhausted."),
])
def test_cluster_redirections_and_outages_are_transient(reply: Exception) -> None:
    assert isinstance(translate_reply_error(reply, key="k"), RedisUnavailableError)
    assert isinstance(translate_exception(reply, target="t"), RedisUnavailableError)


def test_cluster_client_failures_are_translated() -> None:
    down = redis.exceptions.RedisClusterException("Redis Cluster cannot be connected. Please provide at least "
                                                  "one reachable node: Connection refused")
    assert isinstance(translate_exception(down, target="t"), RedisUnavailableError)
    uncovered = redis.exceptions.SlotNotCoveredError('Slot "5" is not covered by the cluster.')
    assert isinstance(translate_exception(uncovered, target="t"), RedisUnavailableError)
    refused = redis.exceptions.RedisClusterException("Redis Cluster cannot be connected")
    refused.__cause__ = redis.exceptions.AuthenticationError("invalid username-password pair")
    assert isinstance(translate_exception(refused, target="t"), AccessDeniedError)


# -- execution on a cluster ------------------------------------------------------------


def wait_calls(client: RedisCluster) -> dict[str, int]:
    """WAIT commands each primary has run (INFO commandstats)."""
    counts = {}
    for node in client.get_primaries():
        stats = client.info("commandstats", target_nodes=node)
        counts[node.name] = int(stats.get("cmdstat_wait", {}).get("calls", 0))
    return counts


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_wait_after_a_write_goes_to_the_primary_of_its_key(
    cluster_url: str, cluster_client: RedisCluster, cluster_prefix: str, flavour: str
) -> None:
    """What min_replicas relies on: WAIT runs on the connection that carried the write before it."""
    keys = [KeySchema(cluster_prefix).revoked_key(name) for name in names_on_every_primary(
        cluster_client, cluster_prefix, 1)]

    def stage(pipe: Any) -> None:
        for key in keys:
            pipe.zadd(key, {"id": 1.0})
            pipe.wait(0, 0)

    before = wait_calls(cluster_client)
    config = StateDBConfig(url=cluster_url)
    if flavour == "sync":
        client = open_sync_client(config)
        replies = run_staged(client, stage, config.safe_url)
        client.close()
    else:
        from statedb._async.repository import run_staged as run_async

        async def run() -> list[Any]:
            client = open_async_client(config)
            try:
                return await run_async(client, stage, config.safe_url)
            finally:
                await client.aclose()

        replies = asyncio.run(run())
    assert replies == [1, 0] * len(keys)
    after = wait_calls(cluster_client)
    assert {name: after[name] - before[name] for name in after} == {primary_of(cluster_client, k): 1 for k in keys}


def test_ping_time_info_and_the_clock_script_run_on_a_cluster(cluster_url: str, cluster_prefix: str) -> None:
    with SyncStateRepository.open(StateDBConfig(url=cluster_url, key_prefix=cluster_prefix), "w@h") as repo:
        assert repo.ping() is True
        repo.check_server()
        health = repo.check_health([], server_time=True, policy=True, advance_to=5)
        assert health.server_time is not None and health.policy is not None and health.refused == ()
        assert tuple(health.advanced) == (5, True)  # type: ignore[arg-type]


def test_a_hash_tagged_prefix_puts_every_key_in_one_slot(
    cluster_url: str, cluster_client: RedisCluster, cluster_prefix: str
) -> None:
    prefix = "{" + cluster_prefix.rstrip(":") + "}:worker:state:"
    try:
        config = StateDBConfig(url=cluster_url, key_prefix=prefix)
        keys = []
        for name in ("a@h", "b@h", "c@h"):
            with SyncStateRepository.open(config, name) as repo:
                repo.add_revoked(["x"])
                repo.advance_clock(3)
                repo.add_stamps([("h", "v")])
                repo.add_fleet_revoked_at([("f", 1.0)])
                keys += [repo.keys.revoked, repo.keys.clock, repo.keys.stamps, repo.keys.shared]
        assert len({cluster_client.keyslot(key) for key in keys}) == 1
        assert sorted(asyncio.run(admin.list_workers(cluster_url, key_prefix=prefix))) == ["a@h", "b@h", "c@h"]
    finally:
        delete_prefixed(cluster_url, prefix)
    # Without a tag, a fleet spreads over every primary.
    spread = names_on_every_primary(cluster_client, cluster_prefix, 1)
    assert len({primary_of(cluster_client, KeySchema(cluster_prefix).revoked_key(n)) for n in spread}) == 3


# -- the admin APIs see every primary ---------------------------------------------------


def test_the_admin_apis_see_every_primary(cluster_url: str, cluster_client: RedisCluster, cluster_prefix: str,
                                          redis_url: str) -> None:
    names = names_on_every_primary(cluster_client, cluster_prefix, 3)
    config = StateDBConfig(url=cluster_url, key_prefix=cluster_prefix)
    for i, name in enumerate(names):
        with SyncStateRepository.open(config, name) as repo:
            repo.add_revoked([f"id-{i}", "everywhere"], revoked_at=1000.0 + i)
            repo.advance_clock(i + 1)
            repo.add_stamps([("tenant", f"t{i}")], revoked_at=1000.0)

    def run(function: Any, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run(function(cluster_url, *args, key_prefix=cluster_prefix, **kwargs))

    assert run(admin.list_workers) == sorted(names)
    states = {state.worker: state for state in run(admin.inspect_workers)}
    assert set(states) == set(names)
    assert all(states[name].revoked_count == 2 and states[name].clock == i + 1 for i, name in enumerate(names))
    assert [r.worker for r in run(admin.where_revoked, "id-4")] == [names[4]]
    assert sorted(r.worker for r in run(admin.where_revoked, "everywhere")) == sorted(names)
    assert run(admin.revoke, ["fleet-id"]) == 1
    assert [r.worker for r in run(admin.where_revoked, "fleet-id")] == [admin.FLEET]
    assert run(admin.restore, ["everywhere"]) == len(names)
    assert len(run(stamps_admin.inspect_stamps)) == len(names)
    assert run(stamps_admin.restore_stamps, [("tenant", "t0")]) == 1
    assert run(admin.purge_old_revoked, older_than=60, dry_run=True) == len(names)
    assert run(admin.purge_old_revoked, older_than=60) == len(names)
    assert all(state.revoked_count == 0 or state.is_fleet for state in run(admin.inspect_workers))
    # The sync twins of a Celery app (cron, Django admin) resolve the same cluster.
    app = Celery("cluster-admin", broker=redis_url, set_as_current=False)
    app.conf.update(worker_state_db=cluster_url, redis_state_key_prefix=cluster_prefix)
    assert sync_admin.list_workers(app) == sorted(names)


def test_producer_revokes_and_migration_on_a_cluster(
    cluster_url: str, cluster_client: RedisCluster, cluster_prefix: str, tmp_path: Path
) -> None:
    config = StateDBConfig(url=cluster_url, key_prefix=cluster_prefix)
    assert store_revoked_ids(config, ["p1", "p2"]) == 2  # on the server's clock (TIME on a cluster)
    assert cluster_client.zcard(config.keys.shared_revoked_key) == 2
    path = tmp_path / "worker.db"
    state = SimpleNamespace(revoked=LimitedSet(maxlen=10))
    state.revoked.update(["m1", "m2"])
    Persistent(state, str(path), LamportClock(initial_value=41)).save()
    with SyncStateRepository.open(config, "migrated@h") as repo:
        report = migrate_file_statedb(path, repo)
        assert (report.ids_found, report.ids_added) == (2, 2)
        assert {task_id for task_id, _ in repo.iter_revoked()} == {"m1", "m2"}
        assert repo.read_clock() > 41


# -- a worker's persistence ---------------------------------------------------------------


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster() as cluster:
        yield cluster


def stored(client: RedisCluster, key: str) -> set[str]:
    return {member.decode() for member in client.zrange(key, 0, -1)}


@pytest.mark.slow
def test_a_worker_on_a_cluster_survives_a_primary_restart(
    private_cluster: PrivateCluster, caplog: pytest.LogCaptureFixture
) -> None:
    client = private_cluster.client()
    name = names_on_every_primary(client, "cl:", 1)[0]
    config = StateDBConfig(url=private_cluster.url, key_prefix="cl:", socket_timeout=1, socket_connect_timeout=1,
                           clock_interval=0.1)
    revoked = LimitedSet(maxlen=100)
    persistence = WorkerStatePersistence(config, name, revoked=revoked, clock=LamportClock())
    try:
        with caplog.at_level(logging.INFO, logger="celery_redis_statedb"):
            persistence.boot()
            revoked.update(["a", "b"])
            key = persistence.repository.keys.revoked
            assert stored(client, key) == {"a", "b"}
            for _ in range(3):  # a healthy cluster: the first connection to each node is no reconnect
                persistence.tick()
            assert "back to" not in caplog.text and persistence.pending == {}
            # The primary of the worker's set restarts empty (no persistence), with its slots.
            server = next(s for s in private_cluster.servers
                          if f"127.0.0.1:{s.port}" == primary_of(client, key))
            server.kill()
            revoked.add("during")  # fails: waits in memory, no exception into Celery
            assert "during" in persistence.pending
            persistence.tick()
            private_cluster.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and stored(client, key) != {"a", "b", "during"}:
                time.sleep(0.2)
                persistence.tick()
        assert stored(client, key) == {"a", "b", "during"}
        assert persistence.pending == {}
        assert "back to" in caplog.text  # written back after the loss
    finally:
        persistence.save()
        client.close()


def test_the_readme_worker_acl_on_a_cluster_needs_the_slot_and_command_tables(key_prefix: str) -> None:
    """Without +cluster|slots +command redis-py's cluster client cannot start: refused access naming the
    grant (it used to read "not a Redis Cluster node"); with them the README's worker rule works."""
    from tests.acl_rules import WORKER_USER, readme_rules

    prefix = "{" + key_prefix.strip(":") + "}:state:"
    with PrivateCluster() as cluster:
        nodes = ",".join(f"127.0.0.1:{server.port}" for server in cluster.servers)
        config = StateDBConfig(url=f"redis+cluster://worker:s3cret-acl@{nodes}", key_prefix=prefix)
        for extra in ((), ("+cluster|slots", "+command")):
            for server in cluster.servers:
                client = server.client()
                client.execute_command("ACL", "SETUSER", "worker", "reset",
                                       *readme_rules()[WORKER_USER].setuser_args(prefix, "s3cret-acl", *extra))
                client.close()
            with SyncStateRepository.open(config, "w@h") as repository:
                if not extra:
                    with pytest.raises(AccessDeniedError, match=r"\+cluster\|slots and \+command") as refused:
                        repository.ping()
                    assert "s3cret-acl" not in str(refused.value)
                    continue
                assert repository.ping() and repository.add_revoked(["a"]) == 1
                assert repository.advance_clock(3).stored == 3
