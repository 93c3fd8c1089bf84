"""Boot from the fleet set's snapshot (:mod:`statedb.snapshot`): ~16 bytes an id instead of the set.

At boot (:func:`open_snapshot`), before reading the fleet set:

1. one round trip reads the snapshot's header and first slice, and ZCARD of the set (and, in worker
   scope, the counts of the worker's own set: :func:`head_operation` runs with them);
2. one round trip checks it (:func:`statedb.snapshot.check`: ``ZCOUNT`` up to its max score equals
   its count, then its prefix again and its sampled ids still in the set); one that holds is read to
   its end in bounded slices and its digest checked; the caller then reads the ids newer than it
   from the set (the delta);
3. with no usable snapshot (none, a marker left by a removal, a late write with an old score, a
   corrupt value) or one the delta has outgrown, a worker takes the build lock (``SET NX PX``) and
   builds one, which it then boots from; the others wait for it a while (a few tiny polls), then
   read the new snapshot, or the set as 0.5 did. So a storm of boots builds one snapshot, not 200.

Nothing here stops a boot: a snapshot that cannot be read, written or trusted means reading the
fleet set as it is. A corrupt value is reported (an ERROR naming the key) and rebuilt; a key of
another type is reported as unreadable and left alone; an ACL without the snapshot's commands gets
one warning. Only "Redis is unreachable" goes up, as for any other boot read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass

from statedb import snapshot
from statedb._sync.repository import SyncStateRepository
from statedb.commands import Operation
from statedb.cursors import TRIP_BYTES
from statedb.errors import (
    AccessDeniedError,
    CorruptValueError,
    StateDBError,
    WrongKeyTypeError,
)

logger = logging.getLogger("celery_redis_statedb")

TOP_ROWS = 64  # the highest rows read to find the max score (+inf ones, bad, are skipped)


@dataclass(frozen=True)
class SnapshotPolicy:
    """When the fleet set's snapshot is used, built and waited for.

    ``min_ids``: a fleet set smaller than this is read as it is (a snapshot saves little);
    rebuilt once the ids newer than the snapshot exceed ``stale_share`` of it (and ``min_stale``);
    a build holds its lock at most ``lock_ttl`` seconds; a worker that finds a build under way waits
    for it ``wait_base`` seconds plus ``wait_per_id`` an id of the set, ``max_wait`` at most, polling
    first when the build should be done (``build_per_id`` an id, ``poll_interval`` at least), then
    twice as long each time up to ``max_poll_interval``.
    """

    min_ids: int = 4096
    stale_share: float = 0.125
    min_stale: int = 4096
    lock_ttl: float = 60.0
    wait_base: float = 2.0
    wait_per_id: float = 5e-6
    max_wait: float = 30.0
    poll_interval: float = 0.05  # the first poll (or build_per_id an id); then twice as long each time
    max_poll_interval: float = 0.8
    build_per_id: float = 2e-6  # seconds a build takes an id of the set, about (1.4 us on a quiet 2-core box)

    def wait_for(self, ids: int) -> float:
        return min(self.max_wait, self.wait_base + ids * self.wait_per_id)

    def outgrown(self, head: snapshot.Head, newer: int) -> bool:
        return newer > max(self.min_stale, self.stale_share * head.count)


@dataclass(frozen=True)
class Opened:
    """A snapshot that covered the fleet set when it was checked, and the set's counts then."""

    head: snapshot.Head
    body: snapshot.SnapshotBody
    total: int  # ids in the set
    too_old: int  # ids revoked before the horizon start
    source: str  # "snapshot" (read) or "built" (by this worker)

    @property
    def max_score(self) -> float:
        return self.head.max_score

    @property
    def newer(self) -> int:
        """Ids of the set scored above the snapshot's max score (the delta): its first ranks."""
        return self.total - self.head.count

    def report_bad(self, repository: SyncStateRepository) -> None:
        """The bad members the snapshot leaves out, reported as a read of the set reports them
        (into ``repository.bad``; raised if it has none)."""
        if not self.head.bad:
            return
        key = repository.keys.shared
        errors = [CorruptValueError(report, key=key) for report in self.body.bad_reports]
        rest = CorruptValueError(f"Redis key {key!r} holds bad members (left out of its snapshot)", key=key)
        if repository.bad is None:
            raise errors[0] if errors else rest
        for error in errors:
            repository.bad.skip(error)
        for _ in range(self.head.bad - len(errors)):
            repository.bad.skip(rest)


