"""Async admin API over every worker's stored state, for asyncio services and admin backends.

:class:`StateAdmin` binds a Redis URL or an existing ``redis.asyncio`` client (made with
any ``decode_responses`` and RESP2 or RESP3: the replies are read either way) to the
workers' key prefix and scope, once::

    admin = StateAdmin(client, key_prefix="myapp:worker:state:", scope="shared")
    states = await admin.inspect_workers()
    report = await admin.purge_old_revoked(older_than="30d", dry_run=True)

Results are frozen dataclasses; ``as_dict()`` gives JSON-ready dicts (times as ISO 8601
UTC text plus ``<name>_epoch`` seconds, the fleet set named ``"fleet"``). A client passed
in is never closed here; a URL is opened on first use and closed by ``aclose()`` (or the
``async with`` block). The module-level functions are shortcuts over one call each.

Every command goes through the sans-I/O layer (:mod:`statedb.admin_commands`), and
every redis-py error through the repository's one translation. Work over many workers
runs in pipelined batches with bounded concurrency and can report ``progress(done,
total)``. Worker names are data: they are never put in a SCAN pattern, so glob
characters match nothing but themselves. No Celery needed; live workers are told by
``celery_redis_statedb.SyncStateAdmin``, which broadcasts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from statedb import admin_commands as ops
from statedb import commands, snapshot
from statedb._async.clients import Client, cluster_ready, is_cluster_client, open_async_client
from statedb._async.repository import AsyncStateRepository, check_topology
from statedb.config import StateDBConfig
from statedb.errors import AccessDeniedError, ConfigurationError, InvalidInputError, UnknownWorkerError
from statedb.keys import DEFAULT_KEY_PREFIX, KeySchema, RedisKey, Scope, key_text
from statedb.names import check_name, check_timestamp
from statedb.operations import StateOperations
from statedb.timeframes import as_seconds, cutoff, format_duration, purge_range
from statedb.translate import REDIS_FAILURES, translate_exception

if TYPE_CHECKING:
    from statedb.stamps_admin import StampsAdmin

T = TypeVar("T")
R = TypeVar("R")
RedisTarget = str | Client
Progress = Callable[[int, int], None]

BATCH_SIZE = 200
DESCRIBE_BATCH = 50
CONCURRENCY = 8
FLEET = "fleet"  # the fleet-wide set in results: Celery hostnames always hold '@', so no worker is called so
FUTURE_TOLERANCE = 60.0  # seconds a revoked_at may be ahead of the server's clock (a producer's clock skew)
SHARED = FLEET  # its former name (the fleet set was worker None in results)
KINDS = ("revoked", "clock", "info", "stamps")


# -- results: frozen, JSON-ready ------------------------------------------------------------


@overload
def utc(epoch: float) -> datetime: ...
@overload
def utc(epoch: None) -> None: ...
@overload
def utc(epoch: float | None) -> datetime | None: ...
def utc(epoch: float | None) -> datetime | None:
    """An aware UTC datetime for epoch seconds (a score too far out for datetime is clamped)."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return (datetime.max if epoch > 0 else datetime.min).replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``: ``2025-01-31T12:00:00.250000Z``."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Result):
        return value.as_dict()
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime):
        return iso(value)
    return value


class Result:
    """Base of the result dataclasses: ``as_dict()`` is JSON-ready."""

    def as_dict(self) -> dict[str, Any]:
        """Every field, times as ISO 8601 UTC text plus ``<name>_epoch`` (seconds, or None)."""
        out: dict[str, Any] = {}
        for item in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            value = getattr(self, item.name)
            out[item.name] = _jsonable(value)
            if "datetime" in str(item.type):
                out[f"{item.name}_epoch"] = None if value is None else value.timestamp()
        return out


@dataclass(frozen=True)
class WorkerState(Result):
    """One worker as Redis knows it (or the fleet set, ``worker == FLEET``).

    ``key`` and the counts are the worker's own revoked set (a shared-scope worker writes to
    the fleet set: 0 here). ``scope`` and ``version`` come from the info hash its clock saves
    write (``scope`` is inferred as ``worker`` from an own set when there is no hash, else None);
    ``last_seen`` is its last clock save, on the Redis server's clock (None: unknown, an older
    worker).
    """

    worker: str
    key: str
    revoked_count: int
    oldest: datetime | None
    newest: datetime | None
    clock: int | None
    memory_bytes: int | None
    scope: str | None = None
    last_seen: datetime | None = None
    version: str | None = None
    stamps_count: int = 0

    @property
    def is_fleet(self) -> bool:
        return self.worker == FLEET


