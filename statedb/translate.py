"""Turns redis-py exceptions into the library's own errors, naming the key or server."""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio.sentinel import MasterNotFoundError as AsyncMasterNotFoundError
from redis.exceptions import RedisClusterException, RedisError
from redis.sentinel import MasterNotFoundError

from statedb.errors import (
    AccessDeniedError,
    ConfigurationError,
    CorruptValueError,
    RedisUnavailableError,
    StateDataError,
    StateDBError,
    WrongKeyTypeError,
)

_AUTH_MARKERS = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username",
                 # An ACL refusal inside a Lua script (the clock's SET) comes back as a script error:
                 "The user executing the script can't",  # Redis 7.0
                 "ACL failure in script")  # Redis 7.2, Valkey
# Error replies of a server that is failing over, full, loading, read-only or short of replicas: wait,
# do not give up. redis-py turns some of them into classes (and strips the code), the others keep their code.
_TRANSIENT_MARKERS = ("READONLY", "LOADING", "OOM", "MISCONF", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY",
                      "NOREPLICAS", "MOVED", "ASK")
# WAIT sent to a primary demoted since the connection was opened (a Sentinel failover).
_DEMOTED_MARKER = "cannot be used with replica instances"
_TRANSIENT_TYPES: tuple[type[Exception], ...] = tuple(
    getattr(redis_errors, name)
    # ClusterError: CLUSTERDOWN, and redirections past redis-py's limit; AskError: MovedError too.
    for name in ("ReadOnlyError", "BusyLoadingError", "OutOfMemoryError", "TryAgainError", "ClusterError",
                 "MasterDownError", "AskError", "SlotNotCoveredError")
    if hasattr(redis_errors, name)
)
# What a client may raise: redis-py's cluster client raises RedisClusterException (not a RedisError)
# when no node answers, or the slots are not all covered.
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, RedisClusterException)
# A MOVED or ASK reply: the key's slot is served by another node of a Redis Cluster.
_REDIRECT_HINT = ("the key lives on another node of a Redis Cluster (resharding, or a redis:// URL naming one "
                  "node of a cluster: use redis+cluster://)")
# redis-py strips the NOPERM/WRONGPASS codes from these classes: match the types too.
_ACCESS_TYPES: tuple[type[Exception], ...] = tuple(
    getattr(redis_errors, name)
    for name in ("AuthenticationError", "AuthenticationWrongNumberOfArgsError", "NoPermissionError",
                 "AuthorizationError")
    if hasattr(redis_errors, name)
)
CLOCK_CORRUPT_MARKER = "statedb-corrupt-clock"


def _is_transient(exc: BaseException, text: str) -> bool:
    return (isinstance(exc, _TRANSIENT_TYPES) or text.split(" ", 1)[0] in _TRANSIENT_MARKERS
            or _DEMOTED_MARKER in text)


def _is_access_error(exc: BaseException, text: str) -> bool:
    return isinstance(exc, _ACCESS_TYPES) or any(m in text for m in _AUTH_MARKERS)


def translate_exception(  # noqa: PLR0911 (one return per kind of failure)
    exc: BaseException, *, target: str, key: str | None = None
) -> StateDBError:
    """The library error for ``exc``, raised while talking to ``target`` (a masked URL)."""
    if isinstance(exc, StateDBError):
        return exc
    text = str(exc)
    if isinstance(exc, (MasterNotFoundError, AsyncMasterNotFoundError)):
        return _no_primary(text, target)
    if _is_access_error(exc, text):
        return AccessDeniedError(f"Redis at {target} refused access: {text}")
    if isinstance(exc, RedisClusterException) and not isinstance(exc, _TRANSIENT_TYPES):
        return _cluster_error(exc, target)
    if isinstance(exc, redis_errors.AskError):
        return RedisUnavailableError(f"Redis at {target} redirected a command ({type(exc).__name__} {text}): "
                                     f"{_REDIRECT_HINT}")
    if _is_transient(exc, text):
        return RedisUnavailableError(f"Redis at {target} cannot serve us right now: {text}")
    if "CERTIFICATE_VERIFY_FAILED" in text or "WRONG_VERSION_NUMBER" in text:
        # Waiting cannot fix a certificate or a TLS/plain mismatch.
        return ConfigurationError(f"TLS with Redis at {target} failed (check ssl_ca_certs and the scheme): {text}")
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)):
        return RedisUnavailableError(f"cannot reach Redis at {target}: {text or type(exc).__name__}")
    if key is None and isinstance(exc, redis_errors.ResponseError):
        # Raised, not replied: the connection setup (AUTH, SELECT, HELLO) was refused.
        return ConfigurationError(f"Redis at {target} refused the connection setup: {text}")
    if key is not None and isinstance(exc, redis_errors.ResponseError):
        return translate_reply_error(exc, key=key)
    return StateDBError(f"Redis at {target} failed: {type(exc).__name__}: {text}")


