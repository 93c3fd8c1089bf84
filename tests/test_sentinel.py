"""Clients of a Sentinel-managed primary (issue 13), on a real topology the suite starts: 1 primary,
1 replica, 3 Sentinels (celery_redis_statedb.local_servers.SentinelTopology)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import WorkerStatePersistence
from celery_redis_statedb.local_servers import SentinelTopology
from celery_redis_statedb.settings import resolve_config
from statedb import (
    AccessDeniedError,
    AsyncStateRepository,
    ConfigurationError,
    RedisUnavailableError,
    StateDBConfig,
    SyncStateRepository,
    list_workers,
    open_async_client,
    open_sync_client,
    where_revoked,
)
from statedb._sync.clients import ConnectionCounter, SentinelManagedRedis
from statedb.errors import NotDurableError
from tests.cli_runner import cli_app, run_cli
from tests.workers import wait_until

FAILOVER_TIMEOUT = 90.0  # a liveness bound: about 12 s on an idle host (the old primary demoted after ~10 s)


@pytest.fixture(scope="module")
def topology() -> Iterator[SentinelTopology]:
    """One topology for the tests that do not fail it over (its Sentinels need not know each other)."""
    with SentinelTopology().start(meshed=False) as started:
        yield started


@pytest.fixture
def prefix() -> str:
    return f"statedb-test:{uuid.uuid4().hex}:"


def stored_on(server_client: redis.Redis, key: str) -> set[bytes]:
    return set(server_client.zrange(key, 0, -1))  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["url", "kombu_url"])
def test_both_url_forms_reach_the_primary(topology: SentinelTopology, prefix: str, form: str) -> None:
    config = StateDBConfig(url=getattr(topology, form), key_prefix=prefix)
    with SyncStateRepository.open(config, "w1") as repository:
        assert repository.add_revoked(["a", "b"]) == 2
        assert isinstance(repository.client, SentinelManagedRedis)
        assert repository.client.info("replication")["role"] == "master"
    primary = topology.primary().client()
    try:
        assert stored_on(primary, f"{prefix}w1:revoked") == {b"a", b"b"}
    finally:
        primary.close()


async def test_the_async_core_reaches_the_primary_too(topology: SentinelTopology, prefix: str) -> None:
    config = StateDBConfig(url=topology.url, key_prefix=prefix)
    async with AsyncStateRepository.open(config, "w1") as repository:
        assert await repository.add_revoked(["a"]) == 1
        assert (await repository.client.info("replication"))["role"] == "master"
        assert [task_id async for task_id, _ in repository.iter_revoked()] == ["a"]
    client = open_async_client(config)
    try:
        assert await client.zcard(f"{prefix}w1:revoked") == 1
    finally:
        await client.aclose()


def seed(topology: SentinelTopology, prefix: str) -> None:
    with SyncStateRepository.open(StateDBConfig(url=topology.url, key_prefix=prefix), "w1@h") as repository:
        repository.add_revoked(["t1"])


async def test_the_admin_apis_take_both_forms(topology: SentinelTopology, prefix: str) -> None:
    seed(topology, prefix)
    assert await list_workers(topology.url, key_prefix=prefix) == ["w1@h"]
    assert [r.worker for r in await where_revoked(topology.kombu_url, "t1", key_prefix=prefix)] == ["w1@h"]


def test_the_cli_takes_kombus_form_with_the_master_name_setting(
    topology: SentinelTopology, prefix: str, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(topology, prefix)
    cli = cli_app(tmp_path, redis_url, prefix, monkeypatch)
    monkeypatch.setenv("CELERY_REDIS_STATE_MASTER_NAME", topology.service)  # no ?master_name= in the URL
    result = run_cli(cli, topology.kombu_url.partition("?")[0], "workers", "--json")
    assert result.exit_code == 0, result.output
    assert [row["worker"] for row in json.loads(result.output)] == ["w1@h"]


def test_connections_to_the_primary_are_counted_not_those_to_the_sentinels(topology: SentinelTopology) -> None:
    counter = ConnectionCounter()
    with SyncStateRepository.open(StateDBConfig(url=topology.url), "w1", on_connect=counter) as repository:
        assert repository.ping()
        assert counter.count == 1  # the Sentinels were asked first: not counted
        repository.client.connection_pool.disconnect()
        assert repository.ping()
        assert counter.count == 2  # a reconnection (after a failover, a new primary) is noticed


def test_the_client_has_this_librarys_options(topology: SentinelTopology) -> None:
    client = open_sync_client(StateDBConfig(url=f"{topology.url}?client_name=w1", socket_timeout=1.5),
                              on_connect=ConnectionCounter())
    try:
        options = client.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["protocol"], options["client_name"]) == (1.5, 2, "w1")
        assert options["redis_connect_func"] is not None
        assert options["retry"]._retries == 1
        assert client.sentinel_manager is not None
        assert len(client.sentinel_manager.sentinels) == 3  # every Sentinel of the URL, each checked below
        for sentinel in client.sentinel_manager.sentinels:
            sentinel_options = sentinel.connection_pool.connection_kwargs
            assert sentinel_options["socket_timeout"] == 1.5
            assert sentinel_options["retry"]._retries == 0  # a Sentinel that does not answer: the next one
            assert sentinel_options.get("redis_connect_func") is None  # Sentinel connections are not counted
    finally:
        client.close()


def test_closing_the_client_closes_its_connections_to_the_sentinels(topology: SentinelTopology) -> None:
    client = open_sync_client(StateDBConfig(url=topology.url))
    assert client.ping()
    assert client.sentinel_manager is not None
    asked = client.sentinel_manager.sentinels[0]
    ours = asked.client_id()  # the connection that asked for the primary
    port = asked.connection_pool.connection_kwargs["port"]
    admin = next(server.client() for server in topology.sentinel_servers if server.port == port)
    try:
        assert ours in {int(entry["id"]) for entry in admin.client_list()}
        client.close()
        assert ours not in {int(entry["id"]) for entry in admin.client_list()}
    finally:
        admin.close()


def test_the_sentinels_and_the_primary_take_their_own_credentials() -> None:
    with SentinelTopology(password="data-pw", sentinel_password="sentinel-pw").start(meshed=False) as secured:
        with SyncStateRepository.open(StateDBConfig(url=secured.url), "w1") as repository:
            assert repository.ping()
        with SyncStateRepository.open(StateDBConfig(url=secured.kombu_url), "w1") as repository:
            assert repository.ping()
        broker_url = secured.kombu_url.replace("&sentinel_password=sentinel-pw", "")  # kombu: in sentinel_kwargs
        assert "sentinel-pw" not in broker_url
        options = {"broker_url": broker_url,
                   "broker_transport_options": {"sentinel_kwargs": {"password": "sentinel-pw"}}}
        with SyncStateRepository.open(resolve_config(broker_url, conf=options), "w1") as repository:
            assert repository.ping()
        wrong_sentinel = secured.url.replace("sentinel-pw", "nope")
        without_sentinel_password = secured.url.partition("?")[0]
        for url in (wrong_sentinel, without_sentinel_password):
            with (pytest.raises(AccessDeniedError, match=r"the Sentinels of .* refused access .*sentinel_password"),
                  SyncStateRepository.open(StateDBConfig(url=url), "w1") as repository):
                repository.ping()
        with (pytest.raises(AccessDeniedError, match="refused access") as info,
              SyncStateRepository.open(StateDBConfig(url=secured.url.replace("data-pw", "nope")), "w1") as repository):
            repository.ping()
        assert "pw" not in str(info.value).replace("sentinel_password", "")


def test_an_unknown_service_is_a_clear_transient_error(topology: SentinelTopology) -> None:
    url = topology.url.replace(f"/{topology.service}/", "/no-such-service/")
    with pytest.raises(RedisUnavailableError, match=r"no Sentinel of .* names a primary: No master found for "
                                                    r"'no-such-service'; .*or a wrong service name"),\
            SyncStateRepository.open(StateDBConfig(url=url), "w1") as repository:
        repository.ping()


def test_unreachable_sentinels_are_a_short_transient_error() -> None:
    topology = SentinelTopology()  # never started: nothing listens on its ports
    with pytest.raises(RedisUnavailableError, match=r"No master found for 'statedb'; 3 Sentinels did not answer$"),\
            SyncStateRepository.open(StateDBConfig(url=topology.url, socket_connect_timeout=0.2), "w1") as repository:
        repository.ping()


# -- a failover ------------------------------------------------------------------------------


@pytest.mark.slow
def test_after_a_failover_writes_reach_the_new_primary(prefix: str) -> None:
    """SENTINEL FAILOVER: the client asks the Sentinels again and goes on with the new primary (a new
    connection, counted); with min_replicas=1 a write no replica acknowledged does not count, and says so."""
    with SentinelTopology() as topology:
        counter = ConnectionCounter()
        config = StateDBConfig(url=topology.url, key_prefix=prefix, min_replicas=1)
        key = f"{prefix}w1:revoked"
        with SyncStateRepository.open(config, "w1", on_connect=counter) as repository:
            repository.add_revoked(["before"])
            old = topology.failover()
            new = topology.wait_primary(FAILOVER_TIMEOUT, not_port=old, in_sync=False).client()
            not_durable: list[str] = []
            attempts = iter(range(10**6))

            def durable_on_the_new_primary() -> bool:
                task_id = f"after-{next(attempts)}"  # once the switch is announced, the old primary has no replica
                try:
                    repository.add_revoked([task_id])
                except NotDurableError as exc:  # the old primary alone, or the new one before its replica synced
                    not_durable.append(str(exc))
                    return False
                except RedisUnavailableError:  # the Sentinels between two answers, a connection closed by one
                    return False
                return task_id.encode() in stored_on(new, key)

            try:
                wait_until(durable_on_the_new_primary, FAILOVER_TIMEOUT, "a durable write to the new primary")
                assert b"before" in stored_on(new, key)
            finally:
                new.close()
            assert counter.count >= 2  # a new connection: the worker's resync follows it
        assert not_durable, "no write was refused while the new primary had no replica in sync"
        assert all("replica acknowledged the write" in message for message in not_durable)


def test_a_plain_url_naming_a_sentinel_is_a_configuration_error(topology: SentinelTopology, prefix: str) -> None:
    """A Sentinel knows no data command: "unknown command" is the URL's fault (exit 78), never a data error."""
    sentinel = topology.sentinel_servers[0]
    url = f"redis://127.0.0.1:{sentinel.port}/0"
    persistence = WorkerStatePersistence(StateDBConfig(url=url, key_prefix=prefix, boot_timeout=0), "w@h",
                                         revoked=LimitedSet(maxlen=10), clock=LamportClock())
    with pytest.raises(ConfigurationError, match=r"Sentinel.*redis\+sentinel://"):
        persistence.boot()