def head_operation(repository: SyncStateRepository) -> Operation[tuple[bytes, int]]:
    """The first trip of :func:`open_snapshot` (to run with another: pass its reply as ``head``)."""
    fleet = repository.keys.shared
    return snapshot.read_head(snapshot.snapshot_key(fleet), fleet, size=repository.operations.trip_bytes or TRIP_BYTES)


def open_snapshot(repository: SyncStateRepository, policy: SnapshotPolicy, *, horizon_start: float | None,
                  now: float, head: tuple[bytes, int] | None = None) -> Opened | None:
    """The fleet set's snapshot to boot from, built here if need be; None: read the set as it is.
    ``head``: the reply of :func:`head_operation`, if it was run already."""
    boot = _Boot(repository, policy, horizon_start, now)
    ours = (boot.key, boot.lock)  # the snapshot and its build lock
    try:
        return boot.open(build=True, head=head)
    except AccessDeniedError as exc:
        logger.warning("redis-statedb: Redis refused the fleet set's snapshot (%s): this worker reads the whole "
                       "fleet set at boot; grant the worker's ACL user the snapshot keys (README, Security)", exc)
    except WrongKeyTypeError as exc:
        if exc.key not in ours:
            raise  # the fleet set itself: the caller reports it
        if repository.bad is None:
            logger.error("redis-statedb: %s: not read, the fleet set is read instead", exc)
        else:
            repository.bad.key_unreadable(exc)
    return None


