"""Async admin APIs over every worker's stored state: list, inspect, purge, revoke, restore.

For asyncio services and admin backends; no Celery needed. Each function takes a
Redis URL or an existing ``redis.asyncio`` client (a client passed in is never
closed here), and the key prefix and scope of the workers' configuration. Work
across many workers runs in pipelined batches with bounded concurrency and can
report progress as ``progress(done, total)``. Worker names are data: they are
never put in a SCAN pattern, so glob characters match nothing but themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from statedb import commands, snapshot
from statedb._async.clients import open_async_client
from statedb._async.repository import AsyncStateRepository
from statedb.config import StateDBConfig
from statedb.errors import StateDBError
from statedb.keys import CLOCK_SUFFIX, DEFAULT_KEY_PREFIX, REVOKED_SUFFIX, KeySchema, RedisKey, Scope, key_text
from statedb.operations import StateOperations
from statedb.timeframes import cutoff, purge_range
from statedb.translate import translate_exception, translate_reply_error

T = TypeVar("T")
R = TypeVar("R")
RedisTarget = str | aioredis.Redis
Progress = Callable[[int, int], None]

BATCH_SIZE = 200
CONCURRENCY = 8
SHARED = None  # the worker of the fleet-wide set, in results


@dataclass(frozen=True)
class RevokedSetState:
    """One revoked set (a worker's, or the fleet's when ``worker`` is None) and its worker's clock."""

    worker: str | None
    key: str
    revoked_count: int
    oldest: float | None
    newest: float | None
    clock: int | None
    memory_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Revocation:
    """Where a task id is revoked, and since when (wall-clock seconds)."""

    task_id: str
    worker: str | None
    key: str
    revoked_at: float


class _Session:
    """A client, the key schema, and error translation naming ``target`` (a masked URL)."""

    def __init__(self, client: aioredis.Redis, schema: KeySchema, scope: Scope, target: str) -> None:
        self.client, self.schema, self.scope, self.target = client, schema, scope, target

    async def pipeline(self, stage: Callable[[Any], None]) -> list[Any]:
        try:
            pipe = self.client.pipeline(transaction=False)
            stage(pipe)
            return list(await pipe.execute(raise_on_error=False))
        except (RedisError, OSError) as exc:
            raise translate_exception(exc, target=self.target) from exc

    def checked(self, replies: Sequence[Any], keys: Sequence[RedisKey]) -> list[Any]:
        for reply, key in zip(replies, keys, strict=True):
            if isinstance(reply, Exception):
                raise translate_reply_error(reply, key=key_text(key)) from reply
        return list(replies)

    async def revoked_keys(self) -> list[tuple[str | None, RedisKey]]:
        """(worker, key) of every revoked set under the prefix, the fleet set (if any) last."""
        return await self.sets_of("revoked", self.schema.shared_revoked_key)

    async def sets_of(self, kind: str, fleet_key: str) -> list[tuple[str | None, RedisKey]]:
        """(worker, key) of every worker key of ``kind`` under the prefix, ``fleet_key`` (if any) last.

        Keys are the bytes SCAN returned, used as they are (a name that is not UTF-8, or holds a
        newline, is still purged, restored and inspected); the worker is their text form (key_text).
        """
        found: list[tuple[str | None, RedisKey]] = []
        fleet_raw, fleet_exists = fleet_key.encode("utf-8"), False
        try:
            async for raw in self.client.scan_iter(match=self.schema.match_all, count=1000):
                if raw == fleet_raw:
                    fleet_exists = True
                parsed = self.schema.parse(key_text(raw))
                if parsed is not None and parsed[1] == kind:
                    found.append((parsed[0], bytes(raw)))
        except (RedisError, OSError) as exc:
            raise translate_exception(exc, target=self.target) from exc
        found.sort(key=lambda pair: pair[1])
        if fleet_exists:
            found.append((SHARED, fleet_key))
        return found

    def clock_key_of(self, worker: str | None, key: RedisKey) -> RedisKey | None:
        """The clock key beside a worker's revoked set (None for the fleet set); built from the bytes
        of a key found by SCAN, so a name no KeySchema accepts still finds its clock."""
        if worker is None:
            return None
        if isinstance(key, bytes) and key.endswith(REVOKED_SUFFIX.encode()):
            return key[: -len(REVOKED_SUFFIX)] + CLOCK_SUFFIX.encode()
        return self.schema.clock_key(worker)

    def fleet_operations(self) -> StateOperations:
        """The operations on the fleet-wide keys (any worker name gives them in shared scope)."""
        return StateOperations(self.schema.for_worker("fleet", Scope.SHARED), self.target)

    def worker_revoked_key(self, worker: str | None) -> str:
        if worker is None:
            return self.schema.shared_revoked_key
        return self.schema.for_worker(worker, self.scope).revoked


