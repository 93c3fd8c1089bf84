"""The fleet set's snapshot: a compact copy kept beside it, so a booting worker reads ~16 bytes an id.

Every worker reads the whole fleet set at boot. Read as sorted-set replies that is about 43 bytes
and a fraction of a microsecond of Redis' one thread an id, for every worker: a thousand workers
booting at once from 50 000 ids is gigabytes of replies. The snapshot is one string,
``<fleet key>:snapshot``, read in bounded ``GETRANGE`` slices:

- a header (``HEAD_SIZE`` bytes): magic, version, kind (a snapshot, or a marker saying ids were
  removed since), a token (the BLAKE2b digest of all that follows it, or random for a marker),
  ``count`` (members of the set scored at most ``max_score`` when it was built, bad members
  included), ``max_score``, the body's length, the bad members it leaves out, when it was built;
- a body: the ids grouped by revocation time rounded up (to the second for the ids revoked in the
  2 000 s before the build, then to within 0.1% of their age: a month of ids makes some 10 000
  groups), oldest first: canonical UUIDs packed to 16 bytes, any other id as text, and zlib for
  everything but the UUIDs.

Never pickle: nothing here executes what it reads, and anything malformed is a
:class:`~statedb.errors.CorruptValueError` naming the key.

**When a snapshot may be used.** Scores only ever go down (every writer of the library uses
``ZADD ... LT``) and an id leaves a set only through a removal (restore, purge), which overwrites
the snapshot with a marker before and after it removes (:func:`mark_stale`). So, with the same
snapshot still in place, every id it holds is still in the set, scored at most ``max_score``;
``ZCOUNT set -inf max_score`` equal to its ``count`` then means no other id is: a late write with
an old score (ids flushed after an outage keep their revocation time, a migration, a write-back)
would make it larger. Ids revoked since, scored above ``max_score``, are read from the set (the
delta). The header is read again after that count, with ``ZMSCORE`` of a few of its ids (kept at
the start of its body), so a removal that overlapped it shows, and so does a set deleted by hand
(no marker) and refilled.
**When one may be written:** a builder reads the header prefix first, then every member scored
at most ``max_score`` oldest first (each read once: scores only go down), checks the count, and
writes with a script that compares the prefix again (one key): a marker written meanwhile wins.

Every command touches one key (Redis Cluster); the worker ACL needs ``GETRANGE``, ``SET`` and
``EVAL`` on the snapshot key and its lock key, and ``ZRANGEBYSCORE`` on the fleet set.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import operator
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from statedb import uuid_pack
from statedb.commands import BadMembers, Operation, PipelineLike, decode_revoked_page
from statedb.cursors import TRIP_BYTES, TripBudget, member_bytes
from statedb.errors import CorruptValueError
from statedb.keys import SNAPSHOT_LOCK_SUFFIX, SNAPSHOT_SUFFIX

Buffer = bytes | bytearray | memoryview  # what a snapshot is read into and decoded from

MAGIC = b"CRSS"
VERSION = 1
SNAPSHOT, MARKER = 1, 2
_HEAD = struct.Struct("<4sBB2x16sQdQId4x")
HEAD_SIZE = _HEAD.size  # 64
PREFIX_SIZE = 24  # magic, version, kind and token: what a writer compares before it overwrites
_TAIL = struct.Struct("<QdQId")  # the header after the token (covered by the digest)
# Lengths: zlib'd groups, packed UUIDs (ids), zlib'd other ids, zlib'd reports of the bad members left out.
_BODY = struct.Struct("<IIII")
_GROUPS = struct.Struct("<Iq")  # groups, the first group's stamp
STAMP_LIMIT = 2**62  # stamps (whole seconds) are clamped to +-this: far beyond any real time
FINE_AGE = 1000  # seconds: ids revoked within twice this before a build are stamped to the second
MAX_TIES = 200_000  # ids sharing one score a build keeps apart; beyond, no snapshot is built
SAMPLE_ENDS, SAMPLE_SPREAD = 4, 8  # ids of a snapshot a boot checks are still in the set: its oldest, ...
SAMPLE_MAX_LEN = 256  # (an id longer than this is left out of the sample)
UNPACK_PAGE = 65_536  # UUIDs unpacked at a time for the index (the text of all of them is never held at once)

# Store ARGV[3] unless the key's first ARGV[1] bytes are no longer ARGV[2] (one key, so Cluster-safe).
CAS_SCRIPT = """
if redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""
# Let the lock go (expire now) if it is still ARGV[1]'s: GET and SET only, as the worker ACL allows.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', 1)
  return 1
