"""Builds a :class:`statedb.StateDBConfig` from the CLI, ``app.conf`` and the environment.

Precedence, for every setting: command line > ``app.conf`` > environment > default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError, InvalidInputError
from statedb.timeframes import parse_duration
from statedb.urls import KOMBU_SENTINEL_SCHEME, url_scheme

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


def _count(value: object) -> int:
    """A whole number of zero or more (an int, or its decimal text)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
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
            "--redis-state-scope", _text, "worker: one revoked set per hostname; shared: one for the fleet."),
    Setting("on_unavailable", "redis_state_on_unavailable", "CELERY_REDIS_STATE_ON_UNAVAILABLE",
            "--redis-state-on-unavailable", _text, "Redis down at boot: fail (default) or degrade."),
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
) -> StateDBConfig:
    """The configuration for ``url``; a bad value raises ConfigurationError naming its source."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        picked = raw_value(setting, cli or {}, conf or {}, env or {})
        if picked is None:
            continue
        raw, source = picked
        try:
            values[setting.field] = setting.parse(raw)
        except (TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) and str(exc) else "expected a number"
            raise ConfigurationError(f"{source}={raw!r} is not valid: {reason}") from None
    if "master_name" not in values:
        broker_name = _broker_master_name(url, conf or {})
        if broker_name:
            values["master_name"] = broker_name
    return StateDBConfig(url=url, **values)


def _broker_master_name(url: str, conf: Mapping[str, Any]) -> str | None:
    """kombu's ``broker_transport_options['master_name']``, for a kombu ``sentinel://`` statedb URL
    (the broker's URL reused as it is)."""
    if url_scheme(url) != KOMBU_SENTINEL_SCHEME:
        return None
    options = conf.get("broker_transport_options")
    name = options.get("master_name") if isinstance(options, Mapping) else None
    return name.strip() if isinstance(name, str) and name.strip() else None