class _Boot:
    def __init__(self, repository: SyncStateRepository, policy: SnapshotPolicy, horizon_start: float | None,
                 now: float) -> None:
        self.repository, self.policy, self.horizon_start, self.now = repository, policy, horizon_start, now
        self.fleet = repository.keys.shared
        self.key, self.lock = snapshot.snapshot_key(self.fleet), snapshot.lock_key(self.fleet)
        self.slice = repository.operations.trip_bytes or TRIP_BYTES  # the most one GETRANGE asks for

    def open(self, *, build: bool, again: bool = True, head: tuple[bytes, int] | None = None) -> Opened | None:
        raw, size = head or self.repository.run(head_operation(self.repository))
        if size < self.policy.min_ids:
            return None
        found = self._head(raw)
        usable: tuple[snapshot.Head, snapshot.Check] | None = None  # holds, but outgrown by the delta
        check = None if found is None else self._check(found, raw[snapshot.HEAD_SIZE:])
        if found is not None and check is not None:
            if check.prefix != found.prefix and again:  # rebuilt or marked since the header was read
                return self.open(build=build, again=False)
            if check.holds(found) and not (build and self.policy.outgrown(found, check.total - check.covered)):
                opened = self._read(found, raw, check)
                if opened is not None or not build:
                    return opened
            elif check.holds(found):
                usable = (found, check)
            elif check.prefix == found.prefix and not check.present:
                logger.warning("redis-statedb: ids of the fleet set's snapshot are no longer in the set, with no "
                               "restore or purge marked (removed by hand?): the snapshot is rebuilt")
        return self._rebuild(raw, size, usable) if build else None

    def _rebuild(self, raw: bytes, size: int, usable: tuple[snapshot.Head, snapshot.Check] | None
                 ) -> Opened | None:
        """Build the snapshot under the lock and boot from it; if another worker holds the lock, boot
        from ``usable`` (a snapshot that holds, outgrown) or wait for the other's."""
        token = os.urandom(16).hex().encode()
        locked, prefix = self.repository.run(
            snapshot.lock(self.lock, self.key, token, max(1, int(self.policy.lock_ttl * 1000))))
        if locked:
            try:
                value = self._build(prefix)
            finally:
                self._release(token)
            if value is not None:
                return self._built(value)
        if usable is not None:  # another worker is rebuilding it (or this one could not): boot from it
            return self._read(usable[0], raw, usable[1])
        return None if locked else self._wait(raw[: snapshot.PREFIX_SIZE], size)

    def _check(self, head: snapshot.Head, body_start: snapshot.Buffer) -> snapshot.Check | None:
        """The check of ``head`` against the set (None: its sample is damaged, reported)."""
        try:
            sample = snapshot.read_sample(self.key, body_start) or ()
        except CorruptValueError as exc:
            _report(exc)
            return None
        return self.repository.run(snapshot.check(self.key, self.fleet, head, self.horizon_start, sample))

    def _built(self, value: bytes) -> Opened | None:
        head = snapshot.decode_head(self.key, value)
        assert head is not None
        body = memoryview(value)[snapshot.HEAD_SIZE:]
        check = self._check(head, body)
        if check is None or not check.holds(head):  # a late write or a marker since the build's own check
            return None  # the next boot rebuilds
        return Opened(head, snapshot.decode_body(self.key, head, body), check.total, check.too_old, "built")

    def _head(self, raw: bytes) -> snapshot.Head | None:
        """The snapshot's header (None: no snapshot, a marker, or a corrupt value, reported)."""
        try:
            head = snapshot.decode_head(self.key, raw)
        except CorruptValueError as exc:
            _report(exc)
            return None
        return head if head is not None and head.kind == snapshot.SNAPSHOT else None

    def _read(self, head: snapshot.Head, raw: bytes, check: snapshot.Check) -> Opened | None:
        """The rest of the snapshot, in slices of at most the trip budget; None if it changed meanwhile
        (a rebuild or a marker) or is corrupt (reported)."""
        data = bytearray(head.body_len)  # filled in place: a million ids are 16 MB, copied as few times as may be
        got = min(len(raw), head.size) - snapshot.HEAD_SIZE
        data[:got] = raw[snapshot.HEAD_SIZE: head.size]
        while got < head.body_len:
            start = snapshot.HEAD_SIZE + got
            chunk = self.repository.run(snapshot.read_range(self.key, start, min(head.size, start + self.slice)))
            if not chunk or len(chunk) > head.body_len - got:
                break
            data[got: got + len(chunk)] = chunk
            got += len(chunk)
        try:
            body = snapshot.decode_body(self.key, head, memoryview(data)[:got] if got < head.body_len else data)
        except CorruptValueError as exc:
            if self.repository.run(snapshot.read_prefix(self.key)) == head.prefix:
                _report(exc)  # not a rewrite under our feet: the value itself is bad
            return None
        return Opened(head, body, check.total, check.too_old, "snapshot")

    def _build(self, prefix: bytes) -> bytes | None:
        """Every member scored up to the set's max score, oldest first, as a snapshot, written unless a
        marker or another snapshot replaced ``prefix`` meanwhile; None if not written."""
        repository, operations = self.repository, self.repository.operations
        top = repository.run(snapshot.top_rows(self.fleet, TOP_ROWS))
        finite = [score for _, score in top if math.isfinite(score)]
        if not finite:
            return None
        max_score = finite[0]
        writer = snapshot.SnapshotWriter(self.fleet, now=self.now)
        cursor = snapshot.BuildCursor(self.fleet, max_score=max_score, chunk_size=operations.load_chunk_size,
                                      trip_bytes=operations.trip_bytes)
        for page in repository.iter_cursor(cursor):
            writer.add(page)
        if cursor.overflow:
            logger.info("redis-statedb: more than %d ids of the fleet set share one revocation time: no snapshot",
                        snapshot.MAX_TIES)
            return None
        if repository.run(snapshot.count_up_to(self.fleet, max_score)) != writer.count:
            return None  # written to meanwhile below the max score: the next boot tries again
        value = writer.value(max_score=max_score, built_at=self.now)
        try:
            written = repository.run(snapshot.write(self.key, prefix, value))
        except (WrongKeyTypeError, AccessDeniedError):
            raise
        except StateDBError as exc:  # out of memory, read-only replica, a refused script...
            logger.warning("redis-statedb: the fleet set's snapshot could not be written (%s); booting on what "
                           "was read", exc)
            return None
        if not written:
            return None
        logger.info("redis-statedb: built the fleet set's snapshot %r: %d ids in %d bytes (%.1f bytes an id)",
                    self.key, writer.count, len(value), len(value) / max(1, writer.count))
        return value

    def _release(self, token: bytes) -> None:
        with contextlib.suppress(StateDBError):  # it expires on its own
            self.repository.run(snapshot.release(self.lock, token))

    def _wait(self, seen: bytes, size: int) -> Opened | None:
        """Another worker is building: poll until its snapshot is there (then read it), its lock
        is gone (it gave up) or the wait is over. The polls space out (a storm of waiters polling
        every 50 ms would cost Redis more than the build)."""
        deadline = time.monotonic() + self.policy.wait_for(size)
        interval = max(self.policy.poll_interval, size * self.policy.build_per_id)  # about when it should be done
        while time.monotonic() < deadline:
            time.sleep(min(interval * random.uniform(0.5, 1.5), max(0.0, deadline - time.monotonic())))
            interval = min(self.policy.max_poll_interval, interval * 2)
            prefix, building = self.repository.run(snapshot.poll(self.key, self.lock))
            if prefix != seen:
                return self.open(build=False)
            if not building:
                return None
        return None


def _report(exc: CorruptValueError) -> None:
    logger.error("redis-statedb: %s: ignored (the fleet set is read instead) and rebuilt", exc)
