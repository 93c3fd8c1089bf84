"""Celery adapter of celery-redis-statedb: revoked tasks and the clock kept in Redis.

``celery -A app worker --statedb=redis://host:6379/0`` is all it takes once the
package is installed; ``install_redis_statedb(app)`` does the same from code.
"""

from celery_redis_statedb.admin import (
    RestoreResult,
    SyncStateAdmin,
    broadcast_purge_stamps,
    inspect_stamps,
    inspect_worker,
    inspect_workers,
    list_workers,
    purge_old_revoked_tasks,
    restore_stamps,
    restore_tasks,
    revoke_stamps,
    revoke_tasks,
    revoked_ids,
    stamp_rows,
    statedb_url,
    where_revoked,
)
from celery_redis_statedb.bootstep import RedisStateDB
from celery_redis_statedb.install import install_redis_statedb
from celery_redis_statedb.persistence import WorkerStatePersistence
from celery_redis_statedb.settings import SETTINGS, resolve_config
from celery_redis_statedb.version import installed_version
from statedb import (
    FLEET,
    AccessDeniedError,
    ConfigurationError,
    CorruptValueError,
    InvalidInputError,
    RedisUnavailableError,
    RequestError,
    Scope,
    ServiceError,
    StateDataError,
    StateDBConfig,
    StateDBError,
    SyncStateRepository,
    UnknownWorkerError,
    WrongKeyTypeError,
    open_sync_client,
)

__version__ = installed_version()

__all__ = [
    "FLEET",
    "SETTINGS",
    "AccessDeniedError",
    "ConfigurationError",
    "CorruptValueError",
    "InvalidInputError",
    "RedisStateDB",
    "RedisUnavailableError",
    "RequestError",
    "RestoreResult",
    "Scope",
    "ServiceError",
    "StateDBConfig",
    "StateDBError",
    "StateDataError",
    "SyncStateAdmin",
    "SyncStateRepository",
    "UnknownWorkerError",
    "WorkerStatePersistence",
    "WrongKeyTypeError",
    "broadcast_purge_stamps",
    "inspect_stamps",
    "inspect_worker",
    "inspect_workers",
    "install_redis_statedb",
    "list_workers",
    "open_sync_client",
    "purge_old_revoked_tasks",
    "resolve_config",
    "restore_stamps",
    "restore_tasks",
    "revoke_stamps",
    "revoke_tasks",
    "revoked_ids",
    "stamp_rows",
    "statedb_url",
    "where_revoked",
]
