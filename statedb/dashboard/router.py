"""``make_router``: the admin dashboard as a FastAPI router (a JSON API and one self-contained page).

The host mounts it where it likes and adds its own auth through ``dependencies``::

    app.include_router(make_router("redis://redis:6379/0", dependencies=[Depends(admin_only)]),
                       prefix="/statedb")

Everything goes through :class:`statedb.admin.StateAdmin`. Errors never leak: bad input is a
422 naming the field, an unknown worker a 404, Redis unreachable a 503 naming the masked URL.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, NoReturn, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, PlainTextResponse
from redis.asyncio import Redis

from statedb import cursors
from statedb.admin import FLEET, RestoreReport, StateAdmin, WorkerState, iso, utc
from statedb.commands import BadMembers
from statedb.dashboard import models
from statedb.errors import (
    ConfigurationError,
    RedisUnavailableError,
    RequestError,
    StateDBError,
    UnknownWorkerError,
)
from statedb.keys import DEFAULT_KEY_PREFIX, Scope
from statedb.timeframes import as_seconds, below_expiry, format_duration

T = TypeVar("T")
StatusReplies = Mapping[str, Mapping[str, Any]]  # worker hostname -> its statedb_status reply
MAX_PAGE = 1000
CELERY_REVOKE_EXPIRES = 3 * 3600.0  # how long a Celery worker keeps a revoked id in memory, by default


@dataclass(frozen=True)
class LiveWorkers:
    """What the core cannot do without Celery, supplied by the host (``celery_redis_statedb.dashboard``
    wires an app's): ask live workers for their status, and tell them about revokes, restores and
    purges done here. Each is awaited; none may block the event loop."""

    status: Callable[[], Awaitable[StatusReplies]] | None = None
    revoked: Callable[[Sequence[str]], Awaitable[None]] | None = None
    restored: Callable[[RestoreReport, str | None], Awaitable[None]] | None = None
    purged: Callable[[float, str | None], Awaitable[None]] | None = None
    metrics: Callable[[StateAdmin], Awaitable[str]] | None = None


class _Admins:
    """One StateAdmin for the router's life; a URL's client is opened lazily and closed by the
    router's lifespan (a client passed in is the host's: never closed). A client belongs to the
    event loop that opened it, so a new loop (a test client, a reloaded server) gets its own."""

    def __init__(self, redis: str | Redis, key_prefix: str, scope: Scope | str) -> None:
        self.redis, self.key_prefix, self.scope = redis, key_prefix, scope
        self.first = StateAdmin(redis, key_prefix=key_prefix, scope=scope)  # validates now, before mounting
        self._by_loop: dict[asyncio.AbstractEventLoop, StateAdmin] = {}

    def get(self) -> StateAdmin:
        loop = asyncio.get_running_loop()
        admin = self._by_loop.get(loop)
        if admin is None:
            admin = self.first if not self._by_loop else StateAdmin(self.redis, key_prefix=self.key_prefix,
                                                                     scope=self.scope)
            self._by_loop = {known: a for known, a in self._by_loop.items() if not known.is_closed()}
            self._by_loop[loop] = admin
        return admin

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        admin = self._by_loop.pop(loop, None)
        if admin is not None:
            await admin.aclose()


def _unprocessable(field: str, message: str) -> NoReturn:
    raise HTTPException(422, detail=[{"loc": ["body", field] if field else ["query"], "msg": message,
                                      "type": "value_error"}])


async def _answer(call: Awaitable[T], *, field: str = "") -> T:
    """The library's errors as HTTP answers: nothing but their (password-free) message leaves."""
    try:
        return await call
    except UnknownWorkerError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except RequestError as exc:
        _unprocessable(field, str(exc))
    except RedisUnavailableError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    except StateDBError as exc:  # refused access, data that is not ours: the server side is wrong
        raise HTTPException(503, detail=str(exc)) from None


def _checked(call: Callable[[], T], *, field: str) -> T:
    try:
        return call()
    except RequestError as exc:
        _unprocessable(field, str(exc))


def _worker_model(state: WorkerState, replies: StatusReplies | None) -> models.Worker:
    live = None
    if replies is not None and not state.is_fleet:
        reply = replies.get(state.worker)
        live = None if reply is None else _live(reply)
    return models.model_of(models.Worker, state.as_dict(), live=live)  # type: ignore[no-any-return]


def _epoch_text(epoch: object) -> tuple[str | None, float | None]:
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and math.isfinite(epoch):
        moment = utc(float(epoch))
        return (None if moment is None else iso(moment)), float(epoch)
    return None, None


