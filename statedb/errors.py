"""One error hierarchy for everything the library raises.

Redis errors never leave the repositories untranslated: each is wrapped in one
of these, with the original kept as ``__cause__``. Messages never contain a
password: URLs are always shown through :func:`statedb.urls.mask_url`.
"""

from __future__ import annotations


class StateDBError(Exception):
    """Root of every error raised by celery-redis-statedb."""


class ConfigurationError(StateDBError, ValueError):
    """A setting or URL is malformed or out of range."""


class InvalidInputError(StateDBError, ValueError):
    """A task id, worker name or other argument cannot be stored."""


class RedisUnavailableError(StateDBError):
    """Redis could not be reached, timed out, or is still loading its data."""


class NotDurableError(RedisUnavailableError):
    """Redis applied a write, but fewer replicas (or AOF fsyncs) acknowledged it in time than required
    (``redis_state_min_replicas``, ``redis_state_fsync``): it does not count, and is retried."""


class AccessDeniedError(StateDBError):
    """Redis refused the credentials, or the ACL user lacks a permission."""


class StateDataError(StateDBError):
    """Something stored in Redis is not what this library wrote there."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class WrongKeyTypeError(StateDataError):
    """A key we own holds another Redis type (for example the 0.2 pickled blob)."""


class CorruptValueError(StateDataError):
    """A value we own cannot be parsed (a non-numeric clock, a non-finite score)."""


class EvictionPolicyError(ConfigurationError):
    """The server may evict keys without a TTL (``allkeys-*``): stored revokes could vanish."""
