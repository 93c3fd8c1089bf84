"""The admin API for scripts, cron, Celery beat and Django admin: synchronous, bound to a Celery app.

:class:`SyncStateAdmin` resolves the Redis URL, key prefix and scope exactly as a worker of
the app does (:func:`celery_redis_statedb.settings.choose_url`, then
:func:`~celery_redis_statedb.settings.resolve_config`), runs :class:`statedb.admin.StateAdmin`
once per call with ``anyio.run``, and tells live workers what changed (Celery's broadcasts):
``statedb_restore`` after a restore, ``statedb_purge`` after a purge, Celery's revoke after a
revoke; ``forget`` and ``prune`` ping the workers first and never touch a live one::

    admin = SyncStateAdmin.for_app(app)
    report = admin.purge_old_revoked(older_than="30d")

The functions below it are the shortcuts of earlier versions, kept with their signatures. Do not call any of
this from inside a running event loop: use :mod:`statedb.admin` there.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import anyio
from celery import Celery

from celery_redis_statedb.control import COMMAND as RESTORE_COMMAND
from celery_redis_statedb.control import PURGE_COMMAND
from celery_redis_statedb.settings import URLChoice, choose_url, resolve_config
from statedb.admin import (
    FLEET,
    ForgetReport,
    Progress,
    PruneReport,
    PurgeReport,
    RestoreReport,
    Result,
    Revocation,
    RevokedSetState,
    RevokeReport,
    StateAdmin,
    WorkerState,
)
from statedb.commands import BadMembers
from statedb.config import StateDBConfig
from statedb.errors import ServiceError
from statedb.keys import Scope
from statedb.stamps_admin import StampsSetState
from statedb.timeframes import cutoff

T = TypeVar("T")
logger = logging.getLogger("celery_redis_statedb")


@dataclass(frozen=True)
class RestoreResult(Result):
    """A restore: how many removals in Redis, the live workers' answers to the broadcast, and where
    the ids were (``report``, with the note on the fleet set for a one-worker restore)."""

    removed: int
    replies: list[dict[str, Any]]
    report: RestoreReport | None = None


@dataclass(frozen=True)
class SyncStateAdmin:
    """Every admin operation for the workers of one app: bound once, called from sync code."""

    app: Celery
    config: StateDBConfig
    url_source: URLChoice | None = field(default=None, compare=False)

    @classmethod
    def for_app(cls, app: Celery, redis_url: str | None = None, *, key_prefix: str | None = None,
                scope: Scope | str | None = None, node: str | None = None,
                labels: tuple[str, str, str] = ("redis_url", "key_prefix", "scope")) -> SyncStateAdmin:
        """Bound to ``app``: the URL, prefix and scope a worker of the app uses (arguments first; see
        :func:`~celery_redis_statedb.settings.choose_url`). ``labels`` name the three arguments in
        errors (the CLI passes its option names); ``node`` is the worker name ``%h``/``%n`` expand to."""
        url_label, prefix_label, scope_label = labels
        choice = choose_url(app.conf, os.environ, explicit=redis_url, explicit_label=url_label, node=node)
        config = resolve_config(choice.url, conf=app.conf, env=os.environ,
                                overrides={"key_prefix": (key_prefix, prefix_label), "scope": (scope, scope_label)})
        return cls(app, config, choice)

    @property
    def in_memory_expiry(self) -> float:
        """How long the workers keep a revoked id in Celery's own set: ``redis_state_ttl``, else
        Celery's ``REVOKE_EXPIRES`` ($CELERY_WORKER_REVOKE_EXPIRES, 3 h by default); 0 turns the
        expiry off (infinite). A purge of younger ids is refused unless forced (the CLI and the dashboard)."""
        if self.config.revoke_expires is not None:
            expiry = self.config.revoke_expires
        else:
            from celery.worker.state import REVOKE_EXPIRES

            expiry = float(REVOKE_EXPIRES)
        return expiry or math.inf

    # -- plumbing --------------------------------------------------------------------------

    @property
    def _shared(self) -> bool:
        """The shared scope: every worker's set is the fleet set."""
        return self.config.scope is Scope.SHARED

    def _admin(self) -> StateAdmin:
        return StateAdmin(self.config.url, key_prefix=self.config.key_prefix, scope=self.config.scope)

    def call(self, work: Callable[[StateAdmin], Awaitable[T]]) -> T:
        """Run ``work(admin)`` on a StateAdmin of its own (opened and closed here)."""
        async def main() -> T:
            async with self._admin() as admin:
                return await work(admin)

        return anyio.run(main)

    def _collect(self, rows: Callable[[StateAdmin], AsyncIterator[T]]) -> list[T]:
        async def gather(admin: StateAdmin) -> list[T]:
            return [row async for row in rows(admin)]

        return self.call(gather)

    def _broadcast(self, command: str, arguments: dict[str, Any], worker: str | None, *, reply: bool,
                   timeout: float, what: str) -> list[dict[str, Any]]:
        """Tell live workers (all, or ``worker``); a broker that cannot be reached is logged, not raised:
        Redis is already changed, and workers that missed it pick the change up at their next boot."""
        destination = [worker] if worker and worker != FLEET else None
        try:
            replies: list[dict[str, Any]] = self.app.control.broadcast(
                command, arguments=arguments, destination=destination, reply=reply, timeout=timeout) or []
        except Exception as exc:  # kombu's OperationalError, OSError: the broker is not there
            logger.warning("redis-statedb: %s in Redis, but live workers could not be told: %s", what, exc)
            return []
        return replies

    def live_workers(self, timeout: float = 1.0) -> list[str]:
        """The workers that answer Celery's ping within ``timeout``; ServiceError if the broker cannot be
        asked (then no worker can be known not to be alive)."""
        try:
            replies = self.app.control.ping(timeout=timeout) or []
        except Exception as exc:  # kombu's OperationalError, OSError
            raise ServiceError(f"cannot ask which workers are alive (Celery's ping through the broker failed: "
                               f"{exc}); nothing was removed") from exc
        return sorted(name for reply in replies for name in reply)

    def server_time(self) -> float:
        return self.call(lambda admin: admin.server_time())

    # -- reads -----------------------------------------------------------------------------

    def list_workers(self) -> list[str]:
        return self.call(lambda admin: admin.list_workers())

    def inspect_workers(self, workers: Iterable[str | None] | None = None, *,
                        progress: Progress | None = None) -> list[WorkerState]:
        return self.call(lambda admin: admin.inspect_workers(workers, progress=progress))

    def inspect_worker(self, worker: str | None) -> WorkerState:
        return self.call(lambda admin: admin.inspect_worker(worker))

    def iter_revoked(self, worker: str | None, *, limit: int | None = None,
                     bad: BadMembers | None = None) -> list[Revocation]:
        """The revocations of a worker's set (None or FLEET: the fleet set), newest first."""
        return self._collect(lambda admin: admin.iter_revoked(worker, limit=limit, bad=bad))

    def revoked_rows(self, worker: str | None, *, limit: int | None = None,
                     bad: BadMembers | None = None) -> list[tuple[str, float]]:
        return self._collect(lambda admin: admin.revoked_rows(worker, limit=limit, bad=bad))

    def where_revoked(self, task_id: str) -> list[Revocation]:
        return self.call(lambda admin: admin.where_revoked(task_id))

    def inspect_stamps(self, workers: Iterable[str | None] | None = None, *,
                       progress: Progress | None = None) -> list[StampsSetState]:
        return self.call(lambda admin: admin.stamps.inspect_stamps(workers, progress=progress))

    def stamp_rows(self, worker: str | None, *, limit: int | None = None,
                   bad: BadMembers | None = None) -> list[tuple[str, Any, float]]:
        return self._collect(lambda admin: admin.stamps.iter_stamps(worker, limit=limit, bad=bad))

    # -- changes, then the broadcast ----------------------------------------------------------

    def revoke(self, task_ids: Iterable[str], *, broadcast: bool = True, terminate: bool = False,
               signal: str | None = None) -> RevokeReport:
        """Durable revoke: into the fleet set first (read at every boot), then Celery's own broadcast,
        which does not store the ids a second time, whatever the app's control class."""
        ids = list(task_ids)
        report = self.call(lambda admin: admin.revoke(ids))
        if broadcast:
            self.tell_revoked(report.task_ids, terminate=terminate, signal=signal)
        return report

    def tell_revoked(self, task_ids: Iterable[str], *, terminate: bool = False, signal: str | None = None) -> None:
        """Celery's own revoke broadcast for ids stored already: it does not store them a second time,
        whatever the app's control class."""
        from celery_redis_statedb.durable_control import already_durable

        ids = list(task_ids)
        if ids:
            with already_durable():
                self.app.control.revoke(ids, terminate=terminate, signal=signal)

    def restore(self, task_ids: Iterable[str], *, worker: str | None = None, broadcast: bool = True,
                reply_timeout: float = 1.0) -> RestoreResult:
        """Un-revoke: remove the ids from Redis (every set, or ``worker``'s and the fleet set: see
        :meth:`statedb.admin.StateAdmin.restore`), then tell live workers (all, or ``worker``) to forget them."""
        ids = list(task_ids)
        report = self.call(lambda admin: admin.restore(ids, worker=worker))
        replies = self.tell_restored(report, worker, reply_timeout=reply_timeout) if broadcast else []
        return RestoreResult(report.removed, replies, report)

    def tell_restored(self, report: RestoreReport, worker: str | None, *, reply_timeout: float = 1.0
                      ) -> list[dict[str, Any]]:
        """Tell live workers about a restore done in Redis (all, or ``worker``); their replies."""
        if not report.task_ids:
            return []
        arguments: dict[str, Any] = {"task_id": list(report.task_ids)}
        destination = worker
        if worker == FLEET or (worker is not None and (report.fleet_removed or self._shared)):
            # The fleet entry is gone: every worker bound only through it is told (``worker`` lifts
            # them all), or their loss checks would write it back to the fleet set. Workers whose own
            # sets hold the ids stay bound.
            arguments.update(fleet=True, worker=worker)
            destination = None
        return self._broadcast(RESTORE_COMMAND, arguments, destination, reply=True, timeout=reply_timeout,
                               what=f"{len(report.task_ids)} ids restored")

    def purge_old_revoked(self, older_than: timedelta | float | int | str, worker: str | None = None, *,
                          dry_run: bool = False, progress: Progress | None = None, broadcast: bool = True,
                          ) -> PurgeReport:
        """Remove ids (and stamped-header revokes) revoked more than ``older_than`` ago, by the server's
        clock, from every set or ``worker``'s; then (unless ``dry_run`` or ``broadcast=False``) live
        workers drop the purged ids they hold, so they stop binding at once."""
        report = self.call(lambda admin: admin.purge_old_revoked(older_than=older_than, worker=worker,
                                                                 dry_run=dry_run, progress=progress))
        if broadcast and not dry_run:
            self.tell_purged(report.cutoff.timestamp(), worker)
        return report

    def tell_purged(self, cut: float, worker: str | None) -> None:
        """Tell live workers (all, or ``worker``) that ids and stamps revoked before ``cut`` (wall clock) were
        purged in Redis: they drop those they hold (ids checked in Redis first)."""
        # The fleet set (named, or every worker's set in the shared scope) binds every worker: all are told.
        destination = None if worker == FLEET or self._shared else worker
        self._broadcast(PURGE_COMMAND, {"before": cut}, destination, reply=False, timeout=1.0,
                        what="revoked ids purged")
        broadcast_purge_stamps(self.app, 0, destination, scope=self.config.scope, now=cut)

    def forget(self, workers: Iterable[str], *, dry_run: bool = False, ping_timeout: float = 1.0,
               progress: Progress | None = None) -> ForgetReport:
        """Remove every key of workers gone for good; a worker that answers a ping is refused."""
        names = list(workers)
        live = self.live_workers(ping_timeout)
        return self.call(lambda admin: admin.forget(names, live=live, dry_run=dry_run, progress=progress))

    def prune(self, idle_for: timedelta | float | int | str, *, include_unknown: bool = False, dry_run: bool = False,
              ping_timeout: float = 1.0, progress: Progress | None = None) -> PruneReport:
        """Forget every worker whose last clock save is older than ``idle_for``, never a live one
        (they are pinged first), nor one whose last save is unknown unless ``include_unknown``."""
        live = self.live_workers(ping_timeout)
        return self.call(lambda admin: admin.prune(idle_for=idle_for, live=live, include_unknown=include_unknown,
                                                   dry_run=dry_run, progress=progress))

    def revoke_stamps(self, stamps: Iterable[tuple[str, Any]]) -> int:
        """Producer-side durable stamp revoke into the fleet stamps key (no broadcast: see Celery's
        ``app.control.revoke_by_stamped_headers`` for live workers)."""
        pairs = list(stamps)
        return self.call(lambda admin: admin.stamps.revoke_stamps(pairs))

    def restore_stamps(self, stamps: Iterable[tuple[str, Any]], *, worker: str | None = None,
                       broadcast: bool = True, reply_timeout: float = 1.0) -> RestoreResult:
        """Lift stamped-header revokes: remove them from Redis (every stamps set, or one worker's), then
        tell live workers (``statedb_restore_stamps``) to drop them from ``revoked_stamps``."""
        from celery_redis_statedb.stamps import RESTORE_COMMAND as RESTORE_STAMPS_COMMAND

        pairs = [(header, value) for header, value in stamps]
        removed = self.call(lambda admin: admin.stamps.restore_stamps(pairs, worker=worker))
        replies: list[dict[str, Any]] = []
        if broadcast and pairs:
            replies = self._broadcast(RESTORE_STAMPS_COMMAND, {"stamps": [list(p) for p in pairs]}, worker,
                                      reply=True, timeout=reply_timeout, what="stamped-header revokes restored")
        return RestoreResult(removed, replies)


