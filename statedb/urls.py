"""Redis URL validation and masking: the only place URLs are parsed."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from statedb.errors import ConfigurationError

SUPPORTED_SCHEMES = ("redis", "rediss", "unix")
MASK = "***"


def is_redis_url(value: object) -> bool:
    """True for a value that selects the Redis statedb (any other is a file path)."""
    if not isinstance(value, str):
        return False
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.lower() in SUPPORTED_SCHEMES


def mask_url(url: str) -> str:
    """The URL with any password (userinfo or ``password=`` query) replaced by ``***``.

    Never raises: a URL too broken to parse is reduced to its scheme.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{hostport}" if has_password else f"{userinfo}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, MASK if k.lower() == "password" else v) for k, v in pairs], safe="*/"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        scheme = url.partition("://")[0] if "://" in url else "?"
        return f"{scheme}://{MASK}"


def validate_url(url: object) -> str:
    """Return ``url`` if redis-py can use it, else raise ConfigurationError naming the fault."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"Redis URL must be a non-empty string, got {type(url).__name__}")
    shown = mask_url(url)
    if not is_redis_url(url):
        scheme = url.partition("://")[0] if "://" in url else "(none)"
        raise ConfigurationError(
            f"unsupported Redis URL scheme {scheme!r} in {shown}: "
            f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis URL {shown}: {exc}") from None
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
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
