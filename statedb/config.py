"""The validated configuration shared by the async core and the Celery adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from statedb.durability import Durability
from statedb.errors import ConfigurationError, InvalidInputError
from statedb.keys import DEFAULT_KEY_PREFIX, KeySchema, Scope
from statedb.urls import mask_url, validate_url, with_master_name


class UnavailablePolicy(str, Enum):
    """What a worker does when Redis cannot be reached at boot."""

    FAIL = "fail"
    DEGRADE = "degrade"


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise ConfigurationError(f"{name} must be finite and {bound}, got {value!r}")
    return number


def _positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, "
                                 f"got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _enum(enum_type: type[Any], name: str, value: object) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum_type)
        raise ConfigurationError(f"{name} must be one of {allowed}, got {value!r}") from None


@dataclass(frozen=True)
class StateDBConfig:
    """Everything needed to reach and lay out the stored state.

    ``revoke_expires`` and ``revokes_max`` bound Celery's own in-memory set (``None``
    keeps Celery's limits); ``horizon`` is how long after its revocation a stored
    revoke keeps binding workers (``None``: until purged or restored). Nothing here
    ever expires data in Redis.

    ``master_name`` names the Sentinel service of a kombu ``sentinel://`` URL that has no
    ``master_name`` option (the URL then carries it: ``config.url`` stands alone).
    ``min_replicas``/``replica_timeout``/``fsync``: a worker's write counts once that many
    replicas acknowledged it (and, with ``fsync``, once it is in the AOF on disk) within the
    timeout, see :mod:`statedb.durability`.
    """

    url: str = field(repr=False)
    key_prefix: str = DEFAULT_KEY_PREFIX
    scope: Scope = Scope.WORKER
    revoke_expires: float | None = None
    revokes_max: int | None = None
    horizon: float | None = None
    socket_timeout: float = 2.0
    socket_connect_timeout: float = 2.0
    # Seconds a write-through (a revoke before its reply) may take; past it the ids wait for the timer.
    write_budget: float = 0.5
    boot_timeout: float = 30.0
    retry_backoff_base: float = 0.25
    retry_backoff_cap: float = 5.0
    on_unavailable: UnavailablePolicy = UnavailablePolicy.FAIL
    flush_interval: float = 1.0
    clock_interval: float = 10.0
    load_chunk_size: int = 10_000
    write_chunk_size: int = 5_000
    accept_eviction: bool = False
    master_name: str | None = None
    min_replicas: int = 0
    replica_timeout: float = 0.1
    fsync: bool = False

    def __post_init__(self) -> None:
        if self.master_name is not None and (not isinstance(self.master_name, str) or not self.master_name.strip()):
            raise ConfigurationError(f"master_name must be a non-empty string, got {self.master_name!r}")
        validate_url(self.url, master_name=self.master_name)
        object.__setattr__(self, "url", with_master_name(self.url, self.master_name))
        try:
            KeySchema(self.key_prefix)
        except InvalidInputError as exc:
            raise ConfigurationError(str(exc)) from None
        object.__setattr__(self, "scope", _enum(Scope, "scope", self.scope))
        object.__setattr__(
            self, "on_unavailable", _enum(UnavailablePolicy, "on_unavailable", self.on_unavailable)
        )
        if self.revoke_expires is not None:
            object.__setattr__(
                self, "revoke_expires", _positive("revoke_expires", self.revoke_expires, allow_zero=True)
            )
        if self.revokes_max is not None:
            _positive_int("revokes_max", self.revokes_max)
        if self.horizon is not None:
            horizon = _positive("horizon", self.horizon, allow_zero=True)
            object.__setattr__(self, "horizon", horizon or None)  # 0: no limit
        for name in ("socket_timeout", "socket_connect_timeout", "write_budget", "retry_backoff_base",
                     "retry_backoff_cap", "flush_interval", "clock_interval"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        object.__setattr__(self, "boot_timeout", _positive("boot_timeout", self.boot_timeout, allow_zero=True))
        _positive_int("load_chunk_size", self.load_chunk_size)
        _positive_int("write_chunk_size", self.write_chunk_size)
        _flag("accept_eviction", self.accept_eviction)
        self._check_durability()

    def _check_durability(self) -> None:
        _positive_int("min_replicas", self.min_replicas, allow_zero=True)
        object.__setattr__(self, "replica_timeout", _positive("replica_timeout", self.replica_timeout))
        _flag("fsync", self.fsync)
        limit = min(self.write_budget, self.socket_timeout)
        if self.durability is not None and self.replica_timeout >= limit:
            raise ConfigurationError(
                f"replica_timeout (redis_state_replica_timeout) is {self.replica_timeout:g} s: it must be shorter "
                f"than the write budget and the socket timeout ({limit:g} s), or a missing replica would time out "
                "every write")

    @property
    def durability(self) -> Durability | None:
        """What a write must reach before it counts (None: the primary's reply is enough)."""
        return Durability.of(self.min_replicas, self.replica_timeout, self.fsync)

    @property
    def safe_url(self) -> str:
        """The URL with its password masked: the only form ever logged or shown."""
        return mask_url(self.url)

    @property
    def keys(self) -> KeySchema:
        return KeySchema(self.key_prefix)

    def __repr__(self) -> str:
        return (
            f"StateDBConfig(url={self.safe_url!r}, key_prefix={self.key_prefix!r}, "
            f"scope={self.scope.value!r}, on_unavailable={self.on_unavailable.value!r})"
        )
