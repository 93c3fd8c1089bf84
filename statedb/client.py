"""Client settings shared by the async core and the sync adapter."""

from __future__ import annotations

from typing import Any

from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import parse_url

from statedb.config import StateDBConfig
from statedb.urls import ClusterURL, is_unix_url, parse_cluster_url


def client_options(config: StateDBConfig) -> dict[str, Any]:
    """Keyword arguments for ``from_url`` (sync or async), minus the Retry object.

    Every command gets one immediate retry on a fresh connection, which covers a
    pooled connection that a Redis restart left dead; longer outages surface at
    once as errors, so a caller is never blocked beyond the socket timeouts.

    RESP2, whatever redis-py's default: redis-py 8 speaks RESP3 and, to keep the
    legacy reply shapes, re-encodes every ZRANGE score to text and parses it back
    in Python, for every id read at boot; RESP2 is the shape redis-py 5-7 use.

    TCP keepalive only for TCP: redis-py's unix-socket connection classes take no
    ``socket_keepalive`` and fail with a TypeError at the first command.
    """
    options: dict[str, Any] = {
        "protocol": 2,
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.socket_connect_timeout,
        "health_check_interval": 0,
        "decode_responses": False,
    }
    if not is_unix_url(config.url):
        options["socket_keepalive"] = True
    return options


def cluster_options(config: StateDBConfig) -> tuple[ClusterURL, dict[str, Any]]:
    """The startup nodes and the keyword arguments (minus Retry and nodes) of a RedisCluster, sync or
    async, for a ``redis+cluster://`` URL: :func:`client_options`, then what the URL sets (credentials,
    TLS, query options), read by redis-py's own URL parser and merged as its ``from_url`` does."""
    target = parse_cluster_url(config.url)
    from_url: dict[str, Any] = parse_url(target.node_url)  # type: ignore[no-untyped-call]
    for name in ("host", "port", "db"):
        from_url.pop(name, None)
    options = client_options(config)
    if from_url.pop("connection_class", None) is not None:  # rediss: redis-py's SSLConnection
        options["ssl"] = True
    options.update(from_url)
    return target, options


def command_backoff() -> NoBackoff:
    return NoBackoff()


COMMAND_RETRIES = 1


def boot_backoff(config: StateDBConfig) -> ExponentialBackoff:
    return ExponentialBackoff(cap=config.retry_backoff_cap, base=config.retry_backoff_base)
