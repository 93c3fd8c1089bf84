"""Opening clients, one factory for every kind of URL (one server, Sentinel, Cluster), and counting
the connections they make (a reconnect may mean Redis restarted, or a new primary).

:func:`open_async_client` dispatches on :func:`statedb.urls.target_kind`, one opener per kind;
every client gets this library's timeouts, retry policy and RESP2 (:func:`statedb.client.client_options`).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from statedb.client import COMMAND_RETRIES, client_options, cluster_options, command_backoff
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError
from statedb.urls import parse_sentinel_url, target_kind

OnConnect = Callable[[Any], Awaitable[None]]
# redis-py's Sentinel API and its sync parse_url have no annotations: called through Any.
_SENTINEL: Any = Sentinel
_PARSE_URL: Any = parse_url


def _address(connection: Any) -> tuple[Any, ...]:
    return (getattr(connection, "host", None), getattr(connection, "port", None), getattr(connection, "path", None))


def _seen_before(seen: set[tuple[Any, ...]], connection: Any) -> bool:
    """Whether ``seen`` holds the connection's server already (it does afterwards)."""
    address = _address(connection)
    known = address in seen
    seen.add(address)
    return known


class ConnectionCounter:
    """Counts connections, so that a reconnection is noticed: Redis may have restarted (maybe empty),
    or a failover may have named another primary. The worker compares the count before and after.

    ``per_node``: a cluster client opens a connection to each node as it first needs it, so only a
    second connection to the same node counts.
    """

    def __init__(self, *, per_node: bool = False) -> None:
        self.count = 0
        self.per_node = per_node
        self.seen: set[tuple[Any, ...]] = set()

    async def __call__(self, connection: Any) -> None:
        if not self.per_node or _seen_before(self.seen, connection):
            self.count += 1


class FirstConnectFree:
    """``on_connect`` of a client opened after boot: its first connection (to each node, for a cluster)
    is expected, later ones (reconnects: Redis may have restarted) are counted on ``counter``."""

    def __init__(self, counter: ConnectionCounter) -> None:
        self.counter = counter
        self.connects = 0
        self.seen: set[tuple[Any, ...]] = set()

    async def __call__(self, connection: Any) -> None:
        self.connects += 1
        again = _seen_before(self.seen, connection) if self.counter.per_node else self.connects > 1
        if again:
            self.counter.count += 1


class DeferredCluster:
    """A RedisCluster built at its first use; every attribute is then the client's.

    redis-py's sync RedisCluster connects to the cluster in its constructor: built here at the
    first command instead, a cluster that is down fails that command, where the caller's retries
    and error translation see it. A build that fails is tried again at the next use.
    """

    def __init__(self, build: Callable[[], RedisCluster]) -> None:
        self._build = build
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()  # threads sharing a client (a producer) build it once

    @property
    def built(self) -> bool:
        return self._client is not None

    @property
    def cluster(self) -> RedisCluster:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


Client = Redis | RedisCluster | DeferredCluster


def is_cluster_client(client: object) -> bool:
    return isinstance(client, (RedisCluster, DeferredCluster))


async def cluster_ready(client: RedisCluster | DeferredCluster) -> RedisCluster:
    """The cluster client, built, its slot table loaded (the asyncio client loads it at its first
    command, the sync one when built): nodes can be looked up by key before a pipeline runs."""
    built = client.cluster if isinstance(client, DeferredCluster) else client
    initialize = getattr(built, "initialize", None)
    if initialize is not None:
        await initialize()
    return built


def open_async_client(
    config: StateDBConfig, *, on_connect: OnConnect | None = None, retries: int = COMMAND_RETRIES,
    retry_timeouts: bool = True,
) -> Client:
    """A client for ``config``'s URL, of the kind the URL names (the caller owns and closes it).

    ``on_connect`` runs for every new connection, after its handshake (a :class:`ConnectionCounter`);
    ``retry_timeouts=False`` makes a timeout final (a dead pooled connection is still retried).
    """
    if target_kind(config.url) == "cluster":
        return _open_cluster_client(config, on_connect, retries, retry_timeouts)
    return _open_standalone_client(config, on_connect, retries, retry_timeouts)


