"""One error hierarchy for everything the library raises.

Two branches tell a caller whether retrying can help (an admin backend maps them to
HTTP 4xx and 5xx):

- :class:`RequestError`: the request or the configuration is wrong; retrying the same
  call will not help (4xx): :class:`ConfigurationError`, :class:`InvalidInputError`,
  :class:`UnknownWorkerError`.
- :class:`ServiceError`: Redis could not do it (5xx): :class:`RedisUnavailableError`,
  :class:`AccessDeniedError`, :class:`StateDataError` and its subclasses.

Redis errors never leave the repositories untranslated: each is wrapped in one
of these, with the original kept as ``__cause__``. Messages never contain a
password: URLs are always shown through :func:`statedb.urls.mask_url`.
"""

from __future__ import annotations


class StateDBError(Exception):
    """Root of every error raised by celery-redis-statedb."""


class RequestError(StateDBError):
    """The request or the configuration is wrong: retrying the same call will not help (HTTP 4xx)."""


class ServiceError(StateDBError):
    """Redis could not do what was asked: it may work later, or once Redis is repaired (HTTP 5xx)."""


class ConfigurationError(RequestError, ValueError):
    """A setting or URL is malformed or out of range."""


class InvalidInputError(RequestError, ValueError):
    """A task id, worker name or other argument cannot be stored."""


class UnknownWorkerError(InvalidInputError):
    """No key of this worker exists under the prefix (a typo, another prefix, a worker never run)."""

    def __init__(self, worker: str, prefix: str) -> None:
        super().__init__(f"no state for worker {_plain(worker)} under prefix {_plain(prefix)}")
        self.worker, self.prefix = worker, prefix


def _plain(text: str) -> str:
    """Printable text as it is; anything else (spaces at an end, control characters) quoted."""
    return text if text and text.isprintable() and text.strip() == text else repr(text)


class RedisUnavailableError(ServiceError):
    """Redis could not be reached, timed out, or is still loading its data."""


class NotDurableError(RedisUnavailableError):
    """Redis applied a write, but fewer replicas (or AOF fsyncs) acknowledged it in time than required
    (``redis_state_min_replicas``, ``redis_state_fsync``): it does not count, and is retried."""


class AccessDeniedError(ServiceError):
    """Redis refused the credentials, or the ACL user lacks a permission."""


class StateDataError(ServiceError):
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