def _refusal_within(exc: BaseException) -> BaseException | None:
    """An access refusal among the errors ``exc`` was raised from (redis-py's cluster client wraps a
    refused CLUSTER SLOTS as "Cluster mode is not enabled")."""
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(seen) < 8 and all(link is not other for other in seen):
        if _is_access_error(link, str(link)):
            return link
        seen.append(link)
        link = link.__cause__ or link.__context__
    return None


def _cluster_error(exc: RedisClusterException, target: str) -> StateDBError:
    """redis-py's cluster client could not set itself up or route a command."""
    refused = _refusal_within(exc)
    if refused is not None:
        return AccessDeniedError(f"Redis Cluster at {target} refused access: {refused} (a cluster client also "
                                 f"needs +cluster|slots and +command: see the README, Redis Cluster)")
    if exc.__cause__ is not None:  # why no startup node answered: refused credentials, a TLS mismatch...
        why = translate_exception(exc.__cause__, target=target)
        if isinstance(why, (AccessDeniedError, ConfigurationError)):
            return why
    text = str(exc)
    if "Cluster mode is not enabled" in text:
        return ConfigurationError(f"Redis at {target} is not a Redis Cluster node (cluster mode is not enabled): "
                                  f"use redis:// or rediss:// for a single server")
    if "cannot be connected" in text or "not covered" in text:
        return RedisUnavailableError(f"Redis Cluster at {target} cannot serve us right now: {text}")
    return StateDBError(f"Redis Cluster at {target} failed: {text}")


def _no_primary(text: str, target: str) -> StateDBError:
    """No Sentinel named a primary. redis-py's message lists every Sentinel client it asked,
    a long text: only its head and why are kept (a refusal of the Sentinels' credentials is final)."""
    head, _, detail = text.partition(" : ")
    if "AuthenticationError" in detail or any(marker in detail for marker in _AUTH_MARKERS):
        return AccessDeniedError(f"the Sentinels of {target} refused access (check the sentinel_username and "
                                 f"sentinel_password options): {head}")
    unreachable = detail.count(" - ")
    why = (f"{unreachable} Sentinel{'s' if unreachable != 1 else ''} did not answer" if unreachable
           else "the Sentinels that answered name no healthy primary for it (a failover under way, or a wrong "
                "service name)")
    return RedisUnavailableError(f"no Sentinel of {target} names a primary: {head}; {why}")


def translate_reply_error(exc: Exception, *, key: str | None) -> StateDBError:  # noqa: PLR0911
    """The library error for an error reply to a command on ``key`` (None: a command on no key)."""
    text = str(exc)
    target = "a server command" if key is None else f"key {key!r}"
    if isinstance(exc, redis_errors.AskError) or text.split(" ", 1)[0] in ("MOVED", "ASK"):
        return RedisUnavailableError(f"Redis cannot serve {target} right now: {type(exc).__name__} {text}: "
                                     f"{_REDIRECT_HINT}")
    if _is_transient(exc, text):
        if key is None:
            return RedisUnavailableError(f"Redis cannot serve us right now: {text}")
        return RedisUnavailableError(f"Redis cannot take writes to {key!r} right now: {text}")
    if "syntax error" in text.lower():
        return ConfigurationError(
            f"Redis rejected a command on {target} ({text}): Redis >= 6.2 or Valkey is required (ZADD ... LT)"
        )
    if _is_access_error(exc, text):
        return AccessDeniedError(f"Redis refused access to {target} (check the ACL user's key patterns "
                                 f"and commands): {text}")
    if text.startswith("unknown command"):  # a Sentinel port, most often: it knows no data command
        return ConfigurationError(
            f"the server rejected a command on {target} as unknown ({text}): is the URL naming a Sentinel? "
            f"(use redis+sentinel://host:26379/SERVICE_NAME); Redis >= 6.2 or Valkey is required")
    if key is None:
        return StateDBError(f"Redis rejected {target}: {text}")
    if "WRONGTYPE" in text:
        return WrongKeyTypeError(
            f"Redis key {key!r} holds a value of another type than this library writes "
            f"(check it with TYPE; an old celery-redis-statedb 0.2 blob must be migrated, not read)",
            key=key,
        )
    if CLOCK_CORRUPT_MARKER in text:
        return CorruptValueError(f"Redis key {key!r} does not hold a non-negative integer clock", key=key)
    return StateDataError(f"Redis rejected a command on key {key!r}: {text}", key=key)
