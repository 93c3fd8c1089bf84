"""A compact in-memory index of stored revoked ids that are not in Celery's own set.

Celery's ``state.revoked`` holds at most ``REVOKES_MAX`` ids for ``REVOKE_EXPIRES``
seconds; Redis holds every revoke until an operator purges or restores it. This
index covers the difference without a Redis call per task: an open-addressing hash
table of the ids' 64-bit hashes in one ``array`` (8 bytes a slot, about two thirds
full after a build: about 12 bytes an id). A hash can collide, and a stored id can be
restored or purged meanwhile, so a hit is only a *candidate*: the caller confirms
it in Redis (see ``stored_revokes``). A task that is not revoked therefore never
costs a Redis call (but for a collision, about N / 2**64 a lookup) and is never
discarded.

Why a table of our own: a Python set of ints costs several times that, and a sorted
array needs a sort that makes a temporary object per id, whose memory the allocator
keeps (figures in the README).
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable

EMPTY = 0
DELETED = -1  # hash() never returns -1, so no id has this key
MIN_SLOTS = 1024
BUILD_LOAD = 0.65  # slots in use after a (re)build: about 12 bytes an id, 4-5 probes for an id not there
MAX_LOAD = 0.8  # in use (ids and deleted slots) before the table is rebuilt larger


def _key(data: bytes) -> int:
    key = hash(data)
    return 1 if key == EMPTY else key


def id_key(task_id: object) -> int | None:
    """The index key of a task id (None for what cannot be a stored id).

    ``hash`` of the UTF-8 bytes, as stored: the boot builds the index straight from
    the bytes Redis sends, without decoding a million strings. Python salts it per
    process, which is all an in-memory index needs.
    """
    if type(task_id) is not str:
        return None
    try:
        return _key(task_id.encode())
    except UnicodeEncodeError:
        return None


def _slots_for(count: int) -> int:
    return max(MIN_SLOTS, math.ceil(count / BUILD_LOAD))


class StoredIdIndex:
    """A set of id hashes in an open-addressing table (linear probing, deleted markers).

    Lookups take no lock (they read the table once; the GIL makes each slot read
    whole); additions, removals and rebuilds take one, as the timer may run on a
    thread of its own (the threads pool).
    """

    def __init__(self) -> None:
        self._table = array("q", bytes(8 * MIN_SLOTS))
        self._live = 0
        self._deleted = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._live

    def bulk_load(self, members: Iterable[bytes], *, expected: int = 0) -> int:
        """Add stored members (bytes, as Redis sends them); returns how many were given.

        ``expected`` (how many are coming) sizes the table once instead of growing it.
        The insertion is written out here, not through :meth:`_insert`: it runs once an
        id at boot, a million times for a million stored ids.
        """
        given = 0
        with self._lock:
            if (self._live + self._deleted + expected) > MAX_LOAD * len(self._table):
                self._resize(_slots_for(self._live + expected))
            table, live = self._table, self._live
            size, limit = len(table), int(MAX_LOAD * len(table)) - self._deleted
            for member in members:
                given += 1
                key = hash(member) or 1
                slot = key % size
                while True:
                    found = table[slot]
                    if found == EMPTY:
                        table[slot] = key
                        live += 1
                        break
                    if found == key:
                        break
                    slot += 1
                    if slot == size:
                        slot = 0
                if live > limit:  # more came than expected
                    self._live = live
                    self._grow()
                    table, size, limit = self._table, len(self._table), int(MAX_LOAD * len(self._table))
            self._live = live
        return given

    def add(self, task_id: object) -> None:
        if type(task_id) is not str:
            return
        try:
            key = hash(task_id.encode()) or 1
        except UnicodeEncodeError:
            return
        with self._lock:
            self._insert(key)

    def add_many(self, task_ids: Iterable[object]) -> None:
        """:meth:`add` for many ids, under one lock."""
        members = []
        for task_id in task_ids:
            if type(task_id) is str:
                try:
                    members.append(task_id.encode())
                except UnicodeEncodeError:
                    continue
        self.bulk_load(members, expected=len(members))

    def lift(self, task_ids: Iterable[object]) -> None:
        """Forget ids (restored or purged); they stay out until added again."""
        with self._lock:
            for task_id in task_ids:
                key = id_key(task_id)
                if key is not None:
                    self._remove(key)

    def may_hold(self, task_id: object) -> bool:
        """True if ``task_id`` may be in the index (a candidate to confirm in Redis)."""
        if type(task_id) is not str:
            return False
        try:
            key = hash(task_id.encode()) or 1
        except UnicodeEncodeError:
            return False
        table = self._table
        size = len(table)
        slot = key % size
        while True:
            found = table[slot]
            if found == key:
                return True
            if found == EMPTY:
                return False
            slot += 1
            if slot == size:
                slot = 0

    def memory_bytes(self) -> int:
        """What the table holds on to."""
        return len(self._table) * self._table.itemsize

    # -- under the lock ------------------------------------------------------

    def _insert(self, key: int) -> None:
        table = self._table
        size = len(table)
        slot = key % size
        reuse = -1
        while True:
            found = table[slot]
            if found == key:
                return
            if found == EMPTY:
                break
            if found == DELETED and reuse < 0:
                reuse = slot
            slot += 1
            if slot == size:
                slot = 0
        if reuse >= 0:
            table[reuse] = key
            self._deleted -= 1
        else:
            table[slot] = key
        self._live += 1
        if self._live + self._deleted > MAX_LOAD * size:
            self._grow()

    def _remove(self, key: int) -> None:
        table = self._table
        size = len(table)
        slot = key % size
        while True:
            found = table[slot]
            if found == key:
                table[slot] = DELETED
                self._live -= 1
                self._deleted += 1
                return
            if found == EMPTY:
                return
            slot += 1
            if slot == size:
                slot = 0

    def _grow(self) -> None:
        """Past the load limit: twice the slots (amortized O(1) an insertion), or fewer if most were deleted."""
        self._resize(max(_slots_for(self._live), min(2 * len(self._table), _slots_for(2 * self._live))))

    def _resize(self, slots: int) -> None:
        """A new table of ``slots``, filled aside with the live keys, then swapped in whole."""
        old = self._table
        table = array("q", bytes(8 * slots))
        for key in old:
            if key not in (EMPTY, DELETED):
                slot = key % slots
                while table[slot] != EMPTY:
                    slot += 1
                    if slot == slots:
                        slot = 0
                table[slot] = key
        self._table, self._deleted = table, 0