end
return 0
"""


def snapshot_key(fleet_key: str) -> str:
    """The snapshot of the fleet set ``fleet_key`` (KeySchema.shared_snapshot_key)."""
    return fleet_key + SNAPSHOT_SUFFIX


def lock_key(fleet_key: str) -> str:
    """The lock a worker building the snapshot holds (KeySchema.shared_snapshot_lock_key)."""
    return fleet_key + SNAPSHOT_LOCK_SUFFIX


# -- the header ----------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A snapshot's header (``kind`` SNAPSHOT) or a marker's (``kind`` MARKER)."""

    kind: int
    token: bytes
    count: int
    max_score: float
    body_len: int
    bad: int
    built_at: float
    prefix: bytes  # the first PREFIX_SIZE bytes as stored

    @property
    def size(self) -> int:
        return HEAD_SIZE + self.body_len


def decode_head(key: str, raw: bytes) -> Head | None:
    """The header at the start of ``raw`` (None: the key is missing); CorruptValueError naming the key
    for anything else that is not one of ours, a newer version included."""
    if not raw:
        return None
    if len(raw) < HEAD_SIZE or raw[:4] != MAGIC:
        raise CorruptValueError(f"Redis key {key!r} does not hold a snapshot of the fleet set: {raw[:24]!r}",
                                key=key)
    _, version, kind, token, count, max_score, body_len, bad, built_at = _HEAD.unpack_from(raw)
    if version != VERSION or kind not in (SNAPSHOT, MARKER):
        raise CorruptValueError(f"Redis key {key!r} holds a snapshot of version {version}, kind {kind}: not one "
                                f"this version reads", key=key)
    if kind == SNAPSHOT and (not math.isfinite(max_score) or count < bad):
        raise CorruptValueError(f"Redis key {key!r} holds a snapshot header that does not add up", key=key)
    return Head(kind, token, count, max_score, body_len if kind == SNAPSHOT else 0, bad, built_at,
                bytes(raw[:PREFIX_SIZE]))


def marker_value() -> bytes:
    """A marker: "ids were removed from the set since any snapshot"; random, so each is new."""
    return _HEAD.pack(MAGIC, VERSION, MARKER, os.urandom(16), 0, 0.0, 0, 0, 0.0)


# -- the body ------------------------------------------------------------------


def stamp_of(score: float, now: float) -> int:
    """A revocation time rounded up (an id is never taken for older than it is): to the second if it is
    at most FINE_AGE seconds before ``now``, else to a power of two seconds at most a FINE_AGE-th of its
    age (taken for at most 0.1% younger than it is); clamped to +-STAMP_LIMIT."""
    if score >= STAMP_LIMIT:
        return STAMP_LIMIT
    if score <= -STAMP_LIMIT:
        return -STAMP_LIMIT
    grid = _grid(now - score)
    stamp = math.ceil(score / grid) * grid  # exact (a power of two divides a float exactly) but for denormals
    return min(STAMP_LIMIT, stamp if stamp >= score else stamp + grid)


def _grid(age: float) -> int:
    return 1 if age <= 2 * FINE_AGE else 1 << (int(age / FINE_AGE).bit_length() - 1)


def _stamps_of(scores: list[float], now: float, floor: int) -> list[int]:
    """stamp_of each score, never below ``floor`` nor the stamp before (rows come oldest first: a
    coarser grid may round an older id up past a younger one). A page on one grid is done at C speed."""
    low, high = min(scores), max(scores)
    if low >= 1.0 and high < STAMP_LIMIT and _grid(now - low) == _grid(now - high):  # no denormal quotient
        grid = _grid(now - low)
        ceiled = map(math.ceil, scores if grid == 1 else map(operator.truediv, scores, itertools.repeat(grid)))
        stamps = list(ceiled if grid == 1 else map(operator.mul, ceiled, itertools.repeat(grid)))
        if scores == sorted(scores) and stamps[0] >= floor:
            return stamps
    else:
        stamps = [stamp_of(score, now) for score in scores]
    return list(itertools.accumulate(stamps, max, initial=floor))[1:]