@asynccontextmanager
async def _session(redis: RedisTarget, key_prefix: str, scope: Scope | str) -> AsyncIterator[_Session]:
    schema, chosen = KeySchema(key_prefix), Scope(scope)
    if isinstance(redis, str):
        config = StateDBConfig(url=redis, key_prefix=key_prefix, scope=chosen)
        client = open_async_client(config)
        try:
            yield _Session(client, schema, chosen, config.safe_url)
        finally:
            await client.aclose()
    else:
        yield _Session(redis, schema, chosen, "the Redis client passed in")


async def _in_batches(
    items: Sequence[T], work: Callable[[Sequence[T]], Awaitable[list[R]]], *,
    concurrency: int, progress: Progress | None, batch_size: int = BATCH_SIZE,
) -> list[R]:
    """Run ``work`` over pipelined batches, at most ``concurrency`` at a time, results in order."""
    if concurrency < 1:
        raise StateDBError(f"concurrency must be at least 1, got {concurrency}")
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


async def _sum_per_set(
    session: _Session, worker_name: str | None, command: Callable[[Any, RedisKey], Any], *,
    concurrency: int, progress: Progress | None,
) -> int:
    """Stage ``command(pipe, key)`` on every revoked set (or ``worker_name``'s); sum the integer replies."""
    keys: list[RedisKey]
    if worker_name is None:
        keys = [key for _, key in await session.revoked_keys()]
    else:
        keys = [session.worker_revoked_key(worker_name)]

    async def run(batch: Sequence[RedisKey]) -> list[int]:
        def stage(pipe: Any) -> None:
            for key in batch:
                command(pipe, key)

        return [int(n) for n in session.checked(await session.pipeline(stage), batch)]

    return sum(await _in_batches(keys, run, concurrency=concurrency, progress=progress))