def _live(reply: Mapping[str, Any]) -> models.LiveStatus:
    if "error" in reply or "pending" not in reply:
        return models.LiveStatus(error=str(reply.get("error") or "no Redis statedb on this worker")[:200])
    failing_since, failing_since_epoch = _epoch_text(reply.get("failing_since"))
    last_save, last_save_epoch = _epoch_text(reply.get("last_clock_save"))

    def count(name: str) -> int | None:
        value = reply.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return models.LiveStatus(
        pending=count("pending") or 0, failing=bool(reply.get("failing")), failing_since=failing_since,
        failing_since_epoch=failing_since_epoch, in_memory=count("in_memory"), index_size=count("index_size"),
        last_clock_save=last_save, last_clock_save_epoch=last_save_epoch,
        version=str(reply["version"]) if reply.get("version") is not None else None)


def _page_token(cursor: cursors.PageCursor) -> str | None:
    return None if cursor.done else f"{cursor.high!r}:{cursor.skip}"


def _parse_token(before: str) -> tuple[float | str, int]:
    """``?before=``: a time (epoch seconds, every id revoked before it) or a ``next_before`` token."""
    score, _, skip = before.partition(":")
    try:
        high, ties = float(score), int(skip or 0)
    except ValueError:
        _unprocessable("", f"before must be epoch seconds or a next_before token, got {before!r:.60}")
    if not math.isfinite(high) or ties < 0:
        _unprocessable("", f"before must be finite epoch seconds, got {before!r:.60}")
    return (repr(high) if skip else f"({high!r}"), ties


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def make_router(
    redis: str | Redis, *, key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER,
    dependencies: Sequence[Depends] = (), read_only: bool = False, live: LiveWorkers | None = None,
    in_memory_expiry: float = CELERY_REVOKE_EXPIRES,
) -> APIRouter:
    """The dashboard for the workers of ``key_prefix`` (and their ``scope``) on ``redis``: a URL or a
    ``redis.asyncio`` client. ``read_only`` leaves the write endpoints out; ``live`` connects it to
    live workers (see :class:`LiveWorkers`). A purge of ids younger than ``in_memory_expiry`` (how
    long the workers keep a revoked id in memory: Celery's default unless told, 0 for never; the
    Celery dashboard passes the app's) needs ``force``, as ``celery statedb purge`` needs ``--force``."""
    if (isinstance(in_memory_expiry, bool) or not isinstance(in_memory_expiry, (int, float))
            or math.isnan(in_memory_expiry) or in_memory_expiry < 0):
        raise ConfigurationError(f"in_memory_expiry must be seconds (0: the workers' expiry is off), got "
                                 f"{in_memory_expiry!r}")
    in_memory_expiry = in_memory_expiry or math.inf
    admins = _Admins(redis, key_prefix, scope)
    hooks = live or LiveWorkers()
    page = resources.files("statedb.dashboard").joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await admins.aclose()

    router = APIRouter(dependencies=list(dependencies), lifespan=lifespan)

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @router.get("/api/config", response_model=models.Config)
    async def config() -> models.Config:
        admin = admins.get()
        return models.Config(redis=admin.target, key_prefix=admin.key_prefix, scope=admin.scope.value,
                             read_only=read_only, live=hooks.status is not None,
                             broadcast=hooks.revoked is not None)

    async def statuses() -> StatusReplies | None:
        if hooks.status is None:
            return None
        try:
            return await hooks.status()
        except Exception:  # a broker that does not answer: the Redis view is still worth showing
            return {}

    @router.get("/api/workers", response_model=models.Workers)
    async def workers(match: str | None = Query(None, max_length=1024, description=(
            "Only workers whose name contains this text, taken literally (no patterns)."))) -> models.Workers:
        states, replies = await asyncio.gather(_answer(admins.get().inspect_workers()), statuses())
        chosen = [s for s in states if match is None or match in s.worker]
        return models.Workers(workers=[_worker_model(s, replies) for s in chosen], live=replies is not None)

    @router.get("/api/workers/{name}", response_model=models.Worker)
    async def worker(name: str) -> models.Worker:
        state, replies = await asyncio.gather(_answer(admins.get().inspect_worker(name)), statuses())
        return _worker_model(state, replies)

    @router.get("/api/workers/{name}/revoked", response_model=models.RevokedPage)
    async def revoked(name: str, limit: int = Query(100, ge=1, le=MAX_PAGE),
                      before: str | None = Query(None, max_length=80, description=(
                          "Ids revoked before this time (epoch seconds), or a next_before token."))
                      ) -> models.RevokedPage:
        admin = admins.get()
        state = await _answer(admin.inspect_worker(name))  # UnknownWorkerError: a 404
        _, key = admin.owned_set(state.worker)  # a shared-scope worker's revocations are the fleet set's
        assert isinstance(key, str)  # a set named from a worker name, never raw bytes
        cursor = cursors.PageCursor(key, newer_than=None, limit=None, chunk_size=limit, bad=BadMembers())
        if before is not None:
            cursor.high, cursor.skip = _parse_token(before)
        operation = cursor.next_operation()
        assert operation is not None
        rows = cursor.feed(await _answer(admin.run(operation)))
        items = [models.RevokedItem(task_id=task_id, revoked_at=iso(utc(when)),
                                    revoked_at_epoch=when) for task_id, when in rows]
        return models.RevokedPage(worker=state.worker, key=key, items=items, next_before=_page_token(cursor))

    @router.get("/api/tasks/{task_id}", response_model=models.TaskPlaces)
    async def task(task_id: str) -> models.TaskPlaces:
        places = await _answer(admins.get().where_revoked(task_id), field="task_id")
        return models.TaskPlaces(task_id=task_id, revoked=bool(places),
                                 places=[models.model_of(models.Revocation, p.as_dict()) for p in places])

    if not read_only:
        _write_endpoints(router, admins, hooks, in_memory_expiry)

    @router.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    async def metrics() -> str:
        if hooks.metrics is None:
            raise HTTPException(404, detail="metrics need the Celery dashboard (celery_redis_statedb.dashboard)")
        return await hooks.metrics(admins.get())

    return router