# -- the functions of earlier versions: shortcuts over SyncStateAdmin ----------------------------


def statedb_url(app: Celery, redis_url: str | None = None) -> str:
    """``redis_url``, else the URL a worker of ``app`` uses: ``$CELERY_WORKER_STATEDB`` (as ``celery worker``
    reads it), ``worker_state_db``, ``$REDIS_STATEDB_URL``, and the broker only when none is set."""
    return choose_url(app.conf, os.environ, explicit=redis_url).url


def app_config(app: Celery, redis_url: str | None = None) -> StateDBConfig:
    """The configuration a worker of ``app`` would use (prefix, scope), for ``redis_url``."""
    return SyncStateAdmin.for_app(app, redis_url).config


def purge_old_revoked_tasks(
    app: Celery, older_than: timedelta | float | int | str, worker_name: str | None = None,
    redis_url: str | None = None, *, dry_run: bool = False, progress: Progress | None = None,
    broadcast: bool = True,
) -> int:
    """How many ids :meth:`SyncStateAdmin.purge_old_revoked` removed (would, on dry_run)."""
    return SyncStateAdmin.for_app(app, redis_url).purge_old_revoked(
        older_than, worker_name, dry_run=dry_run, progress=progress, broadcast=broadcast).removed


def list_workers(app: Celery, redis_url: str | None = None) -> list[str]:
    return SyncStateAdmin.for_app(app, redis_url).list_workers()


