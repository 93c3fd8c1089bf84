"""The worker bootstep that replaces Celery's file StateDB when the statedb is a Redis URL."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any, NoReturn

from celery import bootsteps

from celery_redis_statedb.persistence import WorkerStatePersistence
from celery_redis_statedb.settings import SETTINGS, resolve_config
from statedb.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidInputError,
    RedisUnavailableError,
    StateDBError,
)

logger = logging.getLogger("celery_redis_statedb")

CLAIMED_URL_ATTR = "_redis_statedb_url"
# sysexits.h values, spelled out: the os.EX_* names do not exist on Windows.
EX_DATAERR, EX_UNAVAILABLE, EX_CONFIG = 65, 69, 78


class RedisStateDB(bootsteps.StartStopStep):  # type: ignore[misc]
    """Loads the revoked set and clock from Redis at boot and keeps them there."""

    label = "Redis statedb"
    requires = ("celery.worker.components:Timer",)

    def __init__(self, w: Any, **kwargs: Any) -> None:
        self.url: str | None = getattr(w, CLAIMED_URL_ATTR, None)
        self.enabled = bool(self.url)
        self.cli = {s.cli_kwarg: kwargs.get(s.cli_kwarg) for s in SETTINGS if s.cli_kwarg}
        self.migrate_path: str | None = kwargs.get("migrate_statedb")
        super().__init__(w, **kwargs)

    def create(self, w: Any) -> WorkerStatePersistence:
        assert self.url is not None
        try:
            config = resolve_config(self.url, cli=self.cli, conf=w.app.conf, env=os.environ)
            persistence = WorkerStatePersistence(config, w.hostname, revoked=w.state.revoked, clock=w.app.clock)
            persistence.boot()
            if self.migrate_path:
                _migrate_at_boot(persistence, self.migrate_path)
        except StateDBError as exc:
            _stop_worker(w, exc)
        atexit.register(persistence.save)
        return persistence

    def start(self, w: Any) -> None:
        if self.obj is not None:
            self.obj.start(w.timer)

    def stop(self, w: Any) -> None:
        if self.obj is not None:
            self.obj.save()

    terminate = stop


def _migrate_at_boot(persistence: WorkerStatePersistence, path: str) -> None:
    """--migrate-statedb: merge the file into Redis, then into memory. Needs Redis now."""
    from celery_redis_statedb.migration import migrate_file_statedb

    if not persistence.loaded:
        raise RedisUnavailableError(f"cannot migrate {path}: Redis is not reachable yet")
    migrate_file_statedb(path, persistence.repository)  # logs its report's summary line
    persistence.reload()


def _stop_worker(w: Any, exc: StateDBError) -> NoReturn:
    """One clear line, no traceback, then exit; a programmatic WorkController gets the error."""
    from celery.apps.worker import Worker

    if not isinstance(w, Worker):
        raise exc
    if isinstance(exc, RedisUnavailableError):
        code, hint = EX_UNAVAILABLE, " (set redis_state_on_unavailable=degrade to start without it)"
    elif isinstance(exc, (ConfigurationError, AccessDeniedError, InvalidInputError)):
        code, hint = EX_CONFIG, ""
    else:
        code, hint = EX_DATAERR, ""
    name = w.hostname if str(w.hostname).isprintable() else repr(w.hostname)
    logger.critical("redis-statedb: cannot start worker %s: %s%s", name, str(exc).replace("\n", " "), hint)
    raise SystemExit(code) from exc