def _sample_section(sample: Sequence[bytes]) -> bytes:
    """Ids a boot checks are still in the set, first in the body (its first slice holds them), with a
    CRC of their own: they are used before the body's digest can be checked."""
    blob = b"".join(struct.pack("<I", len(member)) + member for member in sample)
    return struct.pack("<II", len(blob), zlib.crc32(blob)) + blob


def read_sample(key: str, body_start: Buffer) -> list[bytes] | None:
    """The sample at the start of a body, from its first bytes (None if they do not hold it whole);
    CorruptValueError naming the key if it is damaged."""
    if len(body_start) < 8:
        return None
    size, crc = struct.unpack_from("<II", body_start)
    if len(body_start) < 8 + size:
        return None
    blob = bytes(body_start[8: 8 + size])
    sample, at = [], 0
    try:
        if zlib.crc32(blob) != crc:
            raise ValueError("its sample does not match its CRC")
        while at < size:
            (length,) = struct.unpack_from("<I", blob, at)
            sample.append(blob[at + 4: at + 4 + length])
            at += 4 + length
        if at != size:
            raise ValueError("its sample does not add up")
    except (ValueError, struct.error) as exc:
        raise CorruptValueError(f"Redis key {key!r} holds a corrupt snapshot of the fleet set ({exc})",
                                key=key) from None
    return sample


