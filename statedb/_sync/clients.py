# Generated from statedb/_async/clients.py by `python -m tests.unasync`: edit that file, not this one.
"""Opening clients, and counting the connections they make (a reconnect may mean Redis restarted)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.retry import Retry
from redis.exceptions import ConnectionError as RedisConnectionError

from statedb.client import COMMAND_RETRIES, client_options, command_backoff
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError

OnConnect = Callable[[Any], None]


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
    retry = (Retry(command_backoff(), retries) if retry_timeouts
             else Retry(command_backoff(), retries, supported_errors=(RedisConnectionError,)))
    try:
        return Redis.from_url(config.url, retry=retry, **client_options(config), **extra)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Redis URL {config.safe_url} is not usable: {exc}") from None
