"""Async admin APIs over the stored stamped-header revokes: list, inspect, restore, purge by age.

Same conventions as :mod:`statedb.admin`: a Redis URL or an existing ``redis.asyncio``
client (never closed here), the workers' key prefix and scope, pipelined batches over
many workers with an optional ``progress(done, total)``. Live workers also need the
library's control commands (``celery_redis_statedb.restore_stamps`` and
``purge_old_revoked_tasks`` send them).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from statedb import stamps as stamp_commands
from statedb._async.repository import AsyncStateRepository
from statedb.admin import CONCURRENCY, Progress, RedisTarget, _in_batches, _Session, _session
from statedb.commands import BadMembers
from statedb.keys import DEFAULT_KEY_PREFIX, RedisKey, Scope, key_text
from statedb.operations import StateOperations
from statedb.stamps import Stamp, StampRow, encode_stamp
from statedb.timeframes import cutoff


@dataclass(frozen=True)
class StampsSetState:
    """One stamps set (a worker's, or the fleet's when ``worker`` is None)."""

    worker: str | None
    key: str
    stamps_count: int
    oldest: float | None
    newest: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def stamps_keys(session: _Session) -> list[tuple[str | None, RedisKey]]:
    """(worker, key) of every stamps set under the prefix, the fleet one (if any) last."""
    return await session.sets_of("stamps", session.schema.shared_stamps_key)


def _worker_stamps_key(session: _Session, worker: str | None) -> str:
    if worker is None:
        return session.schema.shared_stamps_key
    return session.schema.for_worker(worker, session.scope).stamps


async def _keys_for(session: _Session, worker_name: str | None) -> list[RedisKey]:
    if worker_name is None:
        return [key for _, key in await stamps_keys(session)]
    return [_worker_stamps_key(session, worker_name)]


async def inspect_stamps(
    redis: RedisTarget, workers: Iterable[str | None] | None = None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> list[StampsSetState]:
    """Count, oldest and newest revocation of the given workers' stamps sets (None: the fleet's), or of all."""
    async with _session(redis, key_prefix, scope) as session:
        pairs: list[tuple[str | None, RedisKey]]
        if workers is None:
            pairs = await stamps_keys(session)
        else:
            pairs = [(worker, _worker_stamps_key(session, worker)) for worker in workers]

        async def describe(batch: Sequence[tuple[str | None, RedisKey]]) -> list[StampsSetState]:
            def stage(pipe: Any) -> None:
                for _, key in batch:
                    pipe.zcard(key)
                    pipe.zrange(key, 0, 0, withscores=True)
                    pipe.zrange(key, -1, -1, withscores=True)

            replies = session.checked(await session.pipeline(stage), [key for _, key in batch for _ in range(3)])
            states = []
            for index, (worker, key) in enumerate(batch):
                count, first, last = replies[3 * index : 3 * index + 3]
                states.append(StampsSetState(worker, key_text(key), int(count), first[0][1] if first else None,
                                             last[0][1] if last else None))
            return states

        return await _in_batches(pairs, describe, concurrency=concurrency, progress=progress, batch_size=50)


async def iter_stamps(
    redis: RedisTarget, worker: str | None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, newer_than: float | None = None, limit: int | None = None,
    bad: BadMembers | None = None,
) -> AsyncIterator[StampRow]:
    """(header, value, revocation time) of a worker's stamps (None: the fleet's), newest first, in chunks
    (a corrupt member raises CorruptValueError, or, given ``bad``, is skipped and counted there)."""
    async with _session(redis, key_prefix, scope) as session:
        keys = session.schema.for_worker(worker or "fleet", session.scope)
        repository = AsyncStateRepository(session.client, StateOperations(keys, session.target), bad=bad)
        async for row in repository.iter_stamps(newer_than=newer_than, limit=limit, shared=worker is None):
            yield row


async def revoke_stamps(
    redis: RedisTarget, stamps: Iterable[Stamp], *, key_prefix: str = DEFAULT_KEY_PREFIX,
    revoked_at: float | None = None,
) -> int:
    """Producer-side durable stamp revoke: into the fleet stamps key, read by every worker at boot.

    Returns how many were new there. Live workers also need Celery's
    ``revoke_by_stamped_headers`` broadcast.
    """
    async with _session(redis, key_prefix, Scope.WORKER) as session:
        operation = session.fleet_operations().add_stamps(stamps, revoked_at, shared=True)
        result: int = operation.result(await session.pipeline(operation.stage))
        return result


async def _sum_over(session: _Session, keys: Sequence[RedisKey], operation: Any, *, concurrency: int,
                    progress: Progress | None) -> int:
    async def run(batch: Sequence[RedisKey]) -> list[int]:
        operations = [operation(key) for key in batch]

        def stage(pipe: Any) -> None:
            for op in operations:
                op.stage(pipe)

        replies = await session.pipeline(stage)
        results, start = [], 0
        for op in operations:
            width = len(op.keys)
            results.append(op.result(replies[start : start + width]))
            start += width
        return results

    return sum(await _in_batches(keys, run, concurrency=concurrency, progress=progress))


async def restore_stamps(
    redis: RedisTarget, stamps: Iterable[Stamp], *, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER,
    concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """Lift stamped-header revokes: remove them from every stamps set (or ``worker_name``'s); returns
    how many removals. Live workers keep them in memory until told
    (``celery_redis_statedb.restore_stamps`` broadcasts ``statedb_restore_stamps``)."""
    pairs = list(stamps)
    for header, value in pairs:
        encode_stamp(header, value)  # a bad one is an InvalidInputError before any I/O
    if not pairs:
        return 0
    async with _session(redis, key_prefix, scope) as session:
        keys = await _keys_for(session, worker_name)
        return await _sum_over(session, keys, lambda key: stamp_commands.remove_stamps(key, pairs),
                               concurrency=concurrency, progress=progress)


async def purge_old_stamps(
    redis: RedisTarget, *, older_than: timedelta | float | int | str, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER, dry_run: bool = False,
    now: float | None = None, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """Remove stamps revoked strictly before ``now - older_than`` from every stamps set and the fleet's
    (or ``worker_name``'s only); returns how many (would be, on dry_run)."""
    cut = cutoff(time.time() if now is None else now, older_than)
    async with _session(redis, key_prefix, scope) as session:
        keys = await _keys_for(session, worker_name)
        return await _sum_over(session, keys,
                               lambda key: stamp_commands.purge_stamps_before(key, cut, dry_run=dry_run),
                               concurrency=concurrency, progress=progress)
