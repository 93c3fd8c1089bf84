"""The admin dashboard of a Celery app: :func:`statedb.dashboard.make_router` on the app's Redis, key
prefix and scope (as its workers resolve them), with its live workers: their ``statedb_status`` in the
workers table, and Celery's broadcasts after a revoke, restore or purge made on the page.

    from celery_redis_statedb.dashboard import make_router
    api.include_router(make_router(celery_app, dependencies=[Depends(admin_only)]), prefix="/statedb")

Broadcasts go through the broker with Celery's blocking client: they run in a worker thread, never on
the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from anyio import to_thread
from celery import Celery
from fastapi import APIRouter
from fastapi.params import Depends

from celery_redis_statedb.admin import SyncStateAdmin
from celery_redis_statedb.health import metric_samples, metrics_text, worker_statuses
from statedb.admin import RestoreReport, StateAdmin
from statedb.dashboard import LiveWorkers
from statedb.dashboard import make_router as make_core_router
from statedb.dashboard.router import StatusReplies
from statedb.errors import StateDBError


def make_router(app: Celery, *, redis_url: str | None = None, dependencies: Sequence[Depends] = (),
                read_only: bool = False, status_timeout: float = 1.0) -> APIRouter:
    """The dashboard for ``app``'s workers (``redis_url`` overrides the URL its workers use)."""
    bound = SyncStateAdmin.for_app(app, redis_url)
    return make_core_router(bound.config.url, key_prefix=bound.config.key_prefix, scope=bound.config.scope,
                            dependencies=dependencies, read_only=read_only,
                            live=live_workers(bound, status_timeout=status_timeout),
                            in_memory_expiry=bound.in_memory_expiry)


def live_workers(bound: SyncStateAdmin, *, status_timeout: float = 1.0) -> LiveWorkers:
    """What the dashboard asks of, and tells, the live workers of ``bound``'s app."""

    async def status() -> StatusReplies:
        return await to_thread.run_sync(partial(worker_statuses, bound, timeout=status_timeout))

    async def revoked(task_ids: Sequence[str]) -> None:
        await to_thread.run_sync(partial(bound.tell_revoked, task_ids))

    async def restored(report: RestoreReport, worker: str | None) -> None:
        await to_thread.run_sync(partial(bound.tell_restored, report, worker))

    async def purged(cut: float, worker: str | None) -> None:
        await to_thread.run_sync(bound.tell_purged, cut, worker)

    async def metrics(admin: StateAdmin) -> str:
        try:
            now, states, redis_up = await admin.server_time(), await admin.inspect_workers(), True
        except StateDBError:
            now, states, redis_up = time.time(), [], False
        try:
            statuses: dict[str, Any] = dict(await status())
        except StateDBError:
            statuses = {}
        return metrics_text(metric_samples(states, statuses, now, redis_up))

    return LiveWorkers(status=status, revoked=revoked, restored=restored, purged=purged, metrics=metrics)
