"""Redis URL validation and masking: the only place URLs are parsed.

Three kinds of URL: one server (``redis://``, ``rediss://``, ``unix://``), a Sentinel-managed
primary (``redis+sentinel://``, ``rediss+sentinel://`` and kombu's ``sentinel://``; see
:func:`parse_sentinel_url`) and a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``; see
:func:`parse_cluster_url`). :func:`target_kind` says which; the client factory
(``statedb._async.clients``) opens one client per kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from statedb.errors import ConfigurationError

STANDALONE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel", "sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SUPPORTED_SCHEMES = (*STANDALONE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
TargetKind = Literal["standalone", "sentinel", "cluster"]
MASK = "***"
_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)
# A query value runs to the next '&' (Python's query parser splits on '&' only: a ';' is part of it); a
# ';' is also read as a separator (older parsers did), so a value is masked whichever way it is read.
_QUERY_PAIRS = (re.compile(r"(?P<key>[^&=]+)=(?P<value>[^&]*)"), re.compile(r"(?P<key>[^&=;]+)=(?P<value>[^&;]*)"))
# Where kombu's list of Sentinels splits: a ';' that starts another sentinel:// URL.
_KOMBU_PART = re.compile(r";(?=sentinel://)", re.IGNORECASE)
_ENCODE_HINT = "a password with '#', '/', '?' or '@' must be percent-encoded"
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


def url_scheme(url: str) -> str:
    """The scheme of ``url``, lower case ("" without one)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def is_unix_url(url: str) -> bool:
    """True for a ``unix://`` URL (a unix-socket connection: no TCP options)."""
    return url_scheme(url) == "unix"


def target_kind(url: str) -> TargetKind:
    """What ``url`` (a valid Redis URL) names: one server, a primary that Sentinel names, or a Redis Cluster."""
    scheme = url_scheme(url)
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    return "cluster" if scheme in CLUSTER_SCHEMES else "standalone"


def mask_url(url: str) -> str:
    """The URL with its password and secret query values replaced by ``***``. Never raises.

    ``user:password@`` shows the user; a userinfo without a ``:`` is masked whole,
    since ``redis://SECRET@host`` (a password where the user goes) is a common slip.

    Works on the raw text, not a parse: a password may hold ``#``, ``/`` or ``?``
    that would make a URL parser split it elsewhere and show part of it. kombu's
    ``sentinel://h1;sentinel://h2`` is masked one ``sentinel://`` part at a time.
    """
    parts = _KOMBU_PART.split(url)
    if len(parts) > 1:
        return ";".join(map(_mask_one, parts))
    return _mask_one(url)


def _mask_one(url: str) -> str:
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
        for pairs in _QUERY_PAIRS:
            query = pairs.sub(
                lambda m: f"{m['key']}={MASK}" if _SECRET_QUERY_KEY.search(m["key"]) else m.group(0), query
            )
    return f"{scheme}{sep}{head}{qmark}{query}"


def _check_query(query: dict[str, str], tls: bool, shown: str, tls_scheme: str = "rediss") -> None:
    """Options a URL may not set, or may only set to sensible values."""
    for option, why in RESERVED_QUERY_OPTIONS.items():
        if option in query:
            raise ConfigurationError(f"Redis URL {shown} sets {option!r}, which is not allowed here: {why}")
    if not tls and any(option.startswith("ssl_") for option in query):
        raise ConfigurationError(
            f"Redis URL {shown} sets ssl_* options but is not {tls_scheme}://: use {tls_scheme}:// for TLS")
    if query.get("ssl_cert_reqs", "required").lower() not in ("none", "optional", "required"):
        raise ConfigurationError(
            f"Redis URL {shown} sets ssl_cert_reqs={query['ssl_cert_reqs']!r}: use none, optional or required"
        )
    if query.get("protocol", "2") not in ("2", "3"):
        raise ConfigurationError(f"Redis URL {shown} sets protocol={query['protocol']!r}: it must be 2 or 3")