RevokedSetState = WorkerState  # its former name


@dataclass(frozen=True)
class Revocation(Result):
    """Where a task id is revoked (a worker's set, or the fleet set), and since when."""

    task_id: str
    worker: str
    key: str
    revoked_at: datetime


@dataclass(frozen=True)
class SetChange(Result):
    """How many entries a command removed (or, on a dry run, would remove) from one set."""

    worker: str
    key: str
    count: int


@dataclass(frozen=True)
class RevokeReport(Result):
    """A durable producer-side revoke: the ids stored in the fleet set, read by every worker at boot."""

    task_ids: tuple[str, ...]
    added: int  # new there (the others kept their earlier time)
    worker: str
    key: str
    revoked_at: datetime


@dataclass(frozen=True)
class RestoreReport(Result):
    """Ids removed from the stored sets. ``fleet_removed`` counts removals from the fleet set; a
    restore for one worker also removes them there (``note`` says what that means)."""

    task_ids: tuple[str, ...]
    removed: int  # removals in all: an id held by three sets counts three times
    sets: tuple[SetChange, ...]
    fleet_removed: int
    note: str | None = None


@dataclass(frozen=True)
class PurgeReport(Result):
    """A purge by age (or its dry run): ids and stamped-header revokes revoked before ``cutoff``."""

    older_than: str
    cutoff: datetime
    dry_run: bool
    removed: int  # ids removed, or that would be on a dry run
    sets: tuple[SetChange, ...]  # the sets that lose some
    sets_scanned: int
    stamps_removed: int


@dataclass(frozen=True)
class ForgottenWorker(Result):
    """A worker whose keys ``forget``/``prune`` removed (or would)."""

    worker: str
    keys: tuple[str, ...]
    revoked_count: int
    last_seen: datetime | None


@dataclass(frozen=True)
class ForgetReport(Result):
    dry_run: bool
    workers: tuple[ForgottenWorker, ...]
    keys_removed: int  # keys that existed and were removed (0 on a dry run)


@dataclass(frozen=True)
class PruneReport(Result):
    """Workers whose last clock save is older than ``cutoff``; live ones and (unless asked) those
    whose last save is unknown are kept, and named."""

    idle_for: str
    cutoff: datetime
    dry_run: bool
    workers: tuple[ForgottenWorker, ...]
    kept_live: tuple[str, ...]
    kept_unknown: tuple[str, ...]
    keys_removed: int


# -- the bound admin -----------------------------------------------------------------------------


def parse_scope(scope: Scope | str) -> Scope:
    """A Scope, or ConfigurationError naming the accepted values (never a bare ValueError)."""
    try:
        return Scope(scope)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in Scope)
        raise ConfigurationError(f"scope must be one of {allowed}, got {scope!r:.60}") from None


def _is_fleet(worker: str | None) -> bool:
    return worker is None or worker == FLEET


async def _in_batches(
    items: Sequence[T], work: Callable[[Sequence[T]], Awaitable[list[R]]], *,
    concurrency: int, progress: Progress | None, batch_size: int = BATCH_SIZE,
) -> list[R]:
    """Run ``work`` over pipelined batches, at most ``concurrency`` at a time, results in order."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidInputError(f"concurrency must be an integer of at least 1, got {concurrency!r}")
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    limiter = asyncio.Semaphore(concurrency)
    done = 0
    if progress:
        progress(0, len(items))

    async def run(batch: Sequence[T]) -> list[R]:
        nonlocal done
        async with limiter:
            result = await work(batch)
        done += len(batch)
        if progress:
            progress(done, len(items))
        return result

    results = await asyncio.gather(*(run(batch) for batch in batches))
    return [item for batch in results for item in batch]


@dataclass(frozen=True)
class _Found:
    """A worker's keys as SCAN found them (bytes), by kind."""

    name: str
    keys: dict[str, RedisKey]


