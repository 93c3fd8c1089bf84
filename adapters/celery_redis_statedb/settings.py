"""Builds a :class:`statedb.StateDBConfig` from the CLI, ``app.conf`` and the environment.

Precedence, for every setting: command line > ``app.conf`` > environment > default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import Enum
from typing import Any, Literal, overload

from statedb.config import StateDBConfig, UnavailablePolicy
from statedb.errors import ConfigurationError, InvalidInputError
from statedb.keys import Scope
from statedb.timeframes import parse_duration
from statedb.urls import (
    KOMBU_SENTINEL_SCHEME,
    is_redis_url,
    mask_url,
    parse_sentinel_url,
    url_scheme,
    validate_url,
    with_master_name,
    with_sentinel_auth,
)

NO_LIMIT = ("0", "none", "no", "off", "never", "inf", "infinite")


def _number(text: object) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    try:
        return float(str(text).strip())
    except ValueError:
        raise ValueError("expected a number") from None


def _horizon(value: object) -> float | None:
    """A duration (``30d``, ``12h``, seconds); ``0`` or ``none`` for no limit."""
    if value is None or (isinstance(value, str) and value.strip().lower() in NO_LIMIT):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) or None
    try:
        return parse_duration(str(value)) or None
    except InvalidInputError:
        raise ValueError("expected a duration such as 30d, 12h or 3600, or 0/none for no limit") from None


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _boolean(value: object) -> bool:
    """A yes/no setting: a bool, 1/0, or true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError("expected true or false (also 1/0, yes/no, on/off)")


def _text(value: object) -> str:
    return str(value).strip()


def _choice(enum_type: type[Enum], what: str) -> Callable[[object], Any]:
    """A parser accepting one of ``enum_type``'s values (as they are written: lower case)."""

    def parse(value: object) -> Any:
        text = value.value if isinstance(value, enum_type) else str(value).strip()
        try:
            return enum_type(text)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in enum_type)
            raise ValueError(f"{what} must be one of {allowed}") from None

    return parse