def validate_url(url: object, *, master_name: str | None = None) -> str:
    """Return ``url`` if redis-py can use it, else raise ConfigurationError naming the fault.

    ``master_name``: the Sentinel service of a kombu ``sentinel://`` URL without a ``master_name`` option.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"Redis URL must be a non-empty string, got {type(url).__name__}")
    shown = mask_url(url)
    if not is_redis_url(url):
        scheme = url.partition("://")[0] if "://" in url else "(none)"
        raise ConfigurationError(
            f"unsupported Redis URL scheme {mask_url(scheme)!r} in {shown}: "
            f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
        )
    kind = target_kind(url)
    if kind == "sentinel":
        parse_sentinel_url(url, master_name=master_name)
        return url
    if kind == "cluster":
        parse_cluster_url(url)
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # The parser's own message may quote part of a password: never show it.
        raise ConfigurationError(f"malformed Redis URL {shown}: the port must be a number from 1 to 65535 "
                                 f"({_ENCODE_HINT})") from None
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    _check_query(query, scheme == "rediss", shown)
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"unix:// URL {shown} names no socket path")
        db_text = query.get("db", "0")
    else:
        if port == 0:
            raise ConfigurationError(f"port 0 is not valid in Redis URL {shown}")
        path_db = parts.path.lstrip("/")
        db_text = query.get("db", path_db or "0")
    _check_db(db_text, shown)
    return url


def _is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes '²' and '٣', which ``int`` refuses or reads otherwise."""
    return text.isascii() and text.isdigit()


def _check_db(db_text: str, shown: str) -> None:
    if "@" in db_text:  # a path holding '@' may hold a password that was not percent-encoded: quote nothing
        raise ConfigurationError(f"malformed Redis URL {shown}: the path holds a '@' ({_ENCODE_HINT})")
    if not _is_decimal(db_text):
        raise ConfigurationError(
            f"database number {db_text!r} in Redis URL {shown} is not a non-negative integer"
        )


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
        if match is None or (port_text is not None and not (_is_decimal(port_text) and 0 < int(port_text) < 65536)):
            raise ConfigurationError(
                f"malformed Redis Cluster URL {shown}: each node must be host:port with a port from 1 to 65535, "
                f"nodes separated by ',' (a password with '#', '/' or '?' must be percent-encoded)"
            )
        nodes.append((match["ipv6"] or match["host"], int(port_text) if port_text else DEFAULT_PORT))
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    _check_query(query, base == "rediss", shown, tls_scheme="rediss+cluster")
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


# -- Sentinel ------------------------------------------------------------------------

DEFAULT_SENTINEL_PORT = 26379
KOMBU_SENTINEL_SCHEME = "sentinel"
MASTER_NAME_OPTION = "master_name"  # kombu's name for the service (a transport option there)
SENTINEL_AUTH_OPTIONS = ("sentinel_username", "sentinel_password")
_PORT_MAX = 65535


