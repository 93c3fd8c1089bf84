"""Boot: what Redis holds, merged into Celery's set and the index of the stored ids beyond it.

Each revoked set (the worker's own and, in worker scope, the fleet's) is read newest
first. Its newest ids, within Celery's in-memory limits, go into ``state.revoked``,
stamped on the local monotonic clock as old as they are (to within a window of 1% of
the expiry); the rest, within the horizon, go into the index, by rank, ids only.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery.utils.collections import LimitedSet

from celery_redis_statedb.revoked_set import merge_unrecorded, merge_unrecorded_pages
from celery_redis_statedb.stored_index import StoredIdIndex
from statedb._sync.repository import SyncStateRepository
from statedb.errors import WrongKeyTypeError

# Boot stamps ids by windows of this share of the revoke expiry (see cursors.WindowCursor).
STAMP_WINDOW = 0.01


@dataclass(frozen=True)
class MergeCounts:
    """Ids merged into Celery's own set, and stored ids beyond it honoured through the index."""

    in_memory: int
    in_index: int
    # Ids read from the fleet set and not from the worker's own (worker scope): written back there.
    fleet_ids: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def total(self) -> int:
        return self.in_memory + self.in_index


@contextmanager
def gc_paused() -> Iterator[None]:
    """Boot builds up to a million objects that all stay alive: meanwhile every pass of
    the cyclic garbage collector walks them again for nothing (a large share of the merge:
    see the benchmarks). Paused for the merge only, then restored as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def horizon_start(horizon: float | None, wall: float) -> float | None:
    """The earliest revocation time that still binds (None: every stored one)."""
    return None if horizon is None else wall - horizon


def merge_stored(repository: SyncStateRepository, revoked: LimitedSet, index: StoredIdIndex, *,
                 horizon: float | None, now: float | None = None) -> MergeCounts:
    """Merge every stored id within the horizon into ``revoked`` or ``index``.

    ``now`` is the wall-clock time the stored scores are compared with (the server's
    clock; local time by default)."""
    wall, mono = time.time() if now is None else now, time.monotonic()
    keys = repository.keys
    start = horizon_start(horizon, wall)
    in_memory = expected = 0
    beyond: list[Iterator[list[bytes]]] = []
    both = keys.revoked != keys.shared
    read_ids: dict[bool, list[str]] = {False: [], True: []}
    with gc_paused():
        for shared in (False, True) if both else (False,):
            try:
                # ``read``: the ranks the newest ids cover (bad members skipped among them included): the
                # index reads on below them. Never more: an id the count skipped would be in neither.
                read, merged = _merge_newest(repository, revoked, shared=shared, wall=wall, mono=mono,
                                             not_before=start, collect=read_ids[shared] if both else None)
                total, too_old = repository.count_within(start, shared=shared)
            except WrongKeyTypeError as exc:  # reported by the caller; boot on what can be read
                if repository.bad is None:
                    raise
                repository.bad.key_unreadable(exc)
                continue
            in_memory += merged
            if total - too_old > read:
                expected += total - too_old - read
                beyond.append(repository.iter_stored_ids(read, total - too_old, shared=shared))
        in_index = index.bulk_load(itertools.chain.from_iterable(itertools.chain.from_iterable(beyond)),
                                   expected=expected)
        fleet = frozenset(read_ids[True]).difference(read_ids[False]) if read_ids[True] else frozenset()
    return MergeCounts(in_memory, in_index, fleet)


def _merge_newest(repository: SyncStateRepository, revoked: LimitedSet, *, shared: bool, wall: float,
                  mono: float, not_before: float | None, collect: list[str] | None = None) -> tuple[int, int]:
    """(ids read, ids merged) of the newest ids of one set that fit Celery's limits; the ids
    read are appended to ``collect`` if given.

    Read newest first (the limit keeps the newest), inserted oldest first: O(1) heap pushes.
    The ids read are the set's first ranks, so the index reads on from there.
    """
    expires, maxlen = revoked.expires, revoked.maxlen
    if expires and math.isfinite(expires):  # CELERY_WORKER_REVOKE_EXPIRES=inf: never expire
        newer_than = wall - expires if not_before is None else max(wall - expires, not_before)
        # Ids only, by windows of 1% of the expiry: each id is taken to be at most
        # that much younger than it is (kept that much longer, never less).
        cursor = repository.operations.revoked_windows(wall, newer_than, expires * STAMP_WINDOW, maxlen or None,
                                                       shared=shared, bad=repository.bad)
        pages = list(repository.iter_revoked_windows(cursor))
        pages.reverse()
        # Bad members skipped in pages read ahead (past the size cap) and never handed out are no ranks read.
        read = cursor.ranks
        if collect is not None:
            for _, ids in pages:
                collect.extend(ids)
        return read, merge_unrecorded_pages(revoked, pages, wall=wall, mono=mono)
    skipped = repository.bad.count if repository.bad is not None else 0
    rows = list(repository.iter_revoked(newer_than=not_before, limit=maxlen or None, shared=shared))
    rows.reverse()
    if collect is not None:
        collect.extend(task_id for task_id, _ in rows)
    read = len(rows) + (repository.bad.count - skipped if repository.bad is not None else 0)
    return read, merge_unrecorded(revoked, rows, wall=wall, mono=mono)