class StateAdmin:
    """Every admin operation on the workers of one key prefix and scope, on one client.

    ``redis`` is a URL (opened on first use, closed by :meth:`aclose`) or a ``redis.asyncio``
    client (never closed here; any ``decode_responses``, RESP2 or RESP3). ``scope`` is the
    workers' (it says which set is a worker's: its own, or the fleet set).
    """

    def __init__(self, redis: RedisTarget, *, key_prefix: str = DEFAULT_KEY_PREFIX,
                 scope: Scope | str = Scope.WORKER, concurrency: int = CONCURRENCY) -> None:
        try:
            self.schema = KeySchema(key_prefix)
        except InvalidInputError as exc:
            raise ConfigurationError(str(exc)) from None
        self.scope = parse_scope(scope)
        self.concurrency = concurrency
        self._client: Client | None = None
        self._config: StateDBConfig | None = None
        if isinstance(redis, str):
            self._config = StateDBConfig(url=redis, key_prefix=key_prefix, scope=self.scope)
            self.target = self._config.safe_url
        else:
            self._client, self.target = redis, "the Redis client passed in"
        self._owns_client = isinstance(redis, str)
        self._topology_checked = False

    @property
    def key_prefix(self) -> str:
        return self.schema.prefix

    @property
    def stamps(self) -> StampsAdmin:
        """The stamped-header revokes of the same workers (:class:`statedb.stamps_admin.StampsAdmin`)."""
        from statedb.stamps_admin import StampsAdmin  # that module builds on this one

        return StampsAdmin(self)

    @property
    def client(self) -> Client:
        if self._client is None:
            assert self._config is not None
            self._client = open_async_client(self._config)
        return self._client

    async def aclose(self) -> None:
        """Close the client this object opened (a client passed in is left open)."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self) -> StateAdmin:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- plumbing: one execution path, one error translation --------------------------------

    def _repository(self, keys_of: str = FLEET, scope: Scope = Scope.SHARED,
                    bad: commands.BadMembers | None = None) -> AsyncStateRepository:
        keys = self.schema.for_worker(keys_of, scope)
        return AsyncStateRepository(self.client, StateOperations(keys, self.target), bad=bad)

    async def run(self, operation: commands.Operation[T]) -> T:
        """Execute one operation of the command layer; every redis-py error leaves as a StateDBError."""
        return await self._repository().run(operation)

    async def server_time(self) -> float:
        """The Redis server's clock (the one revocation and last-seen times are on); this host's clock
        when an ACL refuses ``TIME``."""
        try:
            return await self.run(ops.server_time())
        except AccessDeniedError:
            return time.time()

    async def _scan(self) -> tuple[dict[str, _Found], set[str]]:
        """Every worker's keys under the prefix, and which fleet keys exist ("revoked", "stamps")."""
        workers: dict[str, _Found] = {}
        fleet: set[str] = set()
        fleet_keys = {ops.as_bytes(self.schema.shared_revoked_key): "revoked",
                      ops.as_bytes(self.schema.shared_stamps_key): "stamps"}
        async for keys in self._scan_pages():
            for raw in keys:
                if raw in fleet_keys:
                    fleet.add(fleet_keys[raw])
                    continue
                parsed = self.schema.parse(key_text(raw))
                if parsed is not None:
                    name, kind = parsed
                    workers.setdefault(name, _Found(name, {})).keys.setdefault(kind, raw)
        return dict(sorted(workers.items())), fleet

    async def _scan_pages(self) -> AsyncIterator[list[bytes]]:
        """The keys under the prefix, a SCAN page at a time. On a cluster, redis-py's ``scan_iter``
        walks every primary (a SCAN cursor belongs to one node); a plain client pointed at a cluster
        node would see that node only, and is refused (ConfigurationError)."""
        client = self.client
        if is_cluster_client(client):
            built = await cluster_ready(client)  # type: ignore[arg-type]
            try:
                async for raw in built.scan_iter(match=self.schema.match_all, count=ops.SCAN_COUNT):
                    yield [ops.as_bytes(raw)]
            except REDIS_FAILURES as exc:
                raise translate_exception(exc, target=self.target) from exc
            return
        if not self._topology_checked:  # a client's server does not change: checked once
            await check_topology(client, self.target)
            self._topology_checked = True
        cursor = 0
        while True:
            cursor, keys = await self.run(ops.scan_page(self.schema.match_all, cursor))
            yield keys
            if cursor == 0:
                return

    def _own_keys(self, worker: str) -> dict[str, RedisKey]:
        keys = self.schema.for_worker(worker, Scope.WORKER)
        return {"revoked": keys.revoked, "clock": keys.clock, "info": keys.info, "stamps": keys.stamps}

    def _worker_set(self, worker: str | None) -> str:
        """The set a worker reads and writes (the fleet set in the shared scope, or for FLEET/None)."""
        if _is_fleet(worker):
            return self.schema.shared_revoked_key
        assert worker is not None
        return self.schema.for_worker(check_name(worker, "worker name"), self.scope).revoked

    def _state(self, name: str, keys: dict[str, RedisKey], facts: ops.Facts) -> WorkerState:
        revoked = facts.revoked or ops.SetFacts(0, None, None, None)
        info = facts.info or {}
        scope = info.get("scope") or ("worker" if facts.revoked or facts.stamps else None)
        seen = info.get("last_seen")
        return WorkerState(
            worker=name, key=key_text(keys.get("revoked", self.schema.shared_revoked_key)),
            revoked_count=revoked.count, oldest=utc(revoked.oldest), newest=utc(revoked.newest),
            clock=facts.clock, memory_bytes=revoked.memory_bytes, scope=scope,
            last_seen=utc(float(seen)) if seen is not None else None, version=info.get("version"),
            stamps_count=facts.stamps.count if facts.stamps else 0,
        )

    async def _facts(self, entries: Sequence[tuple[str, dict[str, RedisKey]]], *,
                     progress: Progress | None = None) -> list[tuple[WorkerState, ops.Facts]]:
        async def batch(part: Sequence[tuple[str, dict[str, RedisKey]]]) -> list[tuple[WorkerState, ops.Facts]]:
            probes = [ops.Probe(**{kind: keys.get(kind) for kind in KINDS}) for _, keys in part]
            facts = await self.run(ops.describe(probes))
            return [(self._state(name, keys, fact), fact) for (name, keys), fact in zip(part, facts, strict=True)]

        return await _in_batches(entries, batch, concurrency=self.concurrency, progress=progress,
                                 batch_size=DESCRIBE_BATCH)

    async def _describe(self, entries: Sequence[tuple[str, dict[str, RedisKey]]], *,
                        progress: Progress | None = None) -> list[WorkerState]:
        return [state for state, _ in await self._facts(entries, progress=progress)]

    def _fleet_entry(self) -> tuple[str, dict[str, RedisKey]]:
        return FLEET, {"revoked": self.schema.shared_revoked_key, "stamps": self.schema.shared_stamps_key}

    async def _known_facts(self, workers: Iterable[str | None]) -> list[tuple[WorkerState, ops.Facts]]:
        """The state of each named worker (None or FLEET: the fleet set); UnknownWorkerError for a
        worker with no key under the prefix."""
        entries = [self._fleet_entry() if _is_fleet(w) else (str(w), self._own_keys(str(w))) for w in workers]
        found = await self._facts(entries)
        for state, facts in found:
            if not state.is_fleet and not (facts.revoked or facts.stamps or facts.clock is not None or facts.info):
                raise UnknownWorkerError(state.worker, self.key_prefix)
        return found

    async def _known(self, workers: Iterable[str | None]) -> list[WorkerState]:
        return [state for state, _ in await self._known_facts(workers)]

    def owned_set(self, worker: str | None) -> tuple[str, RedisKey]:
        """(owner, key) of the set a worker reads and writes: the fleet set for FLEET, or in the shared scope."""
        key = self._worker_set(worker)
        return (FLEET if key == self.schema.shared_revoked_key else str(worker)), key

    # -- reads ----------------------------------------------------------------------------

    async def list_workers(self) -> list[str]:
        """Names of the workers with any key under the prefix (a revoked set, a clock, an info hash,
        stamps), sorted."""
        workers, _ = await self._scan()
        return list(workers)

    async def inspect_workers(self, workers: Iterable[str | None] | None = None, *,
                              progress: Progress | None = None) -> list[WorkerState]:
        """The named workers (None or FLEET: the fleet set; UnknownWorkerError for a name with no
        state), or every worker under the prefix and then the fleet set, if it exists."""
        if workers is not None:
            return await self._known(workers)
        found, fleet = await self._scan()
        entries = [(name, item.keys) for name, item in found.items()]
        if fleet:
            entries.append(self._fleet_entry())
        return await self._describe(entries, progress=progress)

    async def inspect_worker(self, worker: str | None) -> WorkerState:
        """One worker (None or FLEET: the fleet set); UnknownWorkerError if it has no state."""
        (state,) = await self._known([worker])
        return state

    async def revoked_rows(self, worker: str | None, *, newer_than: float | None = None, limit: int | None = None,
                           bad: commands.BadMembers | None = None) -> AsyncIterator[tuple[str, float]]:
        """(task id, epoch seconds) of a worker's set (None or FLEET: the fleet set), newest first."""
        if not _is_fleet(worker):
            await self._known([worker])
        repository = self._repository("fleet" if _is_fleet(worker) else str(worker), self.scope, bad)
        async for row in repository.iter_revoked(newer_than=newer_than, limit=limit, shared=_is_fleet(worker)):
            yield row

    async def iter_revoked(self, worker: str | None, *, newer_than: float | None = None, limit: int | None = None,
                           bad: commands.BadMembers | None = None) -> AsyncIterator[Revocation]:
        """The revocations of a worker's set (None or FLEET: the fleet set), newest first, read in chunks.

        UnknownWorkerError for a worker with no state. A member that cannot be an id raises
        CorruptValueError, or, given ``bad``, is skipped and counted there.
        """
        owner, key = self.owned_set(worker)
        async for task_id, when in self.revoked_rows(worker, newer_than=newer_than, limit=limit, bad=bad):
            yield Revocation(task_id, owner, key_text(key), utc(when))

    async def _revoked_sets(self) -> list[tuple[str, RedisKey]]:
        """(owner, key) of every worker's own revoked set, then the fleet set (those that exist)."""
        found, fleet = await self._scan()
        sets = [(name, item.keys["revoked"]) for name, item in found.items() if "revoked" in item.keys]
        if "revoked" in fleet:
            sets.append((FLEET, self.schema.shared_revoked_key))
        return sets

    async def where_revoked(self, task_id: str, *, progress: Progress | None = None) -> list[Revocation]:
        """Every revoked set holding ``task_id``, with the time it was revoked there."""
        commands.encode_task_ids([task_id])  # a bad id is an InvalidInputError before any I/O
        sets = await self._revoked_sets()

        async def look(batch: Sequence[tuple[str, RedisKey]]) -> list[Revocation]:
            scores = await self.run(ops.scores_of([key for _, key in batch], task_id))
            return [Revocation(task_id, owner, key_text(key), utc(score))
                    for (owner, key), score in zip(batch, scores, strict=True) if score is not None]

        return await _in_batches(sets, look, concurrency=self.concurrency, progress=progress)

    # -- changes --------------------------------------------------------------------------

    async def _each_set(self, sets: Sequence[tuple[str, RedisKey]],
                        operation: Callable[[Sequence[RedisKey]], commands.Operation[list[int]]],
                        progress: Progress | None) -> list[SetChange]:
        async def run(batch: Sequence[tuple[str, RedisKey]]) -> list[SetChange]:
            counts = await self.run(operation([key for _, key in batch]))
            return [SetChange(owner, key_text(key), count) for (owner, key), count in zip(batch, counts, strict=True)]

        return await _in_batches(sets, run, concurrency=self.concurrency, progress=progress)

    async def revocation_time(self, revoked_at: float | None) -> float:
        """``revoked_at`` checked (epoch seconds, at most FUTURE_TOLERANCE ahead of the server's clock,
        else InvalidInputError), or the server's clock when None."""
        if revoked_at is None:
            return await self.server_time()
        when = check_timestamp(revoked_at, "revocation time (revoked_at)")  # a bad one: before any I/O
        now = await self.server_time()
        if when > now + FUTURE_TOLERANCE:
            # A future score would sort above every later revoke, and such ids bind past any horizon.
            raise InvalidInputError(
                f"revoked_at {when!r} is {when - now:.0f} s after the Redis server's clock: pass epoch "
                f"seconds (not milliseconds), at most {FUTURE_TOLERANCE:.0f} s ahead of it")
        return when

    async def revoke(self, task_ids: Iterable[object], *, revoked_at: float | None = None) -> RevokeReport:
        """Producer-side durable revoke: into the fleet set, which every worker reads at boot
        (``revoked_at``, epoch seconds, defaults to the server's clock; one later than that by more
        than a minute is an InvalidInputError). Live workers also need Celery's own revoke
        broadcast (``celery_redis_statedb.SyncStateAdmin.revoke`` does both)."""
        ids = [member.decode() for member in commands.encode_task_ids(task_ids)]  # bad ids: before any I/O
        when = await self.revocation_time(revoked_at)
        added = await self.run(self._repository().operations.add_revoked(ids, when))
        return RevokeReport(tuple(ids), added, FLEET, self.schema.shared_revoked_key,
                            utc(when))

    async def restore(self, task_ids: Iterable[object], *, worker: str | None = None,
                      progress: Progress | None = None) -> RestoreReport:
        """Un-revoke: remove ids from every revoked set, or from ``worker``'s.

        For one worker the ids also leave the fleet set if it holds them, since the fleet set binds
        that worker at its next boot too: the report says so (``fleet_removed``, ``note``). Live
        workers keep the ids in memory until told (``SyncStateAdmin.restore`` broadcasts
        ``statedb_restore``). UnknownWorkerError for a worker with no state.
        """
        ids = [member.decode() for member in commands.encode_task_ids(task_ids)]  # bad ids: before any I/O
        if worker is None:
            sets = await self._revoked_sets()
        else:
            await self._known([worker])
            sets = [self.owned_set(worker)]
            if sets[0][0] != FLEET:
                sets.append((FLEET, self.schema.shared_revoked_key))
        async with self._fleet_snapshot_stale(sets):
            changes = [c for c in await self._each_set(sets, lambda keys: ops.remove_members(keys, ids), progress)
                       if c.count]
        fleet = sum(c.count for c in changes if c.worker == FLEET)
        note = None
        if worker is not None and not _is_fleet(worker) and fleet:
            them = "it" if len(ids) == 1 else "them"
            where = "also removed from" if len(sets) > 1 else f"{worker}'s set in the shared scope is"
            note = (f"{where} the fleet set, which binds every worker at boot: new workers will run "
                    f"{them}; workers that stored {them} in their own sets stay bound")
        return RestoreReport(tuple(ids), sum(c.count for c in changes), tuple(changes), fleet, note)

    async def purge_old_revoked(self, *, older_than: timedelta | float | int | str, worker: str | None = None,
                                dry_run: bool = False, now: float | None = None,
                                progress: Progress | None = None) -> PurgeReport:
        """Remove ids revoked more than ``older_than`` before ``now`` (the server's clock by default),
        and stamped-header revokes as old: from every worker's set and the fleet set, or from
        ``worker``'s set only (UnknownWorkerError if it has no state). An id revoked exactly at the
        cutoff is kept. On a dry run, count them instead."""
        seconds = as_seconds(older_than)
        moment = await self.server_time() if now is None else now
        cut = cutoff(moment, seconds)
        low, high = purge_range(cut)
        if worker is None:
            sets = await self._revoked_sets()
        else:
            await self._known([worker])
            sets = [self.owned_set(worker)]
        stamp_sets = await self.stamps.sets(worker, every=worker is None)  # before a purge may empty them
        operation = ops.count_between if dry_run else ops.remove_between
        async with self._fleet_snapshot_stale(() if dry_run else sets):
            changes = await self._each_set(sets, lambda keys: operation(keys, low, high), progress)
        stamps = await self.stamps.purge_sets(stamp_sets, cut, dry_run=dry_run)
        return PurgeReport(format_duration(seconds), utc(cut), dry_run,
                           sum(c.count for c in changes), tuple(c for c in changes if c.count), len(sets), stamps)

    @asynccontextmanager
    async def _fleet_snapshot_stale(self, sets: Sequence[tuple[str, RedisKey]]) -> AsyncIterator[None]:
        """A removal from the fleet set marks its snapshot stale before and after it removes
        (:func:`statedb.snapshot.mark_stale`): a booting worker then never takes a removed id for
        stored, nor misses one written late with an old score."""
        fleet = ops.as_bytes(self.schema.shared_revoked_key)
        touched = any(ops.as_bytes(key) == fleet for _, key in sets)
        if touched:
            await self.run(snapshot.mark_stale(self.schema.shared_revoked_key))
        try:
            yield
        finally:
            if touched:
                await self.run(snapshot.mark_stale(self.schema.shared_revoked_key))

    # -- forgetting dead workers ----------------------------------------------------------

    async def _remove_workers(self, chosen: Sequence[tuple[WorkerState, Sequence[RedisKey]]], dry_run: bool,
                              progress: Progress | None) -> tuple[tuple[ForgottenWorker, ...], int]:
        gone = tuple(ForgottenWorker(state.worker, tuple(key_text(k) for k in keys), state.revoked_count,
                                     state.last_seen) for state, keys in chosen)
        if dry_run:
            return gone, 0

        async def run(batch: Sequence[tuple[WorkerState, Sequence[RedisKey]]]) -> list[int]:
            return [await self.run(ops.unlink([key for _, keys in batch for key in keys]))]

        return gone, sum(await _in_batches(chosen, run, concurrency=self.concurrency, progress=progress,
                                           batch_size=DESCRIBE_BATCH))

    async def forget(self, workers: Iterable[str], *, live: Iterable[str] = (), dry_run: bool = False,
                     progress: Progress | None = None) -> ForgetReport:
        """Remove every key of the named workers (their own revoked and stamps sets, clock, info hash;
        never the fleet sets): for workers that are gone for good (a Deployment's old pods).

        All or nothing: a name with no state (UnknownWorkerError), the fleet set, or a name in ``live``
        (workers that answered a ping: ``SyncStateAdmin`` asks them) is refused before anything is removed.
        """
        names = list(dict.fromkeys(workers))
        alive = set(live)
        for name in names:
            if _is_fleet(name):
                raise InvalidInputError("the fleet set belongs to no worker: purge or restore its ids instead")
            check_name(name, "worker name")
            if name in alive:
                raise InvalidInputError(f"worker {name} is alive (it answered a ping): stop it before forgetting it")
        chosen = [(state, [key for kind, key in self._own_keys(state.worker).items() if _holds(facts, kind)])
                  for state, facts in await self._known_facts(names)]
        gone, removed = await self._remove_workers(chosen, dry_run, progress)
        return ForgetReport(dry_run, gone, removed)

    async def prune(self, *, idle_for: timedelta | float | int | str, live: Iterable[str] = (),
                    include_unknown: bool = False, dry_run: bool = False, now: float | None = None,
                    progress: Progress | None = None) -> PruneReport:
        """Forget the workers whose last clock save is older than ``idle_for`` (by the server's clock),
        except those in ``live`` (workers that answered a ping) and, unless ``include_unknown``, those
        whose last save is unknown (no info hash: a worker of an earlier version)."""
        seconds = as_seconds(idle_for)
        if seconds <= 0:
            raise InvalidInputError("idle_for must be greater than zero: a worker just seen is not idle")
        moment = await self.server_time() if now is None else now
        cut = moment - seconds
        alive = set(live)
        found, _ = await self._scan()
        states = await self._describe([(name, item.keys) for name, item in found.items()], progress=progress)
        chosen, kept_live, kept_unknown = [], [], []
        for state in states:
            idle = state.last_seen.timestamp() < cut if state.last_seen is not None else include_unknown
            if state.last_seen is None and not include_unknown:
                kept_unknown.append(state.worker)
            elif idle and state.worker in alive:
                kept_live.append(state.worker)
            elif idle:
                chosen.append((state, list(found[state.worker].keys.values())))
        gone, removed = await self._remove_workers(chosen, dry_run, progress=None)
        return PruneReport(format_duration(seconds), utc(cut), dry_run, gone,
                           tuple(kept_live), tuple(kept_unknown), removed)


