"""Turns redis-py exceptions into the library's own errors, naming the key or server."""

from __future__ import annotations

from redis import exceptions as redis_errors

from statedb.errors import (
    AccessDeniedError,
    CorruptValueError,
    RedisUnavailableError,
    StateDataError,
    StateDBError,
    WrongKeyTypeError,
)

_AUTH_MARKERS = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username")
CLOCK_CORRUPT_MARKER = "statedb-corrupt-clock"


def translate_exception(exc: BaseException, *, target: str, key: str | None = None) -> StateDBError:
    """The library error for ``exc``, raised while talking to ``target`` (a masked URL)."""
    if isinstance(exc, StateDBError):
        return exc
    text = str(exc)
    if isinstance(exc, redis_errors.AuthenticationError) or any(m in text for m in _AUTH_MARKERS):
        return AccessDeniedError(f"Redis at {target} refused access: {text}")
    if isinstance(exc, redis_errors.BusyLoadingError):
        return RedisUnavailableError(f"Redis at {target} is still loading its data: {text}")
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)):
        return RedisUnavailableError(f"cannot reach Redis at {target}: {text or type(exc).__name__}")
    if key is not None and isinstance(exc, redis_errors.ResponseError):
        return translate_reply_error(exc, key=key)
    return StateDBError(f"Redis at {target} failed: {type(exc).__name__}: {text}")


def translate_reply_error(exc: Exception, *, key: str) -> StateDBError:
    """The library error for an error reply to a command on ``key``."""
    text = str(exc)
    if "WRONGTYPE" in text:
        return WrongKeyTypeError(
            f"Redis key {key!r} holds a value of another type than this library writes "
            f"(check it with TYPE; an old celery-redis-statedb 0.2 blob must be migrated, not read)",
            key=key,
        )
    if CLOCK_CORRUPT_MARKER in text:
        return CorruptValueError(f"Redis key {key!r} does not hold a non-negative integer clock", key=key)
    if any(m in text for m in _AUTH_MARKERS):
        return AccessDeniedError(f"Redis refused access to key {key!r}: {text}")
    return StateDataError(f"Redis rejected a command on key {key!r}: {text}", key=key)