def inspect_workers(
    app: Celery, workers: Iterable[str | None] | None = None, redis_url: str | None = None,
    *, progress: Progress | None = None,
) -> list[RevokedSetState]:
    return SyncStateAdmin.for_app(app, redis_url).inspect_workers(workers, progress=progress)


def inspect_worker(app: Celery, worker: str | None, redis_url: str | None = None) -> RevokedSetState:
    return SyncStateAdmin.for_app(app, redis_url).inspect_worker(worker)


def revoked_ids(
    app: Celery, worker: str | None, redis_url: str | None = None, *, limit: int | None = None,
    bad: BadMembers | None = None,
) -> list[tuple[str, float]]:
    """(task id, revocation time) of a worker's set (None: the fleet set), newest first (bad members
    raise CorruptValueError, or, given ``bad``, are skipped and counted there)."""
    return SyncStateAdmin.for_app(app, redis_url).revoked_rows(worker, limit=limit, bad=bad)


def where_revoked(app: Celery, task_id: str, redis_url: str | None = None) -> list[Revocation]:
    return SyncStateAdmin.for_app(app, redis_url).where_revoked(task_id)


def revoke_tasks(
    app: Celery, task_ids: Iterable[str], *, broadcast: bool = True, terminate: bool = False,
    signal: str | None = None, redis_url: str | None = None,
) -> int:
    """How many ids :meth:`SyncStateAdmin.revoke` added to the fleet set."""
    return SyncStateAdmin.for_app(app, redis_url).revoke(task_ids, broadcast=broadcast, terminate=terminate,
                                                        signal=signal).added