def _le(values: array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover (every platform CI runs is little-endian)
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_le(typecode: str, raw: bytes) -> array[int]:
    values = array(typecode)
    values.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return values


class SnapshotWriter:
    """Builds a snapshot of the set ``key`` from pages of (member, score) rows given oldest first.

    ``count`` counts every row given (scored at most the snapshot's max score), ``bad`` the
    ones left out (members that are not UTF-8 text, a non-finite score), whose reports (the
    first few) the snapshot keeps: every worker booting from it reports them, as a read would.
    """

    def __init__(self, key: str, *, now: float) -> None:
        self.key, self.now = key, now  # stamps are coarser the older they are at ``now``
        self.count = 0
        self.bad = BadMembers()
        self._stamps: list[int] = []
        self._uuids: list[int] = []  # UUIDs in each group
        self._others: list[int] = []  # other ids in each group
        self._packed: list[bytes] = []
        self._other_ids: list[bytes] = []
        self._spread: list[bytes] = []  # the first id of every page, the oldest ids first
        self._newest: list[bytes] = []

    def add(self, rows: Sequence[tuple[bytes, float]]) -> None:
        self.count += len(rows)
        members = [member for member, _ in rows]
        scores = [score for _, score in rows]
        if not b"".join(members).isascii() or not math.isfinite(sum(scores)):
            kept = decode_revoked_page(self.key, rows, self.bad)
            members = [task_id.encode() for task_id, _ in kept]
            scores = [score for _, score in kept]
        if not members:
            return
        self._spread.extend(members[:SAMPLE_ENDS] if not self._spread else members[:1])
        self._newest = (self._newest + members[-SAMPLE_ENDS:])[-SAMPLE_ENDS:]
        stamps = _stamps_of(scores, self.now, self._stamps[-1] if self._stamps else -STAMP_LIMIT)
        packed = uuid_pack.pack_all(members)
        if packed is not None:
            self._packed.append(packed)
            for stamp, same in itertools.groupby(stamps):
                self._group(stamp, len(list(same)), 0)
            return
        canonical = [uuid_pack.is_canonical(member) for member in members]
        self._packed.append(uuid_pack.pack_all([m for m, c in zip(members, canonical, strict=True) if c]) or b"")
        self._other_ids.extend(m for m, c in zip(members, canonical, strict=True) if not c)
        for stamp, pairs in itertools.groupby(zip(stamps, canonical, strict=True),
                                              key=lambda pair: pair[0]):
            flags = [flag for _, flag in pairs]
            uuids = flags.count(True)
            self._group(stamp, uuids, len(flags) - uuids)

    def _group(self, stamp: int, uuids: int, others: int) -> None:
        if self._stamps and self._stamps[-1] == stamp:  # the group goes on from the page before
            self._uuids[-1] += uuids
            self._others[-1] += others
            return
        self._stamps.append(stamp)
        self._uuids.append(uuids)
        self._others.append(others)

    def _sample(self) -> list[bytes]:
        """The oldest ids, the newest, and some spread between (short ids only)."""
        spread = self._spread[SAMPLE_ENDS:]
        step = max(1, len(spread) // SAMPLE_SPREAD)
        chosen = dict.fromkeys([*self._spread[:SAMPLE_ENDS], *spread[::step][:SAMPLE_SPREAD], *self._newest])
        return [member for member in chosen if len(member) <= SAMPLE_MAX_LEN]

    def value(self, *, max_score: float, built_at: float) -> bytes:
        """The snapshot (header and body) of every row given."""
        stamps = self._stamps
        deltas = array("Q", (b - a for a, b in itertools.pairwise(stamps)))
        groups = (_GROUPS.pack(len(stamps), stamps[0] if stamps else 0) + _le(deltas)
                  + _le(array("I", self._uuids)) + _le(array("I", self._others)))
        others = _le(array("I", map(len, self._other_ids))) + b"".join(self._other_ids)
        packed = b"".join(self._packed)
        reports = "\n".join(str(error).replace("\n", " ") for error in self.bad.errors).encode()
        groups_z, others_z, reports_z = (zlib.compress(part, 6) for part in (groups, others, reports))
        body = b"".join((_sample_section(self._sample()), _BODY.pack(
            len(groups_z), len(packed) // uuid_pack.PACKED_LEN, len(others_z), len(reports_z)),
            groups_z, packed, others_z, reports_z))
        tail = _TAIL.pack(self.count, max_score, len(body), self.bad.count, built_at)
        token = hashlib.blake2b(tail + body, digest_size=16).digest()
        return _HEAD.pack(MAGIC, VERSION, SNAPSHOT, token, self.count, max_score, len(body), self.bad.count,
                          built_at) + body


@dataclass(frozen=True)
class Partition:
    """What a worker takes from a snapshot: ids for Celery's own set, as pages of (stamp, ids newest
    first) oldest page first, and the stored form of the rest within the horizon, for the index, in
    pages unpacked as they are iterated (``index_count`` in all)."""

    memory: list[tuple[float, list[str]]]
    index: Iterable[list[bytes]]
    index_count: int

    @property
    def in_memory(self) -> list[str]:
        return [task_id for _, ids in self.memory for task_id in ids]


@dataclass(frozen=True)
class SnapshotBody:
    """A decoded body: groups of ids sharing a stamp (whole seconds, at least their revocation time),
    oldest first; in each group its UUIDs, then its other ids."""

    stamps: array[int]
    uuid_counts: array[int]
    other_counts: array[int]
    packed: Buffer  # 16 bytes a UUID, a view of the value read
    others: list[bytes]
    bad_reports: list[str]  # why the first bad members the snapshot leaves out were left out

    def __len__(self) -> int:
        return len(self.packed) // uuid_pack.PACKED_LEN + len(self.others)

    def partition(self, *, room: int | None, memory_from: float | None, horizon_from: float | None) -> Partition:
        """The newest ``room`` ids (all if None) stamped at or after ``memory_from`` for memory, every
        other one stamped at or after ``horizon_from`` for the index (None: no bound)."""
        stamps, uuid_counts = self.stamps, self.uuid_counts
        first = 0 if horizon_from is None else bisect.bisect_left(stamps, horizon_from)
        floor = first if memory_from is None else max(first, bisect.bisect_left(stamps, memory_from))
        uu = array("q", itertools.accumulate(uuid_counts, initial=0))
        oo = array("q", itertools.accumulate(self.other_counts, initial=0))
        # Which groups memory takes, newest first, and how many ids of the oldest of them (counts only).
        taken, g, keeps = 0, len(stamps), []
        while g > floor and (room is None or taken < room):
            g -= 1
            size = uuid_counts[g] + self.other_counts[g]
            keeps.append(size if room is None else min(size, room - taken))
            taken += keeps[-1]
        low = g if keeps else len(stamps)  # the oldest group memory takes from
        texts = self._unpack(uu[low], uu[-1])
        memory: list[tuple[float, list[str]]] = []
        for at, keep in zip(range(len(stamps) - 1, low - 1, -1), keeps, strict=True):
            ids = texts[uu[at] - uu[low]: uu[at + 1] - uu[low]] + self.others[oo[at]: oo[at + 1]]
            memory.append((float(stamps[at]), [member.decode() for member in reversed(ids[len(ids) - keep:])]))
        memory.reverse()
        rest = (uuid_counts[low] + self.other_counts[low] - keeps[-1]) if keeps else 0  # low's ids left over
        cut_u = uu[low] + min(rest, uuid_counts[low] if keeps else 0)
        cut_o = oo[low] + max(0, rest - (uuid_counts[low] if keeps else 0))
        index_count = cut_u - uu[first] + cut_o - oo[first]
        return Partition(memory, self._index_pages(uu[first], cut_u, self.others[oo[first]: cut_o]), index_count)

    def _unpack(self, start: int, stop: int) -> list[bytes]:
        return uuid_pack.unpack_all(self.packed[start * uuid_pack.PACKED_LEN: stop * uuid_pack.PACKED_LEN])

    def _index_pages(self, start: int, stop: int, others: list[bytes]) -> Iterator[list[bytes]]:
        for at in range(start, stop, UNPACK_PAGE):
            yield self._unpack(at, min(stop, at + UNPACK_PAGE))
        if others:
            yield others


def decode_body(key: str, head: Head, body: Buffer) -> SnapshotBody:
    """The body of the snapshot ``head`` describes; CorruptValueError naming the key if it is not
    whole, does not match its digest, or does not add up. The UUIDs stay in ``body`` (not copied)."""
    def corrupt(why: str) -> CorruptValueError:
        return CorruptValueError(f"Redis key {key!r} holds a corrupt snapshot of the fleet set ({why})", key=key)

    if len(body) != head.body_len:
        raise corrupt(f"its body is {len(body)} bytes, its header says {head.body_len}")
    tail = _TAIL.pack(head.count, head.max_score, head.body_len, head.bad, head.built_at)
    digest = hashlib.blake2b(tail, digest_size=16)
    digest.update(body)
    if digest.digest() != head.token:
        raise corrupt("its digest does not match")
    try:
        (sample_len,) = struct.unpack_from("<I", body)
        groups_len, uuid_count, others_len, reports_len = _BODY.unpack_from(body, 8 + sample_len)
        at = 8 + sample_len + _BODY.size
        groups = zlib.decompress(body[at: at + groups_len])
        at += groups_len
        packed = body[at: at + uuid_count * uuid_pack.PACKED_LEN]
        at += len(packed)
        others_raw = zlib.decompress(body[at: at + others_len])
        at += others_len
        reports = zlib.decompress(body[at: at + reports_len]).decode("utf-8")
        count, first = _GROUPS.unpack_from(groups)
        sizes = (8 * max(0, count - 1), 4 * count, 4 * count)
        if len(groups) != _GROUPS.size + sum(sizes) or at + reports_len != len(body):
            raise corrupt("its sections do not add up")
        deltas = _from_le("Q", groups[_GROUPS.size: _GROUPS.size + sizes[0]])
        uuid_counts = _from_le("I", groups[_GROUPS.size + sizes[0]: _GROUPS.size + sizes[0] + sizes[1]])
        other_counts = _from_le("I", groups[_GROUPS.size + sizes[0] + sizes[1]:])
        others_total = sum(other_counts)
        lengths = _from_le("I", others_raw[: 4 * others_total])
        blob = others_raw[4 * others_total:]
        if (len(packed) != uuid_count * uuid_pack.PACKED_LEN or sum(uuid_counts) != uuid_count
                or len(lengths) != others_total or sum(lengths) != len(blob)):
            raise corrupt("its sections do not add up")
        ends = list(itertools.accumulate(lengths))
        others = [blob[end - size: end] for end, size in zip(ends, lengths, strict=True)]
        stamps = array("q", itertools.accumulate(deltas, initial=first) if count else ())
    except (struct.error, zlib.error, ValueError) as exc:
        raise corrupt(str(exc)) from None
    if len(others) + uuid_count + head.bad != head.count:
        raise corrupt("it holds another number of ids than its header says")
    return SnapshotBody(stamps, uuid_counts, other_counts, packed, others, reports.split("\n") if reports else [])


# -- operations ----------------------------------------------------------------


def read_head(key: str, fleet_key: str, *, size: int) -> Operation[tuple[bytes, int]]:
    """The first ``size`` bytes of the snapshot (b'' if missing), and ZCARD of the fleet set."""

    def stage(pipe: PipelineLike) -> None:
        pipe.getrange(key, 0, size - 1)
        pipe.zcard(fleet_key)

    return Operation((key, fleet_key), stage, lambda replies: (bytes(replies[0]), int(replies[1])))


class Check(NamedTuple):
    """What a boot checks a snapshot against, in one round trip (see :func:`check`)."""

    total: int  # ids in the fleet set
    covered: int  # ids scored at most the snapshot's max score
    too_old: int  # ids revoked before the horizon start
    prefix: bytes  # the snapshot's prefix, read after the counts
    present: bool  # every sampled id still in the set

    def holds(self, head: Head) -> bool:
        """The snapshot describes the set: same count up to its max score, no marker or rebuild since
        the header was read, and no sampled id removed (a DEL by hand, say, which leaves no marker)."""
        return self.covered == head.count and self.prefix == head.prefix and self.present


def check(key: str, fleet_key: str, head: Head, horizon_start: float | None, sample: Sequence[bytes]
          ) -> Operation[Check]:
    """ZCARD and the counts of the fleet set, then the snapshot's prefix again and ZMSCORE of the sample.
    In this order in one pipeline: on one server Redis runs them in order, so a removal the count saw
    had written its marker before the prefix is read (a removal marks before and after it removes)."""
    before = "(-inf" if horizon_start is None else f"({horizon_start!r}"

    def stage(pipe: PipelineLike) -> None:
        pipe.zcard(fleet_key)
        pipe.zcount(fleet_key, "-inf", repr(head.max_score))
        pipe.zcount(fleet_key, "-inf", before)
        pipe.getrange(key, 0, PREFIX_SIZE - 1)
        if sample:
            pipe.zmscore(fleet_key, sample)

    def parse(replies: Sequence[Any]) -> Check:
        present = not sample or all(score is not None for score in replies[4])
        return Check(int(replies[0]), int(replies[1]), int(replies[2]), bytes(replies[3]), present)

    return Operation((fleet_key, fleet_key, fleet_key, key) + ((fleet_key,) if sample else ()), stage, parse)


def read_range(key: str, start: int, stop: int) -> Operation[bytes]:
    """Bytes ``start`` to ``stop - 1`` of the snapshot."""
    return Operation((key,), lambda pipe: pipe.getrange(key, start, stop - 1), lambda replies: bytes(replies[0]))


def read_prefix(key: str) -> Operation[bytes]:
    """The snapshot's prefix (magic, kind, token): changed by every write and every marker."""
    return read_range(key, 0, PREFIX_SIZE)


def top_rows(fleet_key: str, count: int) -> Operation[list[tuple[bytes, float]]]:
    """The ``count`` highest (member, score) rows of the fleet set, as stored."""

    def stage(pipe: PipelineLike) -> None:
        pipe.zrevrangebyscore(fleet_key, "+inf", "-inf", start=0, num=count, withscores=True)

    return Operation((fleet_key,), stage, lambda replies: [(bytes(m), float(s)) for m, s in replies[0]])


def count_up_to(fleet_key: str, max_score: float) -> Operation[int]:
    return Operation((fleet_key,), lambda pipe: pipe.zcount(fleet_key, "-inf", repr(max_score)),
                     lambda replies: int(replies[0]))


def write(key: str, expected_prefix: bytes, value: bytes) -> Operation[bool]:
    """Store ``value`` unless the key's prefix is no longer ``expected_prefix`` (b'': it was missing).
    A key of another type fails (WRONGTYPE) and is left as it is."""

    def stage(pipe: PipelineLike) -> None:
        pipe.eval(CAS_SCRIPT, 1, key, str(PREFIX_SIZE), expected_prefix, value)

    return Operation((key,), stage, lambda replies: bool(int(replies[0])))


def lock(lock_key_: str, key: str, token: bytes, ttl_ms: int) -> Operation[tuple[bool, bytes]]:
    """Take the build lock (SET NX PX) and read the snapshot's prefix after it, in one trip."""

    def stage(pipe: PipelineLike) -> None:
        pipe.set(lock_key_, token, nx=True, px=ttl_ms)
        pipe.getrange(key, 0, PREFIX_SIZE - 1)

    return Operation((lock_key_, key), stage, lambda replies: (bool(replies[0]), bytes(replies[1])))


def release(lock_key_: str, token: bytes) -> Operation[bool]:
    """Let the build lock go if it is still ``token``'s."""

    def stage(pipe: PipelineLike) -> None:
        pipe.eval(RELEASE_SCRIPT, 1, lock_key_, token)

    return Operation((lock_key_,), stage, lambda replies: bool(int(replies[0])))


def poll(key: str, lock_key_: str) -> Operation[tuple[bytes, bool]]:
    """The snapshot's prefix, and whether a build holds the lock."""

    def stage(pipe: PipelineLike) -> None:
        pipe.getrange(key, 0, PREFIX_SIZE - 1)
        pipe.get(lock_key_)

    return Operation((key, lock_key_), stage, lambda replies: (bytes(replies[0]), replies[1] is not None))


def mark_stale(fleet_key: str) -> Operation[None]:
    """Overwrite the fleet set's snapshot with a marker: for every removal from the fleet set (restore,
    purge, anything that deletes ids), staged before the removal and again after it."""
    key = snapshot_key(fleet_key)
    return Operation((key,), lambda pipe: pipe.set(key, marker_value()), lambda replies: None)


class BuildCursor:
    """(member, score) rows of a set scored at most ``max_score``, oldest first, each member once.

    Keyset paging upwards from -inf: each page starts at the score the last one ended at and skips
    the rows already read there. Scores only go down, so no row moves into the part not yet read;
    rows sharing the score a page ended at are remembered (their hashes), so one shifted by a tie
    added meanwhile is not given twice (one skipped that way shows in the final count).
    """

    def __init__(self, key: str, *, max_score: float, chunk_size: int, trip_bytes: int | None = TRIP_BYTES) -> None:
        self.key, self.max_score, self.chunk_size = key, max_score, chunk_size
        self.budget = TripBudget(trip_bytes)
        self.low: float | str = "-inf"
        self.skip = 0
        self.ties: set[int] = set()  # hashes of the members read at exactly ``low``
        self.done = False
        self.overflow = False  # more ids share one score than MAX_TIES: the build is given up
        self._asked = 0

    def next_operation(self) -> Operation[list[tuple[bytes, float]]] | None:
        if self.done:
            return None
        rows = self.budget.rows()
        self._asked = count = self.chunk_size if rows is None else min(self.chunk_size, rows)
        key, low, high, skip, budget = self.key, self.low, repr(self.max_score), self.skip, self.budget

        def stage(pipe: PipelineLike) -> None:
            pipe.zrangebyscore(key, low, high, start=skip, num=count, withscores=True)

        def parse(replies: Sequence[Any]) -> list[tuple[bytes, float]]:
            budget.saw(len(replies[0]), member_bytes(replies[0], scored=True))
            return list(replies[0])  # (bytes, float) pairs already, as the client parses WITHSCORES

        return Operation((key,), stage, parse)

    def feed(self, rows: list[tuple[bytes, float]]) -> list[list[tuple[bytes, float]]]:
        """The page's rows not given before (one page, as a list of one)."""
        low, ties = self.low, self.ties
        fresh = [row for row in rows if row[1] != low or hash(row[0]) not in ties]
        if len(rows) < self._asked:
            self.done = True
            return [fresh]
        last = rows[-1][1]
        at_last = [hash(member) for member, score in rows if score == last]
        if last == low:
            self.skip += len(rows)
            ties.update(at_last)
        else:
            self.low, self.skip, self.ties = last, len(at_last), set(at_last)
        if len(self.ties) > MAX_TIES:
            self.overflow = self.done = True
        return [fresh]
