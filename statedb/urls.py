"""Redis URL validation and masking: the only place URLs are parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from statedb.errors import ConfigurationError

TargetKind = Literal["standalone", "sentinel", "cluster"]
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SUPPORTED_SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
MASK = "***"
_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(?P<key>[^&=;]+)=(?P<value>[^&;]*)")
# Options the library sets itself: a URL must not override them behind its back.
RESERVED_QUERY_OPTIONS = {
    "decode_responses": "this library reads bytes",
    "encoding": "this library reads bytes",
    "encoding_errors": "this library reads bytes",
    "socket_timeout": "use redis_state_socket_timeout",
    "socket_connect_timeout": "use redis_state_connect_timeout",
    "socket_keepalive": "this library sets it",
    "retry_on_timeout": "this library sets its own retry policy",
    "retry_on_error": "this library sets its own retry policy",
    "health_check_interval": "this library sets it",
    "single_connection_client": "this library manages its connections",
}


def is_redis_url(value: object) -> bool:
    """True for a value that selects the Redis statedb (any other is a file path)."""
    if not isinstance(value, str):
        return False
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.lower() in SUPPORTED_SCHEMES


def target_kind(url: str) -> TargetKind:
    """What a (valid) URL names: one server, or a Redis Cluster (``redis+cluster://``)."""
    scheme = url.partition("://")[0].lower()
    return "cluster" if scheme in CLUSTER_SCHEMES else "standalone"


def is_unix_url(url: str) -> bool:
    """True for a ``unix://`` URL (a unix-socket connection: no TCP options)."""
    return url.partition("://")[0].lower() == "unix"


def mask_url(url: str) -> str:
    """The URL with its password and secret query values replaced by ``***``. Never raises.

    ``user:password@`` shows the user; a userinfo without a ``:`` is masked whole,
    since ``redis://SECRET@host`` (a password where the user goes) is a common slip.

    Works on the raw text, not a parse: a password may hold ``#``, ``/`` or ``?``
    that would make a URL parser split it elsewhere and show part of it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url else MASK
    if "@" in rest and not rest.startswith("/"):  # unix:///path@x has no userinfo
        userinfo, _, rest = rest.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        # A userinfo without ':' is most often a password in the user position (redis://SECRET@host):
        # only a separate password lets the user name be shown.
        rest = f"{user}:{MASK}@{rest}" if has_password else f"{MASK}@{rest}"
    head, qmark, query = rest.partition("?")
    if qmark:
        query = _QUERY_PAIR.sub(
            lambda m: f"{m['key']}={MASK}" if _SECRET_QUERY_KEY.search(m["key"]) else m.group(0), query
        )
    return f"{scheme}{sep}{head}{qmark}{query}"


def _check_query(query: dict[str, str], scheme: str, shown: str) -> None:
    """Options a URL may not set, or may only set to sensible values."""
    for option, why in RESERVED_QUERY_OPTIONS.items():
        if option in query:
            raise ConfigurationError(f"Redis URL {shown} sets {option!r}, which is not allowed here: {why}")
    if scheme != "rediss" and any(option.startswith("ssl_") for option in query):
        raise ConfigurationError(f"Redis URL {shown} sets ssl_* options but is not rediss://: use rediss:// for TLS")
    if query.get("ssl_cert_reqs", "required").lower() not in ("none", "optional", "required"):
        raise ConfigurationError(
            f"Redis URL {shown} sets ssl_cert_reqs={query['ssl_cert_reqs']!r}: use none, optional or required"
        )
    if query.get("protocol", "2") not in ("2", "3"):
        raise ConfigurationError(f"Redis URL {shown} sets protocol={query['protocol']!r}: it must be 2 or 3")


def validate_url(url: object) -> str:
    """Return ``url`` if redis-py can use it, else raise ConfigurationError naming the fault."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"Redis URL must be a non-empty string, got {type(url).__name__}")
    shown = mask_url(url)
    if not is_redis_url(url):
        scheme = url.partition("://")[0] if "://" in url else "(none)"
        raise ConfigurationError(
            f"unsupported Redis URL scheme {mask_url(scheme)!r} in {shown}: "
            f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
        )
    if target_kind(url) == "cluster":
        parse_cluster_url(url)
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # The parser's own message may quote part of a password: never show it.
        raise ConfigurationError(
            f"malformed Redis URL {shown}: the port must be a number from 1 to 65535 "
            "(a password with '#', '/', '?' or '@' must be percent-encoded)"
        ) from None
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    _check_query(query, scheme, shown)
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"unix:// URL {shown} names no socket path")
        db_text = query.get("db", "0")
    else:
        if port == 0:
            raise ConfigurationError(f"port 0 is not valid in Redis URL {shown}")
        path_db = parts.path.lstrip("/")
        db_text = query.get("db", path_db or "0")
    if not db_text.isdigit():
        raise ConfigurationError(
            f"database number {db_text!r} in Redis URL {shown} is not a non-negative integer"
        )
    return url


# -- redis+cluster:// -------------------------------------------------------------------

_NODE = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]@,]+))(?::(?P<port>[0-9]*))?$")
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://[user:password@]h1:p1[,h2:p2...][/0][?options]`` URL.

    ``nodes`` are the startup nodes (any one that answers gives the client the whole
    cluster); ``node_url`` is the same URL naming the first node only, with the scheme
    ``redis``/``rediss``: what redis-py's own URL parser reads the credentials, TLS and
    query options from, exactly as for a standalone URL.
    """

    kind: Literal["cluster"]
    nodes: tuple[tuple[str, int], ...]
    node_url: str
    tls: bool


def parse_cluster_url(url: str) -> ClusterURL:
    """The nodes and options of a ``redis+cluster://`` URL; ConfigurationError naming the fault."""
    shown = mask_url(url)
    scheme, _, rest = url.partition("://")
    base = scheme.lower().partition("+")[0]  # redis or rediss
    try:
        parts = urlsplit(f"{base}://{rest}")
    except ValueError:  # an unbalanced '[': the parser's message may quote a password
        raise ConfigurationError(f"malformed Redis Cluster URL {shown}") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for text in hosts.split(","):
        match = _NODE.match(text.strip())
        port_text = match["port"] if match else None
        if match is None or (port_text is not None and not (port_text.isdigit() and 0 < int(port_text) < 65536)):
            raise ConfigurationError(
                f"malformed Redis Cluster URL {shown}: each node must be host:port with a port from 1 to 65535, "
                f"nodes separated by ',' (a password with '#', '/' or '?' must be percent-encoded)"
            )
        nodes.append((match["ipv6"] or match["host"], int(port_text) if port_text else DEFAULT_PORT))
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    _check_query(query, base, shown)
    db_text = query.get("db", parts.path.lstrip("/") or "0")
    if db_text != "0":
        raise ConfigurationError(
            f"Redis Cluster URL {shown} selects database {db_text!r}: a cluster has database 0 only "
            "(drop the /db part, or use /0)"
        )
    host, port = nodes[0]
    first = f"[{host}]" if ":" in host else host
    node_url = f"{base}://{userinfo}{at}{first}:{port}/0" + (f"?{parts.query}" if parts.query else "")
    return ClusterURL("cluster", tuple(dict.fromkeys(nodes)), node_url, base == "rediss")