def _write_endpoints(router: APIRouter, admins: _Admins, hooks: LiveWorkers, in_memory_expiry: float) -> None:
    @router.post("/api/purge", response_model=models.PurgeResult)
    async def purge(request: models.PurgeRequest) -> models.PurgeResult:
        seconds = _checked(lambda: as_seconds(request.older_than), field="older_than")
        warning = None
        if seconds < in_memory_expiry:
            warning = f"older_than {format_duration(seconds)} {below_expiry(in_memory_expiry)}"
            if not (request.dry_run or request.force):
                _unprocessable("older_than", f"{warning}; purge older ids, or send force: true")
        report = await _answer(admins.get().purge_old_revoked(older_than=seconds, worker=request.worker,
                                                               dry_run=request.dry_run), field="worker")
        where = "every set" if request.worker is None else (
            "the fleet set" if request.worker == FLEET else request.worker)
        verb = "would remove" if report.dry_run else "removed"
        message = (f"{verb} {_plural(report.removed, 'revoked id')} older than {report.older_than} "
                   f"from {_plural(len(report.sets), 'set')} ({where}, {_plural(report.sets_scanned, 'set')} "
                   f"looked at)")
        if not report.dry_run and hooks.purged is not None:
            await hooks.purged(report.cutoff.timestamp(), request.worker)
        return models.model_of(models.PurgeResult, report.as_dict(),  # type: ignore[no-any-return]
                               message=message, warning=warning)

    @router.post("/api/revoke", response_model=models.RevokeResult)
    async def revoke(request: models.RevokeRequest) -> models.RevokeResult:
        if request.broadcast and hooks.revoked is None:
            _unprocessable("broadcast", "telling live workers needs the Celery dashboard "
                                        "(celery_redis_statedb.dashboard); send broadcast: false to only store")
        report = await _answer(admins.get().revoke(request.task_ids), field="task_ids")
        if request.broadcast and hooks.revoked is not None:
            await hooks.revoked(list(report.task_ids))
        message = (f"stored {_plural(len(report.task_ids), 'id')} ({report.added} new) in the fleet set"
                   + ("; revoke broadcast to live workers" if request.broadcast else ""))
        return models.model_of(models.RevokeResult, report.as_dict(),  # type: ignore[no-any-return]
                               broadcast=request.broadcast, message=message)

    @router.post("/api/restore", response_model=models.RestoreResult)
    async def restore(request: models.RestoreRequest) -> models.RestoreResult:
        report = await _answer(admins.get().restore(request.task_ids, worker=request.worker), field="task_ids")
        told = hooks.restored is not None
        if hooks.restored is not None:
            await hooks.restored(report, request.worker)
        message = f"removed {_plural(report.removed, 'stored revocation')}"
        if report.note:
            message += f"; {report.note}"
        if told:
            message += "; live workers told"
        return models.model_of(models.RestoreResult, report.as_dict(),  # type: ignore[no-any-return]
                               broadcast=told, message=message)