def _holds(facts: ops.Facts, kind: str) -> bool:
    """Whether the key of ``kind`` exists, by what :func:`statedb.admin_commands.describe` read."""
    if kind == "clock":
        return facts.clock is not None
    return bool(getattr(facts, kind))


# -- the module-level shortcuts (the signatures they always had) -----------------------------------


async def list_workers(redis: RedisTarget, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> list[str]:
    """Names of the workers with any key under the prefix, sorted (:meth:`StateAdmin.list_workers`)."""
    async with StateAdmin(redis, key_prefix=key_prefix) as admin:
        return await admin.list_workers()


async def inspect_workers(
    redis: RedisTarget, workers: Iterable[str | None] | None = None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> list[WorkerState]:
    """The given workers (None: the fleet set), or every worker (:meth:`StateAdmin.inspect_workers`)."""
    async with StateAdmin(redis, key_prefix=key_prefix, scope=scope, concurrency=concurrency) as admin:
        return await admin.inspect_workers(workers, progress=progress)


async def inspect_worker(
    redis: RedisTarget, worker: str | None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER,
) -> WorkerState:
    """One worker (None: the fleet set) (:meth:`StateAdmin.inspect_worker`)."""
    async with StateAdmin(redis, key_prefix=key_prefix, scope=scope) as admin:
        return await admin.inspect_worker(worker)


async def iter_revoked(
    redis: RedisTarget, worker: str | None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, newer_than: float | None = None, limit: int | None = None,
    bad: commands.BadMembers | None = None,
) -> AsyncIterator[tuple[str, float]]:
    """(task id, revocation time in epoch seconds) of a worker's set (None: the fleet set), newest
    first, in chunks (:meth:`StateAdmin.iter_revoked` gives :class:`Revocation` objects)."""
    async with StateAdmin(redis, key_prefix=key_prefix, scope=scope) as admin:
        async for row in admin.revoked_rows(worker, newer_than=newer_than, limit=limit, bad=bad):
            yield row


async def where_revoked(
    redis: RedisTarget, task_id: str, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> list[Revocation]:
    """Every revoked set holding ``task_id``, and since when (:meth:`StateAdmin.where_revoked`)."""
    async with StateAdmin(redis, key_prefix=key_prefix, concurrency=concurrency) as admin:
        return await admin.where_revoked(task_id, progress=progress)


async def purge_old_revoked(
    redis: RedisTarget, *, older_than: timedelta | float | int | str, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER, dry_run: bool = False,
    now: float | None = None, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """How many ids a purge by age removed (would, on dry_run) (:meth:`StateAdmin.purge_old_revoked`)."""
    async with StateAdmin(redis, key_prefix=key_prefix, scope=scope, concurrency=concurrency) as admin:
        report = await admin.purge_old_revoked(older_than=older_than, worker=worker_name, dry_run=dry_run, now=now,
                                               progress=progress)
        return report.removed


async def revoke(
    redis: RedisTarget, task_ids: Iterable[object], *, key_prefix: str = DEFAULT_KEY_PREFIX,
    revoked_at: float | None = None,
) -> int:
    """How many ids a producer-side revoke added to the fleet set (:meth:`StateAdmin.revoke`)."""
    async with StateAdmin(redis, key_prefix=key_prefix) as admin:
        return (await admin.revoke(task_ids, revoked_at=revoked_at)).added


async def restore(
    redis: RedisTarget, task_ids: Iterable[object], *, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER,
    concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """How many removals an un-revoke made (:meth:`StateAdmin.restore`, which also says where)."""
    async with StateAdmin(redis, key_prefix=key_prefix, scope=scope, concurrency=concurrency) as admin:
        return (await admin.restore(task_ids, worker=worker_name, progress=progress)).removed


async def forget(
    redis: RedisTarget, workers: Iterable[str], *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, live: Iterable[str] = (), dry_run: bool = False,
) -> ForgetReport:
    """:meth:`StateAdmin.forget` in one call."""
    async with StateAdmin(redis, key_prefix=key_prefix, scope=scope) as admin:
        return await admin.forget(workers, live=live, dry_run=dry_run)


async def prune(
    redis: RedisTarget, *, idle_for: timedelta | float | int | str, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, live: Iterable[str] = (), include_unknown: bool = False,
    dry_run: bool = False, now: float | None = None,
) -> PruneReport:
    """:meth:`StateAdmin.prune` in one call."""
    async with StateAdmin(redis, key_prefix=key_prefix, scope=scope) as admin:
        return await admin.prune(idle_for=idle_for, live=live, include_unknown=include_unknown, dry_run=dry_run,
                                 now=now)
