"""Synchronous twins of the async admin APIs, for scripts, cron, Celery beat and Django admin.

Each resolves the Redis URL the way a worker of ``app`` would (see :func:`statedb_url`)
and the key prefix and scope from ``app.conf`` and the environment, then runs the
async API once with ``anyio.run``. Do not call them from inside a running event loop:
use :mod:`statedb.admin` there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
from celery import Celery

from celery_redis_statedb.control import COMMAND as RESTORE_COMMAND
from celery_redis_statedb.control import PURGE_COMMAND
from celery_redis_statedb.settings import resolve_config
from statedb import admin
from statedb.admin import Progress, Revocation, RevokedSetState
from statedb.commands import BadMembers
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError
from statedb.timeframes import cutoff
from statedb.urls import is_redis_url

T = TypeVar("T")
URL_ENV = "REDIS_STATEDB_URL"
WORKER_STATEDB_ENV = "CELERY_WORKER_STATEDB"  # Celery's own variable for the worker's --statedb


def statedb_url(app: Celery, redis_url: str | None = None) -> str:
    """Explicit URL, else worker_state_db, $CELERY_WORKER_STATEDB, $REDIS_STATEDB_URL, then the broker:
    the first Redis URL."""
    if redis_url:
        return redis_url
    candidates = (app.conf.get("worker_state_db"), os.environ.get(WORKER_STATEDB_ENV), os.environ.get(URL_ENV),
                  app.conf.get("broker_url"))
    for candidate in candidates:
        if is_redis_url(candidate):
            return str(candidate)
    raise ConfigurationError(
        f"no Redis URL for the statedb: pass redis_url, or set worker_state_db or ${URL_ENV} "
        "(the broker is used only when it is Redis)"
    )


def app_config(app: Celery, redis_url: str | None = None) -> StateDBConfig:
    """The configuration a worker of ``app`` would use (prefix, scope), for ``redis_url``."""
    return resolve_config(statedb_url(app, redis_url), conf=app.conf, env=os.environ)


def _run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return anyio.run(partial(function, *args, **kwargs))


def _prefix_option(config: StateDBConfig) -> dict[str, Any]:
    return {"key_prefix": config.key_prefix}


def purge_old_revoked_tasks(
    app: Celery, older_than: timedelta | float | int | str, worker_name: str | None = None,
    redis_url: str | None = None, *, dry_run: bool = False, progress: Progress | None = None,
    broadcast: bool = True,
) -> int:
    """Remove revoked ids older than ``older_than`` from every worker (or one); returns how many.

    Then (unless ``dry_run`` or ``broadcast=False``) live workers are told, so the purged
    ids they still hold in memory stop binding them at once.
    """
    config = app_config(app, redis_url)
    now = _server_now(config)  # the clock the workers stamp revocations with
    result: int = _run(admin.purge_old_revoked, config.url, older_than=older_than, worker_name=worker_name,
                       scope=config.scope, dry_run=dry_run, progress=progress, now=now, **_prefix_option(config))
    if broadcast and not dry_run:
        destination = [worker_name] if worker_name else None
        try:
            app.control.broadcast(PURGE_COMMAND, arguments={"before": cutoff(now, older_than)},
                                  destination=destination, reply=False)
        except Exception as exc:  # kombu's OperationalError, OSError: the broker is not there
            logging.getLogger("celery_redis_statedb").warning(
                "redis-statedb: revoked ids purged in Redis, but live workers could not be told: %s", exc)
        broadcast_purge_stamps(app, older_than, worker_name, scope=config.scope, now=now)
    return result


def _server_now(config: StateDBConfig) -> float:
    from celery_redis_statedb.durable_control import server_time
    from statedb._sync.clients import open_sync_client

    client = open_sync_client(config)
    try:
        return server_time(client, config.safe_url)
    finally:
        client.close()


def list_workers(app: Celery, redis_url: str | None = None) -> list[str]:
    config = app_config(app, redis_url)
    result: list[str] = _run(admin.list_workers, config.url, **_prefix_option(config))
    return result


def inspect_workers(
    app: Celery, workers: Iterable[str | None] | None = None, redis_url: str | None = None,
    *, progress: Progress | None = None,
) -> list[RevokedSetState]:
    config = app_config(app, redis_url)
    result: list[RevokedSetState] = _run(admin.inspect_workers, config.url, workers, scope=config.scope,
                                         progress=progress, **_prefix_option(config))
    return result


def inspect_worker(app: Celery, worker: str | None, redis_url: str | None = None) -> RevokedSetState:
    config = app_config(app, redis_url)
    result: RevokedSetState = _run(admin.inspect_worker, config.url, worker, scope=config.scope,
                                   **_prefix_option(config))
    return result


def revoked_ids(
    app: Celery, worker: str | None, redis_url: str | None = None, *, limit: int | None = None,
    bad: BadMembers | None = None,
) -> list[tuple[str, float]]:
    """(task id, revocation time) of a worker's set (None: the fleet set), newest first (bad members
    raise CorruptValueError, or, given ``bad``, are skipped and counted there)."""
    config = app_config(app, redis_url)

    async def collect() -> list[tuple[str, float]]:
        rows: AsyncIterator[tuple[str, float]] = admin.iter_revoked(
            config.url, worker, scope=config.scope, limit=limit, bad=bad, **_prefix_option(config))
        return [row async for row in rows]

    result: list[tuple[str, float]] = anyio.run(collect)
    return result


def where_revoked(app: Celery, task_id: str, redis_url: str | None = None) -> list[Revocation]:
    config = app_config(app, redis_url)
    result: list[Revocation] = _run(admin.where_revoked, config.url, task_id, **_prefix_option(config))
    return result


def revoke_tasks(
    app: Celery, task_ids: Iterable[str], *, broadcast: bool = True, terminate: bool = False,
    signal: str | None = None, redis_url: str | None = None,
) -> int:
    """Durable revoke: into the fleet set first (read at every boot), then Celery's own broadcast.

    Stored once: the broadcast that follows does not store the ids again, whatever the
    app's control class (a DurableControl would otherwise write them a second time).
    """
    from celery_redis_statedb.durable_control import already_durable, store_revoked_ids

    ids = list(task_ids)
    config = app_config(app, redis_url)
    added = store_revoked_ids(config, ids)
    if broadcast and ids:
        with already_durable():
            app.control.revoke(ids, terminate=terminate, signal=signal)
    return added


@dataclass(frozen=True)
class RestoreResult:
    removed: int
    replies: list[dict[str, Any]]


def restore_tasks(
    app: Celery, task_ids: Iterable[str], *, worker_name: str | None = None, broadcast: bool = True,
    redis_url: str | None = None, reply_timeout: float = 1.0,
) -> RestoreResult:
    """Un-revoke: remove the ids from Redis, then tell live workers to forget them."""
    ids = list(task_ids)
    config = app_config(app, redis_url)
    removed: int = _run(admin.restore, config.url, ids, worker_name=worker_name, scope=config.scope,
                        **_prefix_option(config))
    replies: list[dict[str, Any]] = []
    if broadcast and ids:
        destination = [worker_name] if worker_name else None
        replies = app.control.broadcast(RESTORE_COMMAND, arguments={"task_id": ids}, destination=destination,
                                        reply=True, timeout=reply_timeout) or []
    return RestoreResult(removed, replies)


# -- stamped-header revokes (statedb.stamps_admin) ---------------------------------------


def stamp_rows(
    app: Celery, worker: str | None, redis_url: str | None = None, *, limit: int | None = None,
    bad: BadMembers | None = None,
) -> list[tuple[str, Any, float]]:
    """(header, value, revocation time) of a worker's stamps (None: the fleet's), newest first."""
    from statedb import stamps_admin

    config = app_config(app, redis_url)

    async def collect() -> list[tuple[str, Any, float]]:
        rows = stamps_admin.iter_stamps(config.url, worker, scope=config.scope, limit=limit, bad=bad,
                                        **_prefix_option(config))
        return [row async for row in rows]

    result: list[tuple[str, Any, float]] = anyio.run(collect)
    return result


def inspect_stamps(
    app: Celery, workers: Iterable[str | None] | None = None, redis_url: str | None = None,
    *, progress: Progress | None = None,
) -> list[Any]:
    """Count, oldest and newest of the given workers' stamps sets (None: the fleet's), or of all."""
    from statedb import stamps_admin

    config = app_config(app, redis_url)
    result: list[Any] = _run(stamps_admin.inspect_stamps, config.url, workers, scope=config.scope,
                             progress=progress, **_prefix_option(config))
    return result


def restore_stamps(
    app: Celery, stamps: Iterable[tuple[str, Any]], *, worker_name: str | None = None, broadcast: bool = True,
    redis_url: str | None = None, reply_timeout: float = 1.0,
) -> RestoreResult:
    """Lift stamped-header revokes: remove them from Redis (every stamps set, or one worker's), then
    tell live workers (``statedb_restore_stamps``) to drop them from ``revoked_stamps``."""
    from celery_redis_statedb.stamps import RESTORE_COMMAND as RESTORE_STAMPS_COMMAND
    from statedb import stamps_admin

    pairs = [(header, value) for header, value in stamps]
    config = app_config(app, redis_url)
    removed: int = _run(stamps_admin.restore_stamps, config.url, pairs, worker_name=worker_name,
                        scope=config.scope, **_prefix_option(config))
    replies: list[dict[str, Any]] = []
    if broadcast and pairs:
        destination = [worker_name] if worker_name else None
        replies = app.control.broadcast(RESTORE_STAMPS_COMMAND, arguments={"stamps": [list(p) for p in pairs]},
                                        destination=destination, reply=True, timeout=reply_timeout) or []
    return RestoreResult(removed, replies)


def revoke_stamps(
    app: Celery, stamps: Iterable[tuple[str, Any]], *, redis_url: str | None = None,
) -> int:
    """Producer-side durable stamp revoke into the fleet stamps key (no broadcast: see Celery's
    ``app.control.revoke_by_stamped_headers`` for live workers)."""
    from statedb import stamps_admin

    config = app_config(app, redis_url)
    added: int = _run(stamps_admin.revoke_stamps, config.url, list(stamps), **_prefix_option(config))
    return added


def broadcast_purge_stamps(
    app: Celery, older_than: timedelta | float | int | str, worker_name: str | None = None, *,
    scope: Any = None, dry_run: bool = False, now: float | None = None, reply: bool = False,
    reply_timeout: float = 1.0,
) -> list[dict[str, Any]]:
    """Tell live workers (all, or ``worker_name``) to drop stamps revoked before ``now - older_than``.

    The cutoff is wall-clock time, computed here (just after the purge in Redis). When only one
    worker's set was purged (worker scope), stamps it loaded from the fleet key stay. A broker that
    cannot be reached is logged, not raised: the purge in Redis is done, and workers that missed the
    broadcast drop the purged stamps at their next boot.
    """
    from celery_redis_statedb.stamps import PURGE_COMMAND
    from statedb.keys import Scope

    if dry_run:
        return []
    cut = cutoff(time.time() if now is None else now, older_than)
    fleet = worker_name is None or Scope(scope or Scope.WORKER) is Scope.SHARED
    destination = [worker_name] if worker_name else None
    try:
        replies: list[dict[str, Any]] = app.control.broadcast(
            PURGE_COMMAND, arguments={"cutoff": cut, "fleet": fleet}, destination=destination, reply=reply,
            timeout=reply_timeout) or []
    except Exception as exc:  # kombu's OperationalError, OSError: the broker is not there
        logging.getLogger("celery_redis_statedb").warning(
            "redis-statedb: stamped-header revokes purged in Redis, but live workers could not be told: %s", exc)
        return []
    return replies
