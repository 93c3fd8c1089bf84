"""Async core of celery-redis-statedb: durable revoked-task state in Redis.

This package never imports Celery; the Celery adapter is ``celery_redis_statedb``.
"""

from statedb._async.clients import open_async_client
from statedb._async.repository import AsyncStateRepository
from statedb._sync.clients import open_sync_client
from statedb._sync.repository import SyncStateRepository
from statedb.admin import (
    Revocation,
    RevokedSetState,
    inspect_worker,
    inspect_workers,
    iter_revoked,
    list_workers,
    purge_old_revoked,
    restore,
    revoke,
    where_revoked,
)
from statedb.config import StateDBConfig, UnavailablePolicy
from statedb.errors import (
    AccessDeniedError,
    ConfigurationError,
    CorruptValueError,
    EvictionPolicyError,
    InvalidInputError,
    NotDurableError,
    RedisUnavailableError,
    StateDataError,
    StateDBError,
    WrongKeyTypeError,
)
from statedb.keys import DEFAULT_KEY_PREFIX, KeySchema, Scope, WorkerKeys
from statedb.operations import StateOperations
from statedb.stamps_admin import (
    StampsSetState,
    inspect_stamps,
    iter_stamps,
    purge_old_stamps,
    restore_stamps,
    revoke_stamps,
)
from statedb.urls import is_redis_url, mask_url

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "AccessDeniedError",
    "AsyncStateRepository",
    "ConfigurationError",
    "CorruptValueError",
    "EvictionPolicyError",
    "InvalidInputError",
    "KeySchema",
    "NotDurableError",
    "RedisUnavailableError",
    "Revocation",
    "RevokedSetState",
    "Scope",
    "StateDBConfig",
    "StateDBError",
    "StateDataError",
    "StateOperations",
    "StampsSetState",
    "SyncStateRepository",
    "UnavailablePolicy",
    "WorkerKeys",
    "WrongKeyTypeError",
    "inspect_stamps",
    "inspect_worker",
    "inspect_workers",
    "is_redis_url",
    "iter_revoked",
    "iter_stamps",
    "list_workers",
    "mask_url",
    "open_async_client",
    "open_sync_client",
    "purge_old_revoked",
    "purge_old_stamps",
    "restore",
    "restore_stamps",
    "revoke",
    "revoke_stamps",
    "where_revoked",
]
