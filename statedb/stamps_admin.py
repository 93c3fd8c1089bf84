"""Async admin API over the stored stamped-header revokes: list, inspect, revoke, restore, purge by age.

:class:`StampsAdmin` works on a :class:`statedb.admin.StateAdmin` (``admin.stamps``): the
same client, prefix and scope, the same conventions (results with ``as_dict()``, the
fleet's stamps set named ``"fleet"``, pipelined batches with an optional ``progress(done,
total)``, UnknownWorkerError for a worker with no state). The module-level functions are
shortcuts over one call each. Live workers also need the library's control commands
(``celery_redis_statedb.SyncStateAdmin`` sends them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from statedb import admin_commands as ops
from statedb import stamps as stamp_commands
from statedb.admin import (
    CONCURRENCY,
    FLEET,
    Progress,
    RedisTarget,
    Result,
    SetChange,
    StateAdmin,
    _in_batches,
    _is_fleet,
    utc,
)
from statedb.commands import BadMembers, Operation, combined
from statedb.keys import DEFAULT_KEY_PREFIX, RedisKey, Scope, key_text
from statedb.stamps import Stamp, StampRow, encode_stamp
from statedb.timeframes import as_seconds, cutoff


@dataclass(frozen=True)
class StampsSetState(Result):
    """One stamps set: a worker's, or the fleet's (``worker == "fleet"``)."""

    worker: str
    key: str
    stamps_count: int
    oldest: datetime | None
    newest: datetime | None


class StampsAdmin:
    """The stamped-header revokes of the workers a :class:`~statedb.admin.StateAdmin` is bound to."""

    def __init__(self, admin: StateAdmin) -> None:
        self.admin = admin

    def _key_of(self, worker: str | None) -> tuple[str, str]:
        """(owner, key) of the stamps set a worker reads and writes (the fleet's in the shared scope)."""
        schema = self.admin.schema
        if _is_fleet(worker):
            return FLEET, schema.shared_stamps_key
        key = schema.for_worker(str(worker), self.admin.scope).stamps
        return (FLEET if key == schema.shared_stamps_key else str(worker)), key

    async def sets(self, worker: str | None, *, every: bool) -> list[tuple[str, RedisKey]]:
        """Every stamps set (``every``), or the named worker's (checked to exist)."""
        if not every:
            if not _is_fleet(worker):
                await self.admin.inspect_worker(worker)
            return [self._key_of(worker)]
        found, fleet = await self.admin._scan()
        sets: list[tuple[str, RedisKey]] = [(name, item.keys["stamps"]) for name, item in found.items()
                                            if "stamps" in item.keys]
        if "stamps" in fleet:
            sets.append((FLEET, self.admin.schema.shared_stamps_key))
        return sets

    async def inspect_stamps(self, workers: Iterable[str | None] | None = None, *,
                             progress: Progress | None = None) -> list[StampsSetState]:
        """Count, oldest and newest revocation of the given workers' stamps sets (None or FLEET: the
        fleet's), or of every stamps set under the prefix."""
        if workers is None:
            sets = await self.sets(None, every=True)
        else:
            sets = []
            for worker in workers:
                sets.extend(await self.sets(worker, every=False))

        async def describe(batch: Sequence[tuple[str, RedisKey]]) -> list[StampsSetState]:
            facts = await self.admin.run(ops.describe([ops.Probe(stamps=key) for _, key in batch]))
            states = []
            for (owner, key), fact in zip(batch, facts, strict=True):
                found = fact.stamps or ops.SetFacts(0, None, None, None)
                states.append(StampsSetState(owner, key_text(key), found.count, utc(found.oldest), utc(found.newest)))
            return states

        return await _in_batches(sets, describe, concurrency=self.admin.concurrency, progress=progress,
                                 batch_size=50)

    async def iter_stamps(self, worker: str | None, *, newer_than: float | None = None, limit: int | None = None,
                          bad: BadMembers | None = None) -> AsyncIterator[StampRow]:
        """(header, value, revocation time) of a worker's stamps (None or FLEET: the fleet's), newest first,
        in chunks (a corrupt member raises CorruptValueError, or, given ``bad``, is skipped and counted)."""
        if not _is_fleet(worker):
            await self.admin.inspect_worker(worker)
        repository = self.admin._repository("fleet" if _is_fleet(worker) else str(worker), self.admin.scope, bad)
        async for row in repository.iter_stamps(newer_than=newer_than, limit=limit, shared=_is_fleet(worker)):
            yield row

    async def revoke_stamps(self, stamps: Iterable[Stamp], *, revoked_at: float | None = None) -> int:
        """Producer-side durable stamp revoke: into the fleet stamps set, read by every worker at boot;
        how many were new there (``revoked_at`` as in :meth:`StateAdmin.revoke`). Live workers also
        need Celery's ``revoke_by_stamped_headers``."""
        pairs = list(stamps)
        for header, value in pairs:
            encode_stamp(header, value)  # a bad one is an InvalidInputError before any I/O
        when = await self.admin.revocation_time(revoked_at)
        operation = self.admin._repository().operations.add_stamps(pairs, when, shared=True)
        return await self.admin.run(operation)

    async def restore_stamps(self, stamps: Iterable[Stamp], *, worker: str | None = None,
                             progress: Progress | None = None) -> int:
        """Lift stamped-header revokes: remove them from every stamps set (or ``worker``'s); how many
        removals. Live workers keep them in memory until told (``statedb_restore_stamps``)."""
        pairs = list(stamps)
        for header, value in pairs:
            encode_stamp(header, value)
        if not pairs:
            return 0
        sets = await self.sets(worker, every=worker is None)
        changes = await self._sum(sets, lambda key: stamp_commands.remove_stamps(key, pairs), progress)
        return sum(change.count for change in changes)

    async def purge_old_stamps(self, *, older_than: timedelta | float | int | str, worker: str | None = None,
                               dry_run: bool = False, now: float | None = None,
                               progress: Progress | None = None) -> int:
        """Remove stamps revoked strictly before ``now - older_than`` (the server's clock by default) from
        every stamps set and the fleet's (or ``worker``'s only); how many (would be, on dry_run)."""
        seconds = as_seconds(older_than)
        cut = cutoff(await self.admin.server_time() if now is None else now, seconds)
        return await self.purge_sets(await self.sets(worker, every=worker is None), cut, dry_run=dry_run,
                                     progress=progress)

    async def purge_sets(self, sets: Sequence[tuple[str, RedisKey]], cutoff_time: float, *, dry_run: bool,
                         progress: Progress | None = None) -> int:
        """Purge (or count) the stamps revoked strictly before ``cutoff_time`` in ``sets`` (from :meth:`sets`)."""
        changes = await self._sum(
            sets, lambda key: stamp_commands.purge_stamps_before(key, cutoff_time, dry_run=dry_run), progress)
        return sum(change.count for change in changes)

    async def _sum(self, sets: Sequence[tuple[str, RedisKey]], operation: Callable[[RedisKey], Operation[int]],
                   progress: Progress | None) -> list[SetChange]:
        async def run(batch: Sequence[tuple[str, RedisKey]]) -> list[SetChange]:
            counts = await self.admin.run(combined([operation(key) for _, key in batch]))
            return [SetChange(owner, key_text(key), count) for (owner, key), count in zip(batch, counts, strict=True)]

        return await _in_batches(sets, run, concurrency=self.admin.concurrency, progress=progress)


# -- the module-level shortcuts (the signatures they always had) -----------------------------------


def _admin(redis: RedisTarget, key_prefix: str, scope: Scope | str = Scope.WORKER,
           concurrency: int = CONCURRENCY) -> StateAdmin:
    return StateAdmin(redis, key_prefix=key_prefix, scope=scope, concurrency=concurrency)


async def inspect_stamps(
    redis: RedisTarget, workers: Iterable[str | None] | None = None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> list[StampsSetState]:
    """:meth:`StampsAdmin.inspect_stamps` in one call."""
    async with _admin(redis, key_prefix, scope, concurrency) as admin:
        return await admin.stamps.inspect_stamps(workers, progress=progress)


async def iter_stamps(
    redis: RedisTarget, worker: str | None, *, key_prefix: str = DEFAULT_KEY_PREFIX,
    scope: Scope | str = Scope.WORKER, newer_than: float | None = None, limit: int | None = None,
    bad: BadMembers | None = None,
) -> AsyncIterator[StampRow]:
    """:meth:`StampsAdmin.iter_stamps` in one call."""
    async with _admin(redis, key_prefix, scope) as admin:
        async for row in admin.stamps.iter_stamps(worker, newer_than=newer_than, limit=limit, bad=bad):
            yield row


async def revoke_stamps(
    redis: RedisTarget, stamps: Iterable[Stamp], *, key_prefix: str = DEFAULT_KEY_PREFIX,
    revoked_at: float | None = None,
) -> int:
    """:meth:`StampsAdmin.revoke_stamps` in one call."""
    async with _admin(redis, key_prefix) as admin:
        return await admin.stamps.revoke_stamps(stamps, revoked_at=revoked_at)


async def restore_stamps(
    redis: RedisTarget, stamps: Iterable[Stamp], *, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER,
    concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """:meth:`StampsAdmin.restore_stamps` in one call."""
    async with _admin(redis, key_prefix, scope, concurrency) as admin:
        return await admin.stamps.restore_stamps(stamps, worker=worker_name, progress=progress)


async def purge_old_stamps(
    redis: RedisTarget, *, older_than: timedelta | float | int | str, worker_name: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX, scope: Scope | str = Scope.WORKER, dry_run: bool = False,
    now: float | None = None, concurrency: int = CONCURRENCY, progress: Progress | None = None,
) -> int:
    """:meth:`StampsAdmin.purge_old_stamps` in one call."""
    async with _admin(redis, key_prefix, scope, concurrency) as admin:
        return await admin.stamps.purge_old_stamps(older_than=older_than, worker=worker_name, dry_run=dry_run,
                                                   now=now, progress=progress)