async def list_workers(redis: RedisTarget, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> list[str]:
    """Names of the workers with a revoked set or a clock under the prefix, sorted."""
    async with _session(redis, key_prefix, Scope.WORKER) as session:
        names: set[str] = set()
        try:
            async for raw in session.client.scan_iter(match=session.schema.match_all, count=1000):
                parsed = session.schema.parse(key_text(raw))
                if parsed is not None:
                    names.add(parsed[0])
        except (RedisError, OSError) as exc:
            raise translate_exception(exc, target=session.target) from exc
        return sorted(names)


async def _describe(session: _Session, pairs: Sequence[tuple[str | None, RedisKey]]) -> list[RevokedSetState]:
    """Counts, oldest/newest, clock and memory of each (worker, key), in one pipeline."""
    clock_keys = [session.clock_key_of(worker, key) for worker, key in pairs]

    def stage(pipe: Any) -> None:
        for (_, key), clock_key in zip(pairs, clock_keys, strict=True):
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zrange(key, -1, -1, withscores=True)
            pipe.memory_usage(key)
            if clock_key is not None:
                pipe.get(clock_key)

    replies = iter(await session.pipeline(stage))
    states = []
    for (worker, key), clock_key in zip(pairs, clock_keys, strict=True):
        count, first, last = session.checked([next(replies), next(replies), next(replies)], [key] * 3)
        memory = next(replies)
        clock = None
        if clock_key is not None:
            raw = session.checked([next(replies)], [clock_key])[0]
            clock = None if raw is None else commands.parse_clock(key_text(clock_key), raw)
        states.append(RevokedSetState(
            worker=worker, key=key_text(key), revoked_count=int(count),
            oldest=first[0][1] if first else None, newest=last[0][1] if last else None, clock=clock,
            # MEMORY USAGE may be refused by an ACL or a managed Redis: then it is unknown.
            memory_bytes=memory if isinstance(memory, int) else None,
        ))
    return states


async def inspect_workers(
    redis: RedisTarget, workers: Iterable[str | None] | None = None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> list[RevokedSetState]:
    """The state of the given workers (None: the fleet set), or of every revoked set under the prefix."""
    async with _session(redis, key_prefix, scope) as session:
        if workers is None:
            pairs = await session.revoked_keys()
        else:
            pairs = [(worker, session.worker_revoked_key(worker)) for worker in workers]
        return await _in_batches(pairs, lambda batch: _describe(session, batch),
                                 concurrency=concurrency, progress=progress, batch_size=50)


async def inspect_worker(
    redis: RedisTarget, worker: str | None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER,
) -> RevokedSetState:
    """One worker's revoked set and clock (``worker=None``: the fleet set)."""
    (state,) = await inspect_workers(redis, [worker], key_prefix=key_prefix, scope=scope)
    return state


async def iter_revoked(
    redis: RedisTarget, worker: str | None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, newer_than: float | None = None, limit: int | None = None,
    bad: commands.BadMembers | None = None,
) -> AsyncIterator[tuple[str, float]]:
    """(task id, revocation time) of a worker's set (None: the fleet set), newest first, in chunks.

    A member that cannot be an id raises CorruptValueError, or, given ``bad``, is skipped and counted there."""
    async with _session(redis, key_prefix, scope) as session:
        # Any name gives the fleet key; shared=True below reads it when worker is None.
        keys = session.schema.for_worker(worker or "fleet", session.scope)
        operations = StateOperations(keys, session.target)
        repository = AsyncStateRepository(session.client, operations, bad=bad)
        async for row in repository.iter_revoked(newer_than=newer_than, limit=limit, shared=worker is None):
            yield row


async def where_revoked(
    redis: RedisTarget, task_id: str, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> list[Revocation]:
    """Every revoked set holding ``task_id``, with the time it was revoked there."""
    member = commands.encode_task_ids([task_id])[0]
    async with _session(redis, key_prefix, Scope.WORKER) as session:
        pairs = await session.revoked_keys()

        async def look(batch: Sequence[tuple[str | None, RedisKey]]) -> list[Revocation]:
            def stage(pipe: Any) -> None:
                for _, key in batch:
                    pipe.zscore(key, member)

            replies = session.checked(await session.pipeline(stage), [key for _, key in batch])
            return [Revocation(task_id, worker, key_text(key), float(score))
                    for (worker, key), score in zip(batch, replies, strict=True) if score is not None]

        return await _in_batches(pairs, look, concurrency=concurrency, progress=progress)


async def purge_old_revoked(
    redis: RedisTarget, *, older_than: timedelta | float | int | str, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER, dry_run: bool = False,
    now: float | None = None, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """Remove ids revoked more than ``older_than`` ago; returns how many (would be, on dry_run).

    From every worker's set and the fleet set, or from ``worker_name``'s set only.
    An id revoked exactly at the cutoff is kept.
    """
    low, high = purge_range(cutoff(time.time() if now is None else now, older_than))
    command = "zcount" if dry_run else "zremrangebyscore"
    async with _session(redis, key_prefix, scope) as session:
        if not dry_run:
            await _fleet_snapshot_stale(session)
        removed = await _sum_per_set(session, worker_name, lambda pipe, key: getattr(pipe, command)(key, low, high),
                                     concurrency=concurrency, progress=progress)
        if not dry_run:
            await _fleet_snapshot_stale(session)
        await _purge_old_stamps(session.client, older_than=older_than, worker_name=worker_name,  # stamped-header
                                key_prefix=key_prefix, scope=scope, dry_run=dry_run, now=now)  # revokes
        return removed


async def revoke(
    redis: RedisTarget, task_ids: Iterable[object], *, key_prefix: str = DEFAULT_KEY_PREFIX,
    revoked_at: float | None = None,
) -> int:
    """Producer-side durable revoke: write ids to the fleet set, which every worker reads at boot.

    Returns how many were new there. Live workers also need Celery's own revoke broadcast
    (``celery_redis_statedb.revoke_tasks`` does both).
    """
    async with _session(redis, key_prefix, Scope.WORKER) as session:
        operation = session.fleet_operations().add_revoked(task_ids, revoked_at)
        return operation.result(await session.pipeline(operation.stage))


async def restore(
    redis: RedisTarget, task_ids: Iterable[object], *, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER,
    concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """Un-revoke: remove ids from every revoked set (or ``worker_name``'s); returns how many removals.

    Live workers keep the ids in memory until told: ``celery_redis_statedb.restore_tasks``
    also broadcasts the library's ``statedb_restore`` control command.
    """
    members = commands.encode_task_ids(task_ids)
    if not members:
        return 0
    async with _session(redis, key_prefix, scope) as session:
        await _fleet_snapshot_stale(session)
        removed = await _sum_per_set(session, worker_name, lambda pipe, key: pipe.zrem(key, *members),
                                     concurrency=concurrency, progress=progress)
        await _fleet_snapshot_stale(session)
        return removed


async def _fleet_snapshot_stale(session: _Session) -> None:
    """Every removal from the fleet set (or that may touch it) marks its snapshot stale, before and after
    it removes (:func:`statedb.snapshot.mark_stale`): a booting worker then never takes a removed id for
    stored, nor misses one written late with an old score."""
    operation = snapshot.mark_stale(session.schema.shared_revoked_key)
    operation.result(await session.pipeline(operation.stage))


async def _purge_old_stamps(redis: RedisTarget, **kwargs: Any) -> int:
    """statedb.stamps_admin.purge_old_stamps (imported here: that module builds on this one)."""
    from statedb.stamps_admin import purge_old_stamps

    return await purge_old_stamps(redis, **kwargs)