@dataclass(frozen=True)
class SentinelTarget:
    """What a Sentinel URL names: the Sentinels to ask, the service, and how to reach its primary.

    ``primary_url`` holds the primary's credentials, database and options as a one-server URL
    with no host (``redis://[user:pass@]/db?options``, ``rediss://`` for TLS), so redis-py reads
    them exactly as it reads a plain URL's. ``sentinel_username``/``sentinel_password``
    authenticate to the Sentinels themselves (their ``requirepass`` is their own).
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    tls: bool
    primary_url: str = field(repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Part:
    """One ``[userinfo@]hosts[/path][?query]`` of a Sentinel URL, split on the raw text."""

    userinfo: str
    hosts: tuple[tuple[str, int], ...]
    path: list[str]  # the path's segments (a leading '/' removed; [] without a path)
    query: str


def parse_sentinel_url(url: str, *, master_name: str | None = None) -> SentinelTarget:
    """The Sentinels, service and primary settings of a Sentinel URL; ConfigurationError naming the fault.

    - ``redis+sentinel://[user:pass@]h1[:26379][,h2[:port]...]/service_name[/db]`` (``rediss+sentinel://``
      for TLS to the Sentinels and the primary), the grammar of limits, docket, Prefect and redisvl;
    - kombu's ``sentinel://[user:pass@]h1[:26379];sentinel://h2[:port][/db]``, the service from a
      ``master_name`` query option or ``master_name`` (the ``redis_state_master_name`` setting),
      so a Celery broker URL can be reused as it is.

    ``user:pass@`` authenticates to the primary (as in a ``redis://`` URL); the Sentinels' own
    credentials come from the ``sentinel_username``/``sentinel_password`` query options.
    """
    shown = mask_url(url)
    scheme = url_scheme(url)
    if scheme == KOMBU_SENTINEL_SCHEME:
        userinfo, hosts, service, db, query = _kombu_parts(url, shown, master_name)
        tls = False
    else:
        part = _split_part(url.partition("://")[2], shown)
        if not part.path or not part.path[0]:
            raise ConfigurationError(
                f"Sentinel URL {shown} names no service: write {scheme}://host[:port][,host[:port]...]/"
                "SERVICE_NAME[/db]")
        if len(part.path) > 2:
            raise ConfigurationError(f"Sentinel URL {shown} has too many path segments: "
                                     "/SERVICE_NAME[/db] expected")
        service = unquote(part.path[0])
        if master_name and master_name != service:
            raise ConfigurationError(f"Sentinel URL {shown} names service {service!r} but the master name setting "
                                     f"(redis_state_master_name) is {master_name!r}: drop one or make them agree")
        userinfo, hosts, query = part.userinfo, part.hosts, part.query
        db = part.path[1] if len(part.path) == 2 and part.path[1] else None
        tls = scheme == "rediss+sentinel"
    options = dict(parse_qsl(query, keep_blank_values=True))
    _check_query(options, tls, shown, tls_scheme="rediss+sentinel")
    if scheme != KOMBU_SENTINEL_SCHEME and MASTER_NAME_OPTION in options:
        raise ConfigurationError(f"Sentinel URL {shown} sets {MASTER_NAME_OPTION!r}: the service name is the "
                                 f"URL's path ({scheme}://hosts/SERVICE_NAME)")
    unknown = [o for o in options if o.startswith("sentinel_") and o not in SENTINEL_AUTH_OPTIONS]
    if unknown:
        raise ConfigurationError(f"Sentinel URL {shown} sets {unknown[0]!r}: the Sentinel options are "
                                 f"{', '.join(SENTINEL_AUTH_OPTIONS)}")
    _check_db(options.get("db", db or "0"), shown)
    if not service.strip() or any(ch.isspace() or not ch.isprintable() for ch in service):
        raise ConfigurationError(f"Sentinel URL {shown} names service {service!r}: a name without spaces "
                                 "or control characters is expected")
    if _is_decimal(service):
        raise ConfigurationError(f"Sentinel URL {shown} names service {service!r}, a number: the path is "
                                 "/SERVICE_NAME[/db] (the service name first, then the database)")
    kept = "&".join(pair for pair in query.split("&")
                    if pair and pair.partition("=")[0] not in (*SENTINEL_AUTH_OPTIONS, MASTER_NAME_OPTION))
    primary = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}/{db or ''}"
    return SentinelTarget(
        sentinels=hosts, service_name=service, tls=tls, primary_url=f"{primary}?{kept}" if kept else primary,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def with_master_name(url: str, master_name: str | None) -> str:
    """A kombu ``sentinel://`` URL that names its service (``?master_name=``), so that it stands alone.

    Any other URL, or one that names its service already, is returned as it is (a service
    given both ways must agree: :func:`parse_sentinel_url` says so).
    """
    return _with_kombu_options(url, {MASTER_NAME_OPTION: master_name} if master_name else {})


def with_sentinel_auth(url: str, username: str | None, password: str | None) -> str:
    """A kombu ``sentinel://`` URL carrying the Sentinels' own credentials as its
    ``sentinel_username``/``sentinel_password`` options (kombu keeps them apart, in
    ``broker_transport_options['sentinel_kwargs']``), unless it sets either option itself.
    """
    given = {name: value for name, value in zip(SENTINEL_AUTH_OPTIONS, (username, password), strict=True) if value}
    return _with_kombu_options(url, given, unless=SENTINEL_AUTH_OPTIONS)


def _with_kombu_options(url: str, options: Mapping[str, str], *, unless: tuple[str, ...] = ()) -> str:
    """``url`` with ``options`` added to its query, if it is kombu's ``sentinel://`` form and none of
    them (nor of ``unless``) is set in any of its parts already, even empty."""
    if not options or url_scheme(url) != KOMBU_SENTINEL_SCHEME:
        return url
    parts = _KOMBU_PART.split(url)
    if any(name in dict(parse_qsl(part.partition("?")[2], keep_blank_values=True))
           for part in parts for name in (*options, *unless)):
        return url
    added = "&".join(f"{name}={quote(value, safe='')}" for name, value in options.items())
    return f"{url}{'&' if '?' in parts[-1] else '?'}{added}"


def _kombu_parts(url: str, shown: str, master_name: str | None
                 ) -> tuple[str, tuple[tuple[str, int], ...], str, str | None, str]:
    """(userinfo, sentinels, service, db, query) of kombu's ``sentinel://a;sentinel://b/0?...``.

    kombu reads the credentials and database of the first part only; here they may be
    written on any part, and must agree where written twice.
    """
    hosts: list[tuple[str, int]] = []
    userinfos: set[str] = set()
    dbs: set[str] = set()
    queries: list[str] = []
    for raw in url.split(";"):
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() != KOMBU_SENTINEL_SCHEME:
            raise ConfigurationError(f"Sentinel URL {shown}: each ';'-separated part must be "
                                     "sentinel://[user:pass@]host[:port] (kombu's form)")
        part = _split_part(rest, shown)
        if len(part.hosts) != 1:
            raise ConfigurationError(f"Sentinel URL {shown}: a sentinel:// part names one host; separate hosts "
                                     "with ';sentinel://' (or use redis+sentinel://h1,h2/SERVICE_NAME)")
        if len(part.path) > 1:
            raise ConfigurationError(f"Sentinel URL {shown}: a sentinel:// part's path is the database "
                                     "number alone (the service comes from ?master_name=)")
        hosts.extend(part.hosts)
        userinfos.update({part.userinfo} if part.userinfo else set())
        dbs.update({part.path[0]} if part.path and part.path[0] else set())
        queries.extend([part.query] if part.query else [])
    for what, values in (("credentials", userinfos), ("database numbers", dbs)):
        if len(values) > 1:
            raise ConfigurationError(f"Sentinel URL {shown} gives different {what} in its parts: write them once")
    query = "&".join(queries)
    given = [value for key, value in parse_qsl(query, keep_blank_values=True) if key == MASTER_NAME_OPTION]
    if len(set(given)) > 1:
        raise ConfigurationError(f"Sentinel URL {shown} gives different {MASTER_NAME_OPTION} values")
    service = given[0] if given else master_name
    if not service:
        raise ConfigurationError(
            f"Sentinel URL {shown} names no service: add ?{MASTER_NAME_OPTION}=NAME, or set "
            "redis_state_master_name (CELERY_REDIS_STATE_MASTER_NAME)")
    if master_name and master_name != service:
        raise ConfigurationError(f"Sentinel URL {shown} names service {service!r} but the master name setting "
                                 f"(redis_state_master_name) is {master_name!r}: drop one or make them agree")
    return next(iter(userinfos), ""), tuple(hosts), service, next(iter(dbs), None), query


def _split_part(rest: str, shown: str) -> _Part:
    """``[userinfo@]h1[:port][,h2[:port]...][/path][?query]`` (the text after ``scheme://``)."""
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "#" in tail:
        raise ConfigurationError(f"Sentinel URL {shown} has a '#' ({_ENCODE_HINT})")
    userinfo, _, hostlist = netloc.rpartition("@")
    try:
        hosts = tuple(_sentinel_host(text, shown) for text in hostlist.split(","))
    except ConfigurationError:
        if "@" in tail:  # the host list may be part of a password holding '/' or '?': quote nothing of it
            raise ConfigurationError(f"malformed Sentinel URL {shown} ({_ENCODE_HINT})") from None
        raise
    path, _, query = tail.partition("?")
    return _Part(userinfo, hosts, path[1:].split("/") if path else [], query)


def _sentinel_host(text: str, shown: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (default port 26379)."""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigurationError(f"Sentinel URL {shown} has a malformed IPv6 host {text!r}")
        has_port, port_text = bool(after), after[1:]
    else:
        host, colon, port_text = text.partition(":")
        has_port = bool(colon)
    if not host:
        raise ConfigurationError(f"Sentinel URL {shown} names an empty Sentinel host "
                                 "(hosts are separated by ',' and need a name)")
    if not has_port:
        return host, DEFAULT_SENTINEL_PORT
    if not _is_decimal(port_text) or not 0 < int(port_text) <= _PORT_MAX:
        raise ConfigurationError(f"Sentinel URL {shown} gives Sentinel host {host!r} the port {port_text!r}: "
                                 f"a number from 1 to {_PORT_MAX} is expected")
    return host, int(port_text)