def restore_tasks(
    app: Celery, task_ids: Iterable[str], *, worker_name: str | None = None, broadcast: bool = True,
    redis_url: str | None = None, reply_timeout: float = 1.0,
) -> RestoreResult:
    """:meth:`SyncStateAdmin.restore` in one call."""
    return SyncStateAdmin.for_app(app, redis_url).restore(task_ids, worker=worker_name, broadcast=broadcast,
                                                         reply_timeout=reply_timeout)


def stamp_rows(
    app: Celery, worker: str | None, redis_url: str | None = None, *, limit: int | None = None,
    bad: BadMembers | None = None,
) -> list[tuple[str, Any, float]]:
    """(header, value, revocation time) of a worker's stamps (None: the fleet's), newest first."""
    return SyncStateAdmin.for_app(app, redis_url).stamp_rows(worker, limit=limit, bad=bad)


def inspect_stamps(
    app: Celery, workers: Iterable[str | None] | None = None, redis_url: str | None = None,
    *, progress: Progress | None = None,
) -> list[StampsSetState]:
    """Count, oldest and newest of the given workers' stamps sets (None: the fleet's), or of all."""
    return SyncStateAdmin.for_app(app, redis_url).inspect_stamps(workers, progress=progress)


def restore_stamps(
    app: Celery, stamps: Iterable[tuple[str, Any]], *, worker_name: str | None = None, broadcast: bool = True,
    redis_url: str | None = None, reply_timeout: float = 1.0,
) -> RestoreResult:
    """:meth:`SyncStateAdmin.restore_stamps` in one call."""
    return SyncStateAdmin.for_app(app, redis_url).restore_stamps(stamps, worker=worker_name, broadcast=broadcast,
                                                                reply_timeout=reply_timeout)


def revoke_stamps(app: Celery, stamps: Iterable[tuple[str, Any]], *, redis_url: str | None = None) -> int:
    """:meth:`SyncStateAdmin.revoke_stamps` in one call."""
    return SyncStateAdmin.for_app(app, redis_url).revoke_stamps(stamps)


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
    import time

    from celery_redis_statedb.stamps import PURGE_COMMAND as PURGE_STAMPS_COMMAND

    if dry_run:
        return []
    cut = cutoff(time.time() if now is None else now, older_than)
    fleet = worker_name is None or worker_name == FLEET or Scope(scope or Scope.WORKER) is Scope.SHARED
    destination = [worker_name] if worker_name and worker_name != FLEET else None
    try:
        replies: list[dict[str, Any]] = app.control.broadcast(
            PURGE_STAMPS_COMMAND, arguments={"cutoff": cut, "fleet": fleet}, destination=destination, reply=reply,
            timeout=reply_timeout) or []
    except Exception as exc:  # kombu's OperationalError, OSError: the broker is not there
        logger.warning("redis-statedb: stamped-header revokes purged in Redis, but live workers could not be "
                       "told: %s", exc)
        return []
    return replies