def _open_standalone_client(config: StateDBConfig, on_connect: OnConnect | None, retries: int,
                            retry_timeouts: bool) -> Redis:
    extra: dict[str, Any] = {}
    if on_connect is not None:
        hook = on_connect

        # A plain function, whatever ``on_connect`` is: the asyncio client awaits only what
        # iscoroutinefunction recognises, which an instance with an async __call__ is not.
        # It replaces the connection's handshake: run that first.
        async def connect(connection: Any) -> None:
            await connection.on_connect()
            await hook(connection)

        extra["redis_connect_func"] = connect
    extra["retry"] = (Retry(command_backoff(), retries) if retry_timeouts
                      else Retry(command_backoff(), retries, supported_errors=(RedisConnectionError,)))
    options = {**client_options(config), **extra}
    try:
        if target_kind(config.url) == "sentinel":
            return _open_sentinel_client(config, options)
        return Redis.from_url(config.url, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Redis URL {config.safe_url} is not usable: {exc}") from None


def _open_cluster_client(config: StateDBConfig, on_connect: OnConnect | None, retries: int,
                         retry_timeouts: bool) -> DeferredCluster:
    """A RedisCluster on the URL's startup nodes. redis-py retries a command failing with a
    connection error, a timeout or CLUSTERDOWN ``retries`` times, after refreshing its slot table
    (with ``retry_timeouts=False``: never); it follows MOVED and ASK itself."""
    target, options = cluster_options(config)
    retry = Retry(command_backoff(), retries if retry_timeouts else 0)
    node: Any = ClusterNode  # untyped in the sync flavour
    nodes = [node(host, port) for host, port in target.nodes]

    def build() -> RedisCluster:
        try:
            return RedisCluster(startup_nodes=nodes, retry=retry, **options)
        except (ValueError, TypeError) as exc:
            usage = " with on_connect" if on_connect is not None else ""
            raise ConfigurationError(f"Redis Cluster URL {config.safe_url} is not usable{usage}: {exc}") from None

    deferred = DeferredCluster(build)
    if on_connect is not None:
        hook = on_connect

        # Run by the sync RedisCluster after its own handshake. Connections made while it is built
        # (redis-py reads the slot table on one, then drops it) are not reported: the first one
        # made for a command is a node's first.
        async def connect(connection: Any) -> None:
            if deferred.built:
                await hook(connection)

        options["redis_connect_func"] = connect
    return deferred


# -- Sentinel ------------------------------------------------------------------------


class SentinelManagedRedis(Redis):
    """A client of the primary that Sentinel names (it follows failovers: each new connection asks
    the Sentinels); closing it closes the connections to the Sentinels too."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, *args: Any, **kwargs: Any) -> None:
        await super().aclose(*args, **kwargs)
        manager, self.sentinel_manager = self.sentinel_manager, None
        for sentinel in manager.sentinels if manager is not None else ():
            await sentinel.aclose()


def _open_sentinel_client(config: StateDBConfig, options: dict[str, Any]) -> Redis:
    """``Sentinel(...).master_for(service)`` with this library's options for the primary's connections.

    The Sentinels get the socket timeouts and TLS settings, their own credentials, and no
    retry: one that does not answer is skipped for the next at once.
    """
    target = parse_sentinel_url(config.url)
    primary: dict[str, Any] = {**options, **_PARSE_URL(target.primary_url)}  # the URL's options win, as in from_url
    primary.pop("connection_class", None)  # the Sentinel pool picks its own (TLS with ssl=True)
    if target.tls:
        primary["ssl"] = True
    sentinel_options = {name: value for name, value in primary.items() if name.startswith(("socket_", "ssl"))}
    sentinel_options.update(retry=Retry(NoBackoff(), 0), protocol=2, username=target.sentinel_username,
                            password=target.sentinel_password)
    manager = _SENTINEL(list(target.sentinels), sentinel_kwargs=sentinel_options)
    client: SentinelManagedRedis = manager.master_for(target.service_name, redis_class=SentinelManagedRedis,
                                                      **primary)
    client.sentinel_manager = manager
    return client


async def find_primary_again(client: Client) -> None:
    """Ask Sentinel which server is the primary now (a client of another kind: nothing to do).

    After a write fewer replicas acknowledged than required: a primary that lost its replicas
    is often one that a failover just demoted. A new answer drops the idle connections, so
    the next attempt goes to the new primary.
    """
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    if isinstance(pool, SentinelConnectionPool):
        untyped: Any = pool
        await untyped.get_master_address()