def _count(value: object) -> int:
    """A whole number of zero or more (an int, or its decimal text)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
        raise ValueError("expected a whole number, zero or more")
    return int(text)


@dataclass(frozen=True)
class Setting:
    """One user-facing setting and the config field it feeds."""

    field: str
    conf_key: str
    env_var: str
    option: str | None
    parse: Callable[[object], Any]
    help: str

    @property
    def cli_kwarg(self) -> str | None:
        return None if self.option is None else self.option.lstrip("-").replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("key_prefix", "redis_state_key_prefix", "CELERY_REDIS_STATE_KEY_PREFIX",
            "--redis-state-key-prefix", _text, "Prefix of every Redis key (default celery:worker:state:)."),
    Setting("revoke_expires", "redis_state_ttl", "CELERY_REDIS_STATE_TTL",
            "--redis-state-ttl", _number,
            "Seconds a revoked id stays in worker memory (Celery's REVOKE_EXPIRES); Redis keeps it."),
    Setting("horizon", "redis_state_horizon", "CELERY_REDIS_STATE_HORIZON",
            "--redis-state-horizon", _horizon,
            "How long after its revocation a stored revoke binds workers: 30d, 12h, seconds; 0/none: no limit "
            "(the default: until purged or restored)."),
    Setting("scope", "redis_state_scope", "CELERY_REDIS_STATE_SCOPE",
            "--redis-state-scope", _choice(Scope, "scope"),
            "worker: one revoked set per hostname; shared: one for the fleet."),
    Setting("on_unavailable", "redis_state_on_unavailable", "CELERY_REDIS_STATE_ON_UNAVAILABLE",
            "--redis-state-on-unavailable", _choice(UnavailablePolicy, "on_unavailable"),
            "Redis down at boot: fail (default) or degrade."),
    Setting("boot_timeout", "redis_state_boot_timeout", "CELERY_REDIS_STATE_BOOT_TIMEOUT",
            "--redis-state-boot-timeout", _number, "Seconds to keep retrying Redis at boot (default 30)."),
    Setting("socket_timeout", "redis_state_socket_timeout", "CELERY_REDIS_STATE_SOCKET_TIMEOUT",
            None, _number, "Seconds one Redis command may take (default 2)."),
    Setting("socket_connect_timeout", "redis_state_connect_timeout", "CELERY_REDIS_STATE_CONNECT_TIMEOUT",
            None, _number, "Seconds a connection attempt may take (default 2)."),
    Setting("write_budget", "redis_state_write_budget", "CELERY_REDIS_STATE_WRITE_BUDGET",
            None, _number, "Seconds a revoke's write to Redis may take before the revoke is answered anyway, "
            "its ids left to the timer (default 0.5)."),
    Setting("clock_interval", "redis_state_clock_interval", "CELERY_REDIS_STATE_CLOCK_INTERVAL",
            None, _number, "Seconds between clock saves and data-loss checks (default 10)."),
    Setting("accept_eviction", "redis_state_accept_eviction", "CELERY_REDIS_STATE_ACCEPT_EVICTION",
            None, _boolean,
            "Start even when Redis may evict keys without a TTL (maxmemory-policy allkeys-*): stored revokes can "
            "then vanish; the worker warns and writes back what it holds (default false: refuse to start)."),
    Setting("master_name", "redis_state_master_name", "CELERY_REDIS_STATE_MASTER_NAME", None, _text,
            "Sentinel service of a kombu sentinel:// URL without ?master_name= (default: the broker's "
            "broker_transport_options['master_name'])."),
    Setting("min_replicas", "redis_state_min_replicas", "CELERY_REDIS_STATE_MIN_REPLICAS", None, _count,
            "Replicas that must acknowledge a write (WAIT) before it counts; fewer: the ids stay pending and are "
            "retried (default 0: the primary's reply is enough)."),
    Setting("replica_timeout", "redis_state_replica_timeout", "CELERY_REDIS_STATE_REPLICA_TIMEOUT", None, _number,
            "Seconds a write waits for the replicas (and the fsync) it needs (default 0.1)."),
    Setting("fsync", "redis_state_fsync", "CELERY_REDIS_STATE_FSYNC", None, _boolean,
            "A write counts once in the primary's AOF on disk (WAITAOF: Redis >= 7.2 or Valkey, appendonly yes), "
            "and in that of redis_state_min_replicas replicas (default false)."),
)


def raw_value(setting: Setting, cli: Mapping[str, Any], conf: Mapping[str, Any], env: Mapping[str, str]
              ) -> tuple[Any, str] | None:
    """(the value as given, where it came from) by precedence: CLI > app.conf > env; None if unset."""
    kwarg = setting.cli_kwarg
    if kwarg is not None and cli.get(kwarg) is not None:
        return cli[kwarg], setting.option or kwarg
    if conf.get(setting.conf_key) is not None:
        return conf[setting.conf_key], f"app.conf.{setting.conf_key}"
    if env.get(setting.env_var, "").strip():
        return env[setting.env_var], f"environment variable {setting.env_var}"
    return None


def resolve_config(
    url: str,
    *,
    cli: Mapping[str, Any] | None = None,
    conf: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[Any, str]] | None = None,
) -> StateDBConfig:
    """The configuration for ``url``; a bad value raises ConfigurationError naming its source and what
    is accepted.

    ``overrides`` maps a field to (value, where it came from): an option of another command (the
    admin CLI's ``--key-prefix``) or an argument, above every other source (None values are unset).
    """
    validate_url(with_master_name(url, "service"))  # a kombu URL's service may be a setting, read below
    values: dict[str, Any] = {}
    picked: dict[str, tuple[Any, str]] = {}
    for setting in SETTINGS:
        chosen = (overrides or {}).get(setting.field)
        found = chosen if chosen is not None and chosen[0] is not None else raw_value(
            setting, cli or {}, conf or {}, env or {})
        if found is None:
            continue
        raw, source = found
        try:
            values[setting.field] = setting.parse(raw)
        except (TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) and str(exc) else "expected a number"
            raise ConfigurationError(f"{source}={raw!r} is not valid: {reason}") from None
        picked[setting.field] = found
    if "master_name" not in values:
        broker_name = _broker_master_name(url, conf or {})
        if broker_name:
            values["master_name"] = broker_name
    url = with_sentinel_auth(url, *_broker_sentinel_auth(url, conf or {}))
    try:
        return StateDBConfig(url=url, **values)
    except ConfigurationError:
        service = {"master_name": values["master_name"]} if "master_name" in values else {}
        for name, (raw, source) in picked.items():  # which one: each checked alone names its source
            try:
                StateDBConfig(url=url, **{**service, name: values[name]})
            except ConfigurationError as exc:
                raise ConfigurationError(f"{source}={raw!r} is not valid: {exc}") from None
        raise


# -- which Redis: the statedb URL as a worker of the app finds it ------------------------------

WORKER_STATEDB_ENV = "CELERY_WORKER_STATEDB"  # Celery's own variable for the worker's --statedb
WORKER_STATEDB_CONF = "worker_state_db"
URL_ENV = "REDIS_STATEDB_URL"  # this library's, for producers and admin tools that are not workers


@dataclass(frozen=True)
class URLChoice:
    """The statedb URL and where it came from (``broker``: no statedb URL is configured anywhere)."""

    url: str = dataclass_field(repr=False)  # may hold a password: shown only through mask_url
    source: str
    broker: bool = False


def _expanded(value: str, source: str, node: str | None) -> str:
    """``value`` as ``celery worker`` expands it (``%%``, ``%h``, ``%n``...: Celery's node_format)."""
    if "%" not in value:
        return value
    from celery.utils.nodenames import default_nodename, node_format

    try:
        return str(node_format(value, node or default_nodename(None)))
    except ValueError:  # Celery's own message quotes the whole value, password included
        how = ("write a literal % as %%" if percent_escape() else
               "this Celery has no %% escape: pass such a URL with --redis-statedb, --url or $REDIS_STATEDB_URL")
        raise ConfigurationError(
            f"{source} holds a '%' sequence celery worker cannot expand ({how}): {mask_url(value)}") from None


@functools.cache
def percent_escape() -> bool:
    """Whether ``celery worker`` reads ``%%`` as a literal ``%`` (Celery 5.3's node_format has no escape)."""
    from celery.utils.nodenames import node_format

    try:
        return bool(node_format("%%", "celery@host") == "%")
    except ValueError:
        return False


def _checked(url: str, source: str) -> URLChoice:
    try:
        # kombu's sentinel:// may name its service in a setting, read with the others: the rest is checked here
        validate_url(with_master_name(url, "service"))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    return URLChoice(url, source)


@overload
def choose_url(conf: Mapping[str, Any], env: Mapping[str, str], *, explicit: str | None = ...,
               explicit_label: str = ..., node: str | None = ..., allow_broker: bool = ...,
               required: Literal[True] = ...) -> URLChoice: ...
@overload
def choose_url(conf: Mapping[str, Any], env: Mapping[str, str], *, explicit: str | None = ...,
               explicit_label: str = ..., node: str | None = ..., allow_broker: bool = ...,
               required: bool) -> URLChoice | None: ...
def choose_url(conf: Mapping[str, Any], env: Mapping[str, str], *, explicit: str | None = None,
               explicit_label: str = "redis_url", node: str | None = None, allow_broker: bool = True,
               required: bool = True) -> URLChoice | None:
    """The statedb URL a worker of the app uses, and its source.

    ``explicit`` (an option or argument) first; then what ``celery worker`` itself reads: its
    ``--statedb`` option's variable ``$CELERY_WORKER_STATEDB`` before ``app.conf.worker_state_db``
    (Celery's order), expanded as the worker expands it (``%%`` is ``%``; ``%h``/``%n`` with
    ``node``, by default this host's worker name); then ``$REDIS_STATEDB_URL``; the broker only when
    none of them is set and it is Redis (``allow_broker``). A worker value that is a file path means
    Celery's own file statedb: never silently replaced by the broker. No URL at all raises
    ConfigurationError naming where it was looked for (None if not ``required``); a malformed one
    always raises, naming its source.
    """
    if explicit:
        return _checked(explicit, explicit_label)
    file_statedb: tuple[str, str] | None = None
    for value, source in ((env.get(WORKER_STATEDB_ENV), f"environment variable {WORKER_STATEDB_ENV}"),
                          (conf.get(WORKER_STATEDB_CONF), f"app.conf.{WORKER_STATEDB_CONF}")):
        if value is None or not str(value).strip():
            continue
        text = _expanded(str(value).strip(), source, node)
        if is_redis_url(text):
            return _checked(text, source)
        file_statedb = (source, text)
        break  # celery worker reads the first one set: the other is not the workers' statedb
    fallback = env.get(URL_ENV, "").strip()
    if fallback:
        if not is_redis_url(fallback):
            raise ConfigurationError(f"environment variable {URL_ENV}={mask_url(fallback)!r} is not valid: "
                                     f"use a Redis URL (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://...)")
        return _checked(fallback, f"environment variable {URL_ENV}")
    searched = f"{explicit_label}, ${WORKER_STATEDB_ENV}, app.conf.{WORKER_STATEDB_CONF} or ${URL_ENV}"
    if file_statedb is not None:
        if not required:
            return None
        source, text = file_statedb
        raise ConfigurationError(
            f"no Redis URL for the statedb: {source} is {mask_url(text)!r}, a file path (Celery's own file "
            f"statedb); give the Redis URL with {explicit_label} or ${URL_ENV}")
    broker = conf.get("broker_url")
    if allow_broker and is_redis_url(broker):
        return URLChoice(str(broker), "app.conf.broker_url (the broker: no statedb URL is configured in "
                                      f"{searched})", broker=True)
    if not required:
        return None
    raise ConfigurationError(
        f"no Redis URL for the statedb: set one with {searched} "
        + ("(the broker is used only when it is Redis and none of them is set)" if allow_broker else ""))


def _broker_sentinel_auth(url: str, conf: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(username, password) of kombu's ``broker_transport_options['sentinel_kwargs']``: the Sentinels'
    own credentials, for a kombu ``sentinel://`` statedb URL whose Sentinels are the broker's (the
    broker's URL reused): never sent to other Sentinels."""
    if url_scheme(url) != KOMBU_SENTINEL_SCHEME:
        return None, None
    options = conf.get("broker_transport_options")
    given = options.get("sentinel_kwargs") if isinstance(options, Mapping) else None
    if not isinstance(given, Mapping) or not _sentinels(url) <= _broker_sentinels(conf):
        return None, None
    found: list[str | None] = []
    for name in ("username", "password"):
        value = given.get(name)
        if value is not None and not (isinstance(value, str) and _encodable(value)):
            raise ConfigurationError(f"broker_transport_options['sentinel_kwargs'][{name!r}] must be text, got "
                                     + (f"{type(value).__name__}" if not isinstance(value, str) else
                                        "a string that is not valid Unicode"))
        found.append(value or None)
    return found[0], found[1]


def _sentinels(url: str) -> set[tuple[str, int]]:
    return {(host.lower(), port) for host, port in parse_sentinel_url(with_master_name(url, "service")).sentinels}


def _broker_sentinels(conf: Mapping[str, Any]) -> set[tuple[str, int]]:
    """The Sentinels of the broker URL Celery uses (``$CELERY_BROKER_URL`` before app.conf's, as Celery's
    own ``conf.broker_url`` does; a plain mapping's ``broker_url`` key)."""
    broker = getattr(conf, "broker_url", None) or conf.get("broker_url")
    if not isinstance(broker, str) or url_scheme(broker) != KOMBU_SENTINEL_SCHEME:
        return set()
    try:
        return _sentinels(broker)
    except (ConfigurationError, ValueError):  # not this setting's to judge: kombu says what is wrong with it
        return set()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _broker_master_name(url: str, conf: Mapping[str, Any]) -> str | None:
    """kombu's ``broker_transport_options['master_name']``, for a kombu ``sentinel://`` statedb URL
    (the broker's URL reused as it is)."""
    if url_scheme(url) != KOMBU_SENTINEL_SCHEME:
        return None
    options = conf.get("broker_transport_options")
    name = options.get("master_name") if isinstance(options, Mapping) else None
    return name.strip() if isinstance(name, str) and name.strip() else None
