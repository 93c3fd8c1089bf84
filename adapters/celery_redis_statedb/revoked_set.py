"""Write-through for Celery's ``state.revoked``, changed in place.

``celery.worker.request`` and others bind ``state.revoked`` at import time, so the
object must stay the same: its class is swapped for a subclass that reports
every id entering it to a recorder. ``clear()`` (run by every prefork child),
``discard()`` and ``purge()`` are Celery's own and never touch Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from celery.utils.collections import LimitedSet

_quiet = threading.local()


class RevokeRecorder(Protocol):
    def record(self, task_ids: Sequence[object]) -> None:
        """Persist ids that just entered the set; must never raise."""


@contextmanager
def _recording_paused() -> Iterator[None]:
    _quiet.active = True
    try:
        yield
    finally:
        _quiet.active = False


class WriteThroughLimitedSet(LimitedSet):  # type: ignore[misc]
    """A LimitedSet whose additions are recorded before the caller goes on."""

    def _record(self, task_ids: Sequence[object]) -> None:
        recorder = self.__dict__.get("_statedb_recorder")
        if recorder is not None and task_ids and not getattr(_quiet, "active", False):
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
        else:
            other = ids = list(other)
        with _recording_paused():
            super().update(other)
        self._record(ids)


def attach(revoked: LimitedSet, recorder: RevokeRecorder) -> None:
    """Make ``revoked`` (the very object Celery uses) report its additions to ``recorder``."""
    revoked.__dict__["_statedb_recorder"] = recorder
    revoked.__class__ = WriteThroughLimitedSet


def detach(revoked: LimitedSet) -> None:
    revoked.__dict__.pop("_statedb_recorder", None)
    if type(revoked) is WriteThroughLimitedSet:
        revoked.__class__ = LimitedSet


def merge_unrecorded(revoked: LimitedSet, rows: Iterable[tuple[str, float]], *, wall: float, mono: float) -> int:
    """Put ids loaded from Redis into memory without writing them back; returns how many.

    ``rows`` are (task id, wall-clock revocation time); each id is stamped on the
    local monotonic clock as old as it really is (never in the future). Give them
    oldest first: each insertion into the set's heap is then O(1), where newest
    first sifts every one up to the root.
    """
    add = LimitedSet.add
    offset = mono - wall
    merged = 0
    for task_id, revoked_at in rows:
        stamp = offset + revoked_at
        add(revoked, task_id, stamp if stamp < mono else mono)
        merged += 1
    return merged
