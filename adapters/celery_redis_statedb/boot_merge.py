"""Boot: what Redis holds, merged into Celery's set and the index of the stored ids beyond it.

Each revoked set (the worker's own and, in worker scope, the fleet's) is read newest
first. Its newest ids, within Celery's in-memory limits, go into ``state.revoked``,
stamped on the local monotonic clock as old as they are (to within a window of 1% of
the expiry); the rest, within the horizon, go into the index, by rank, ids only. The
fleet set, which every worker reads, comes from its snapshot (:mod:`fleet_snapshot`)
plus the ids newer than it.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery.utils.collections import LimitedSet

from celery_redis_statedb.fleet_snapshot import SnapshotPolicy, head_operation, open_snapshot
from celery_redis_statedb.revoked_set import merge_unrecorded_pages
from celery_redis_statedb.stored_index import StoredIdIndex
from statedb import commands
from statedb._sync.repository import SyncStateRepository
from statedb.errors import AccessDeniedError, StateDataError, WrongKeyTypeError

# Boot stamps ids by windows of this share of the revoke expiry (see cursors.WindowCursor).
STAMP_WINDOW = 0.01
DEFAULT_SNAPSHOT_POLICY = SnapshotPolicy()


@dataclass(frozen=True)
class MergeCounts:
    """Ids merged into Celery's own set, and stored ids beyond it honoured through the index."""

    in_memory: int
    in_index: int
    # Ids read from the fleet set and not from the worker's own (worker scope): written back there.
    fleet_ids: frozenset[str] = field(default=frozenset(), compare=False)
    # How the fleet set was read: "snapshot", "built" (a snapshot built by this boot), "set" (as it is).
    fleet_source: str = field(default="", compare=False)

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
                 horizon: float | None, now: float | None = None,
                 snapshot: SnapshotPolicy | None = DEFAULT_SNAPSHOT_POLICY) -> MergeCounts:
    """Merge every stored id within the horizon into ``revoked`` or ``index``.

    ``now`` is the wall-clock time the stored scores are compared with (the server's
    clock; local time by default). The fleet set is read from its snapshot, plus the ids
    newer than it, unless ``snapshot`` is None (the read of 0.5: the whole set).
    """
    wall, mono = time.time() if now is None else now, time.monotonic()
    keys = repository.keys
    start = horizon_start(horizon, wall)
    in_memory = expected = 0
    beyond: list[Iterable[list[bytes]]] = []
    both = keys.revoked != keys.shared
    read_ids: dict[bool, list[str]] = {False: [], True: []}
    source = ""
    own, head = _first_trip(repository, start) if both and snapshot is not None else (None, None)
    with gc_paused():
        for shared in (False, True) if both else (False,):
            fleet = shared or keys.revoked == keys.shared  # the fleet set (in shared scope, the worker's own)
            try:
                read = _read_set(repository, revoked, shared=shared, wall=wall, start=start,
                                 snapshot=snapshot if fleet else None, counted=None if fleet else own,
                                 head=head if fleet else None)
            except WrongKeyTypeError as exc:  # reported by the caller; boot on what can be read
                if repository.bad is None:
                    raise
                repository.bad.key_unreadable(exc)
                continue
            if read.source:
                source = read.source
            in_memory += merge_unrecorded_pages(revoked, read.pages, wall=wall, mono=mono)
            if both:
                for _, ids in read.pages:
                    read_ids[shared].extend(ids)
            expected += read.index_count
            beyond.append(read.index)
            # ``read.ranks``: the ranks the newest ids cover (bad members skipped among them included): the
            # index reads on below them. Never more: an id the count skipped would be in neither.
            if read.stop > read.ranks:
                expected += read.stop - read.ranks
                beyond.append(repository.iter_stored_ids(read.ranks, read.stop, shared=shared))
                beyond.append(_pushed_down(repository, shared=shared, low=read.low, counted=read.stop))
        in_index = index.bulk_load(itertools.chain.from_iterable(itertools.chain.from_iterable(beyond)),
                                   expected=expected)
        fleet_ids = frozenset(read_ids[True]).difference(read_ids[False]) if read_ids[True] else frozenset()
    return MergeCounts(in_memory, in_index, fleet_ids, source)


@dataclass
class _SetRead:
    """One set's share of the boot: pages for Celery's set (oldest first), stored ids for the index, and
    the ranks ``ranks`` to ``stop - 1`` still to read into the index."""

    pages: list[tuple[float, list[str]]]
    ranks: int
    stop: int
    index: Iterable[list[bytes]] = ()  # pages of stored ids (from a snapshot)
    index_count: int = 0
    source: str = ""  # for the fleet set: "snapshot", "built" (here) or "set"
    low: float | str = "-inf"  # ranks 0 to ``stop - 1`` are the ids scored this or more ("(x": more than x)


def _first_trip(repository: SyncStateRepository, start: float | None
                ) -> tuple[tuple[int, int] | None, tuple[bytes, int] | None]:
    """The worker's own set's counts and the fleet snapshot's first slice in one round trip (None, None
    if a key refuses: each is then read on its own, and reports its own error)."""
    try:
        return repository.run(commands.combine(repository.operations.count_within(start),
                                                   head_operation(repository)))
    except (StateDataError, AccessDeniedError):
        return None, None


