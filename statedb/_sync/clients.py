# Generated from statedb/_async/clients.py by `python -m tests.unasync`: edit that file, not this one.
"""Opening clients, one factory for every kind of URL, and counting the connections they make
(a reconnect may mean Redis restarted, or a new primary).

:func:`open_sync_client` dispatches on :func:`statedb.urls.target_kind`, one opener per kind;
every client gets this library's timeouts, retry policy and RESP2 (:func:`statedb.client.client_options`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from statedb.client import COMMAND_RETRIES, client_options, command_backoff
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError
from statedb.urls import parse_sentinel_url, target_kind

OnConnect = Callable[[Any], None]
# redis-py's Sentinel API and its sync parse_url have no annotations: called through Any.
_SENTINEL: Any = Sentinel
_PARSE_URL: Any = parse_url


class ConnectionCounter:
    """Counts connections made, so a reconnect (a Redis that restarted, maybe empty) is noticed."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, connection: Any) -> None:
        connection.on_connect()
        self.count += 1


class FirstConnectFree:
    """``on_connect`` of a client opened after boot: its first connection is expected, later ones
    (reconnects: Redis may have restarted) are counted on ``counter``."""

    def __init__(self, counter: ConnectionCounter) -> None:
        self.counter, self.connects = counter, 0

    def __call__(self, connection: Any) -> None:
        connection.on_connect()
        self.connects += 1
        if self.connects > 1:
            self.counter.count += 1


def open_sync_client(
    config: StateDBConfig, *, on_connect: OnConnect | None = None, retries: int = COMMAND_RETRIES,
    retry_timeouts: bool = True,
) -> Redis:
    """A client for ``config`` (the caller owns and closes it).

    ``on_connect`` runs for every new connection (a :class:`ConnectionCounter`);
    ``retry_timeouts=False`` makes a timeout final (a dead pooled connection is still retried).
    """
    extra: dict[str, Any] = {}
    if on_connect is not None:
        hook = on_connect

        # A plain function, whatever ``on_connect`` is: the asyncio client awaits only what
        # iscoroutinefunction recognises, which an instance with an async __call__ is not.
        def connect(connection: Any) -> None:
            hook(connection)

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


# -- Sentinel ------------------------------------------------------------------------


class SentinelManagedRedis(Redis):
    """A client of the primary that Sentinel names (it follows failovers: each new connection asks
    the Sentinels); closing it closes the connections to the Sentinels too."""

    sentinel_manager: Sentinel | None = None

    def close(self, *args: Any, **kwargs: Any) -> None:
        super().close(*args, **kwargs)
        manager, self.sentinel_manager = self.sentinel_manager, None
        for sentinel in manager.sentinels if manager is not None else ():
            sentinel.close()


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


def find_primary_again(client: Redis) -> None:
    """Ask Sentinel which server is the primary now (a client of another kind: nothing to do).

    After a write fewer replicas acknowledged than required: a primary that lost its replicas
    is often one that a failover just demoted. A new answer drops the idle connections, so
    the next attempt goes to the new primary.
    """
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        untyped: Any = pool
        untyped.get_master_address()
