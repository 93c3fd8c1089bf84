"""A compact in-memory index of stored revoked ids that are not in Celery's own set.

Celery's ``state.revoked`` holds at most ``REVOKES_MAX`` ids for ``REVOKE_EXPIRES``
seconds; Redis holds every revoke until an operator purges or restores it. This
index covers the difference without a Redis call per task: it keeps a hash of
each such id (8 bytes an id, in a sorted ``array``), so a lookup is a binary
search. A hash can collide, and a stored id can be restored or purged meanwhile,
so a hit is only a *candidate*: the caller confirms it in Redis (see
``stored_revokes``). A task that is not revoked therefore never costs a Redis
call (but for a collision, about N / 2**53 a lookup) and is never discarded.

The hashes are kept as floats (the 64-bit hash rounded to 53 bits): CPython sorts
a million floats about 40% faster than a million 64-bit ints, and the sort is most
of the boot's work for the index.
"""

from __future__ import annotations

import itertools
from array import array
from bisect import bisect_left
from collections.abc import Iterable

# Ids entering after boot wait in a set until this many, then are merged into the array.
COMPACT_AT = 65_536


def id_hash(task_id: object) -> float | None:
    """The index key of a task id (None for what cannot be a stored id).

    ``hash`` of the UTF-8 bytes, as stored: the boot builds the index straight from
    the bytes Redis sends, without decoding a million strings. Python salts it per
    process, which is all an in-memory index needs.
    """
    if type(task_id) is not str:
        return None
    try:
        return float(hash(task_id.encode()))
    except UnicodeEncodeError:
        return None


class StoredIdIndex:
    """A set of id hashes: a sorted array built in bulk, a small set for later additions,
    and a set of hashes lifted (restored or purged) since the last compaction."""

    def __init__(self) -> None:
        self._base = array("d")
        self._recent: set[float] = set()
        self._lifted: set[float] = set()

    def __len__(self) -> int:
        """How many ids it holds (an id read twice at boot counts twice)."""
        return len(self._base) + len(self._recent) - len(self._lifted)

    def bulk_load(self, members: Iterable[bytes]) -> int:
        """Add stored members (bytes, as Redis sends them); returns how many were given."""
        fresh = array("d", map(float, map(hash, members)))
        if fresh:
            lifted = set(self._lifted)
            self._base = self._sorted(itertools.chain(self._base, fresh), lifted)
            self._lifted -= lifted
        return len(fresh)

    def add(self, task_id: object) -> None:
        key = id_hash(task_id)
        if key is None:
            return
        self._lifted.discard(key)
        if not self._in_base(key):
            self._recent.add(key)

    def lift(self, task_ids: Iterable[object]) -> None:
        """Forget ids (restored or purged); they stay out until added again."""
        for task_id in task_ids:
            key = id_hash(task_id)
            if key is None:
                continue
            self._recent.discard(key)
            if self._in_base(key):
                self._lifted.add(key)

    def may_hold(self, task_id: object) -> bool:
        """True if ``task_id`` may be in the index (a candidate to confirm in Redis)."""
        if type(task_id) is not str:
            return False
        try:
            key = float(hash(task_id.encode()))
        except UnicodeEncodeError:
            return False
        if key in self._recent:
            return True
        return self._in_base(key) and key not in self._lifted

    def _in_base(self, key: float) -> bool:
        base = self._base
        at = bisect_left(base, key)
        return at < len(base) and base[at] == key

    @property
    def needs_compaction(self) -> bool:
        return len(self._recent) + len(self._lifted) >= max(COMPACT_AT, len(self._base) // 4)

    def compact(self) -> None:
        """Merge later additions into the array and drop lifted hashes.

        The new array is built aside and swapped in whole, and only what it took is
        taken out of the sets: a lookup or an addition from another thread meanwhile
        (the timer runs on its own thread in the threads pool) sees every id.
        """
        recent, lifted = set(self._recent), set(self._lifted)
        if not recent and not lifted:
            return
        self._base = self._sorted(itertools.chain(self._base, recent), lifted)
        self._recent -= recent
        self._lifted -= lifted

    @staticmethod
    def _sorted(keys: Iterable[float], lifted: set[float]) -> array[float]:
        # An id read twice stays twice: harmless for a binary search, and cheaper than a pass to drop it.
        merged = sorted(keys)
        if lifted:
            merged = [key for key in merged if key not in lifted]
        return array("d", merged)

    def memory_bytes(self) -> int:
        """An estimate of what the index holds on to (the array's buffer, the sets' entries)."""
        return self._base.buffer_info()[1] * self._base.itemsize + 64 * (len(self._recent) + len(self._lifted))
