"""Write-through for Celery's ``state.revoked``, changed in place.

``celery.worker.request`` and others bind ``state.revoked`` at import time, so the
object must stay the same: its class is swapped for a subclass that reports
every id entering it to a recorder. ``clear()`` (run by every prefork child),
``discard()`` and ``purge()`` are Celery's own and never touch Redis.

Membership (``id in state.revoked``, which every check of Celery's goes through)
also asks the stored revokes beyond the set (see :mod:`stored_revokes`) about ids
the set does not hold, and ids the set drops (``pop()``, which its size cap and
expiry go through) are handed over to them.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from celery.utils.collections import LimitedSet

_quiet = threading.local()
_pop = LimitedSet.pop


class RevokeRecorder(Protocol):
    def record(self, task_ids: Sequence[object]) -> None:
        """Persist ids that just entered the set; must never raise."""


class StoredBeyond(Protocol):
    """The stored revokes beyond the set."""

    def binds(self, task_id: object) -> bool:
        """True if ``task_id``, not in the set, is revoked all the same."""

    def evicted(self, task_id: object) -> None:
        """The set dropped ``task_id`` to keep within its limits."""

    def evicted_many(self, task_ids: Sequence[object]) -> None:
        """The set dropped these while one batch went in."""


@contextmanager
def _recording_paused() -> Iterator[None]:
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet.depth -= 1


class WriteThroughLimitedSet(LimitedSet):  # type: ignore[misc]
    """A LimitedSet whose additions are recorded before the caller goes on."""

    _statedb_stored: StoredBeyond | None = None
    _statedb_evicted: list[object] | None = None  # set while a batch goes in: evictions handed over at its end

    def __contains__(self, value: object) -> bool:
        if value in self._data:
            return True
        stored = self._statedb_stored
        return stored is not None and stored.binds(value)

    def pop(self, default: Any = None) -> Any:
        item = _pop(self, default)
        if item is not default:
            batch = self._statedb_evicted
            if batch is not None:
                batch.append(item)
            elif self._statedb_stored is not None:
                self._statedb_stored.evicted(item)
        return item

    def _record(self, task_ids: Sequence[object]) -> None:
        recorder = self.__dict__.get("_statedb_recorder")
        if recorder is not None and task_ids and not getattr(_quiet, "depth", 0):
            recorder.record(task_ids)

    def add(self, item: Any, now: float | None = None) -> None:
        super().add(item, now)
        self._record((item,))

    def update(self, other: Any) -> None:
        """Add many ids; they are recorded in one batch (one Redis round trip)."""
        if not other:
            return
        if isinstance(other, (LimitedSet, dict)):
            ids = list(other._data if isinstance(other, LimitedSet) else other)
            with _recording_paused():
                super().update(other)
        else:
            # What LimitedSet.update does with an iterable (the revoke command's list),
            # without going through our add() and _record() once per id.
            ids = list(other)
            add = LimitedSet.add
            stored = self._statedb_stored
            if stored is None or len(self._data) + len(ids) < self.maxlen or not self.maxlen:
                for item in ids:
                    add(self, item)
            else:  # a full set drops one id per id added: handed over to the index in one go
                evicted: list[object] = []
                self._statedb_evicted = evicted
                try:
                    for item in ids:
                        add(self, item)
                finally:
                    self._statedb_evicted = None
                    stored.evicted_many(evicted)
        self._record(ids)


def attach(revoked: LimitedSet, recorder: RevokeRecorder, *, stored: StoredBeyond | None = None) -> None:
    """Make ``revoked`` (the very object Celery uses) report its additions to ``recorder``,
    and, given ``stored``, honour the stored revokes beyond it."""
    revoked.__dict__["_statedb_recorder"] = recorder
    if stored is not None:
        revoked.__dict__["_statedb_stored"] = stored
    revoked.__class__ = WriteThroughLimitedSet
    # CPython >= 3.11 keeps attribute values inline, laid out for the class the object
    # was built as: after the class swap every attribute read in add() and purge()
    # takes the slow path (revokes slower in memory). A fresh dict of the same
    # attributes (same object, same values) makes them plain dict reads again.
    revoked.__dict__ = dict(revoked.__dict__)


def detach(revoked: LimitedSet) -> None:
    revoked.__dict__.pop("_statedb_recorder", None)
    revoked.__dict__.pop("_statedb_stored", None)
    if type(revoked) is WriteThroughLimitedSet:
        revoked.__class__ = LimitedSet


def _local_stamp(revoked_at: float, *, wall: float, mono: float) -> float:
    """A wall-clock time on the local monotonic clock, as old as it is (never in the future)."""
    return min(mono, mono - wall + revoked_at)


def merge_unrecorded_pages(revoked: LimitedSet, pages: Sequence[tuple[float, list[str]]], *, wall: float,
                           mono: float) -> int:
    """Put ids loaded from Redis into memory without writing them back; returns how many.

    ``pages`` are (wall-clock time, ids newest first) of ids sharing one revocation time, oldest page
    first; each id is stamped on the local monotonic clock as old as it really is (never in the future).
    """
    if not revoked and _bulk_load(revoked, pages, wall=wall, mono=mono):
        return sum(len(ids) for _, ids in pages)  # as add() counts: every id merged, whatever the limit kept
    add = LimitedSet.add
    merged = 0
    for revoked_at, ids in pages:
        stamp = _local_stamp(revoked_at, wall=wall, mono=mono)
        for task_id in reversed(ids):
            add(revoked, task_id, stamp)
        merged += len(ids)
    return merged


def _entry_shape() -> int | None:
    """The length of the entries LimitedSet.add builds in this Celery, if it is a shape we know."""
    probe = LimitedSet()
    LimitedSet.add(probe, "probe", 1.0)
    entry = probe._data.get("probe")
    if entry == (1.0, "probe"):  # Celery <= 5.6: (stamp, item)
        return 2
    if (isinstance(entry, tuple) and len(entry) == 3 and entry[0] == 1.0 and entry[2] == "probe"
            and isinstance(getattr(probe, "_seq", None), itertools.count)):  # 5.7: (stamp, seq, item)
        return 3
    return None


def _bulk_load(revoked: LimitedSet, pages: Sequence[tuple[float, list[str]]], *, wall: float,
               mono: float) -> bool:
    """Fill an empty set with the entries add() would build, in one pass; False if it cannot.

    A million add() calls cost more than reading the ids from Redis; the entries are
    built the way add() builds them (the shape is probed, never assumed), oldest
    first, which for (stamp, seq, item) entries is already a valid heap.
    """
    shape = _entry_shape()
    if shape is None or revoked._heap:
        return False
    task_ids: list[str] = []
    stamps: list[float] = []
    for revoked_at, ids in pages:
        task_ids.extend(reversed(ids))
        stamps.extend(itertools.repeat(_local_stamp(revoked_at, wall=wall, mono=mono), len(ids)))
    # zip stops at the last stamp, before taking one more sequence number from the endless _seq.
    entries = list(zip(stamps, revoked._seq, task_ids, strict=False) if shape == 3
                   else zip(stamps, task_ids, strict=True))
    revoked._data.update(zip(task_ids, entries, strict=True))
    if len(revoked._data) != len(entries):  # a duplicate id: let add() sort it out
        revoked._data.clear()
        return False
    revoked._heap.extend(entries)
    if shape == 2:  # (stamp, item) entries of one page compare by item
        heapq.heapify(revoked._heap)
    if revoked.maxlen and len(revoked._data) >= revoked.maxlen:
        revoked.purge()  # as add() does: the limit, and expiry on the way
    return True