def _read_set(repository: SyncStateRepository, revoked: LimitedSet, *, shared: bool, wall: float,
              start: float | None, snapshot: SnapshotPolicy | None, counted: tuple[int, int] | None = None,
              head: tuple[bytes, int] | None = None) -> _SetRead:
    """``counted``: the set's counts (count_within), if read already; ``head``: the snapshot's first trip."""
    opened = None if snapshot is None else open_snapshot(repository, snapshot, horizon_start=start, now=wall,
                                                         head=head)
    if opened is not None:
        # Only the ids newer than the snapshot are read from the set: they are its first ranks.
        ranks, loaded, pages = _read_newest(repository, revoked, shared=shared, wall=wall, not_before=start,
                                            above=opened.max_score) if opened.newer else (0, 0, [])
        opened.report_bad(repository)
        room = revoked.maxlen - loaded if revoked.maxlen else None
        part = opened.body.partition(room=room, memory_from=_memory_floor(revoked, wall, start), horizon_from=start)
        within = opened.total - opened.too_old
        newer_only = opened.newer <= within  # else the horizon starts above the snapshot's newest id
        low: float | str = f"({opened.max_score!r}" if newer_only else ("-inf" if start is None else start)
        return _SetRead(part.memory + pages, ranks, min(opened.newer, within), part.index, part.index_count,
                        opened.source, low)
    source = "set" if snapshot is not None else ""
    # The set's size, read already if the first trip counted it (its ZCARD, or the snapshot's head's).
    size = counted[0] if counted else (head[1] if head else repository.count_within(start, shared=shared)[0])
    if not size:  # empty (a new worker's own): no windows
        return _SetRead([], 0, 0, source=source)
    ranks, _, pages = _read_newest(repository, revoked, shared=shared, wall=wall, not_before=start)
    total, too_old = repository.count_within(start, shared=shared)
    return _SetRead(pages, ranks, total - too_old, source=source, low="-inf" if start is None else start)


MAX_CATCH_UPS = 8


def _pushed_down(repository: SyncStateRepository, *, shared: bool, low: float | str, counted: int
                 ) -> Iterator[list[bytes]]:
    """The ids that ids added meanwhile at the top pushed past the ranks read (run once those are read).

    ``counted``: how many ids scored ``low`` or more the set held when the ranks to read were decided
    (ranks ``0`` to ``counted - 1``). k ids added above push the last k of them to the ranks that
    follow: read those too (again, until the count holds still). Ids read twice are harmless.
    """
    for _ in range(MAX_CATCH_UPS):
        now = repository.run(repository.operations.count_from(low, shared=shared))
        if now <= counted:
            return
        yield from repository.iter_stored_ids(counted, now, shared=shared)
        counted = now


def _memory_floor(revoked: LimitedSet, wall: float, start: float | None) -> float | None:
    """The oldest revocation time Celery's set keeps (None: any)."""
    expires: float | None = revoked.expires
    if expires and math.isfinite(expires):
        return wall - expires if start is None else max(wall - expires, start)
    return start


def _read_newest(repository: SyncStateRepository, revoked: LimitedSet, *, shared: bool, wall: float,
                 not_before: float | None, above: float | None = None
                 ) -> tuple[int, int, list[tuple[float, list[str]]]]:
    """(ranks read, ids kept, pages) of the newest ids of one set that fit Celery's limits (only those
    scored above ``above`` if given); pages are (stamp, ids newest first), oldest page first.

    The ids read are the set's first ranks, so the index reads on from there.
    """
    expires, maxlen = revoked.expires, revoked.maxlen
    if expires and math.isfinite(expires):  # CELERY_WORKER_REVOKE_EXPIRES=inf: never expire
        newer_than = _memory_floor(revoked, wall, not_before)
        assert newer_than is not None
        strictly = above is not None and above >= newer_than
        # Ids only, by windows of 1% of the expiry: each id is taken to be at most
        # that much younger than it is (kept that much longer, never less).
        cursor = repository.operations.revoked_windows(
            wall, above if strictly and above is not None else newer_than, expires * STAMP_WINDOW, maxlen or None,
            shared=shared, bad=repository.bad, above=strictly)
        pages = list(repository.iter_revoked_windows(cursor))
        pages.reverse()
        # Bad members skipped in pages read ahead (past the size cap) and never handed out are no ranks read.
        return cursor.ranks, cursor.loaded, pages
    floor = not_before if above is None or (not_before is not None and not_before > above) else above
    skipped = repository.bad.count if repository.bad is not None else 0
    rows = list(repository.iter_revoked(newer_than=floor, limit=maxlen or None, shared=shared))
    read = len(rows) + (repository.bad.count - skipped if repository.bad is not None else 0)
    # Rows at exactly ``above`` are the snapshot's: counted as ranks read, not merged twice.
    kept = [(score, [task_id]) for task_id, score in reversed(rows) if above is None or score > above]
    return read, len(kept), kept
