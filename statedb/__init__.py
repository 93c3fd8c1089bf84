"""Async core of celery-redis-statedb: durable revoked-task state in Redis.

This package never imports Celery; the Celery adapter is ``celery_redis_statedb``.
"""

from statedb.config import StateDBConfig, UnavailablePolicy
from statedb.errors import (
    AccessDeniedError,
    ConfigurationError,
    CorruptValueError,
    InvalidInputError,
    RedisUnavailableError,
    StateDataError,
    StateDBError,
    WrongKeyTypeError,
)
from statedb.keys import DEFAULT_KEY_PREFIX, KeySchema, Scope, WorkerKeys
from statedb.operations import StateOperations
from statedb.repository import AsyncStateRepository, open_async_client
from statedb.urls import is_redis_url, mask_url

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "AccessDeniedError",
    "AsyncStateRepository",
    "ConfigurationError",
    "CorruptValueError",
    "InvalidInputError",
    "KeySchema",
    "RedisUnavailableError",
    "Scope",
    "StateDBConfig",
    "StateDBError",
    "StateDataError",
    "StateOperations",
    "UnavailablePolicy",
    "WorkerKeys",
    "WrongKeyTypeError",
    "is_redis_url",
    "mask_url",
    "open_async_client",
]
