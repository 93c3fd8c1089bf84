"""The sans-I/O command layer: pure functions that stage commands and parse replies.

Each function returns an :class:`Operation`; a repository stages it on a
non-transactional pipeline, executes it (sync or async) and hands the replies to
``parse``. No operation spans two keys in one command, so Redis Cluster stays an
option.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from statedb.errors import CorruptValueError, InvalidInputError, StateDataError
from statedb.names import MAX_TASK_ID_BYTES, check_timestamp, encode_task_id
from statedb.translate import CLOCK_CORRUPT_MARKER, translate_reply_error

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)
# Celery's Lamport clock is an unbounded integer: it is stored and compared as decimal text, never
# as a float (a double stops counting at 2**53). Above these it is stored all the same, and reported:
MAX_CLOCK = 2**53 - 1  # the largest clock a double holds exactly: beyond it a clock is implausible
IMPLAUSIBLE_JUMP = 2**32  # a clock moving this much at once (one tick per event) was forged or corrupted
# Python refuses to convert integers of more than 4 300 digits to text (int_max_str_digits): a longer
# stored clock is corrupt, and a local one that long is not stored.
MAX_CLOCK_DIGITS = 4000
_DIGITS = re.compile(rb"[0-9]+")

# Moves the clock forward only, so concurrent writers can never make it go back. Compares
# decimal text (leading zeros aside: by length, then 15 digits at a time, which Lua numbers
# hold exactly), so a clock of any size is ordered right. Replies {stored value, 1 if the
# key was missing}: a missing clock of a worker that wrote one before means Redis lost its data.
ADVANCE_CLOCK_SCRIPT = f"""
local current = redis.call('GET', KEYS[1])
local new = ARGV[1]
if not current then
  redis.call('SET', KEYS[1], new)
  return {{new, 1}}
end
if not string.match(current, '^%d+$') then
  return redis.error_reply('ERR {CLOCK_CORRUPT_MARKER}')
end
local old = string.match(current, '^0*(%d.*)$')
if string.len(old) ~= string.len(new) then
  if string.len(old) > string.len(new) then
    return {{current, 0}}
  end
else
  for i = 1, string.len(new), 15 do
    local a, b = tonumber(string.sub(old, i, i + 14)), tonumber(string.sub(new, i, i + 14))
    if a ~= b then
      if a > b then
        return {{current, 0}}
      end
      break
    end
    if i + 15 > string.len(new) then
      return {{current, 0}}
    end
  end
end
redis.call('SET', KEYS[1], new)
return {{new, 0}}
"""


class ClockAdvance(NamedTuple):
    """The clock stored after an advance, and whether the key had to be created."""

    stored: int
    created: bool


class PipelineLike(Protocol):
    """The few pipeline methods staged on; sync and async pipelines both have them."""

    def zadd(self, name: Any, mapping: Any, *args: Any, **kwargs: Any) -> Any: ...
    def zrevrangebyscore(self, name: Any, max: Any, min: Any, *args: Any, **kwargs: Any) -> Any: ...
    def zcard(self, name: Any) -> Any: ...
    def zcount(self, name: Any, min: Any, max: Any) -> Any: ...
    def zrevrange(self, name: Any, start: Any, end: Any, *args: Any, **kwargs: Any) -> Any: ...
    def zmscore(self, key: Any, members: Any) -> Any: ...
    def zrem(self, name: Any, *values: Any) -> Any: ...
    def get(self, name: Any) -> Any: ...
    def eval(self, script: Any, numkeys: Any, *keys_and_args: Any) -> Any: ...
    def ping(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Operation(Generic[T]):
    """Commands to stage, the key each one targets, and how to read their replies."""

    keys: tuple[str, ...]
    stage: Callable[[PipelineLike], None]
    parse: Callable[[Sequence[Any]], T]

    def result(self, replies: Sequence[Any]) -> T:
        """Parse replies, raising the library error for the first error reply."""
        for reply, key in zip(replies, self.keys, strict=True):
            if isinstance(reply, Exception):
                raise translate_reply_error(reply, key=key) from reply
        return self.parse(replies)


class Cursor(Protocol[R_co]):
    """A read in several round trips: the next operation (None when done), then what its reply yields."""

    def next_operation(self) -> Operation[Any] | None: ...
    def feed(self, reply: Any, /) -> Sequence[R_co]: ...


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _encode(task_id: object) -> bytes:
    # The usual id, ASCII text within the limit, needs no other check.
    if type(task_id) is str and task_id.isascii() and 0 < len(task_id) <= MAX_TASK_ID_BYTES:
        return task_id.encode()
    return encode_task_id(task_id)


def encode_task_ids(task_ids: Iterable[object]) -> list[bytes]:
    """Validated, de-duplicated ids in their stored form, in first-seen order."""
    return list(dict.fromkeys(map(_encode, task_ids)))


def add_revoked(key: str, task_ids: Iterable[object], revoked_at: float, chunk_size: int) -> Operation[int]:
    """ZADD LT: adds new ids, and keeps the earliest time for ids already there."""
    members = encode_task_ids(task_ids)
    score = check_timestamp(revoked_at, "revocation time")
    chunks = _chunks(members, chunk_size)

    def stage(pipe: PipelineLike) -> None:
        for chunk in chunks:
            pipe.zadd(key, dict.fromkeys(chunk, score), lt=True)

    return Operation((key,) * len(chunks), stage, lambda replies: sum(int(r) for r in replies))


def add_revoked_at(key: str, stamped: Sequence[tuple[object, float]], chunk_size: int) -> Operation[int]:
    """Like :func:`add_revoked`, with a revocation time per id (earliest wins)."""
    mapping: dict[bytes, float] = {}
    checked: dict[float, float] = {}  # each distinct time is validated once: a batch shares one
    for task_id, when in stamped:
        member = _encode(task_id)
        score = checked.get(when) if type(when) is float else None
        if score is None:
            score = check_timestamp(when, "revocation time")
            if type(when) is float:
                checked[when] = score
        if mapping.setdefault(member, score) > score:
            mapping[member] = score
    items = list(mapping.items())
    chunks = _chunks(items, chunk_size)

    def stage(pipe: PipelineLike) -> None:
        for chunk in chunks:
            pipe.zadd(key, dict(chunk), lt=True)

    return Operation((key,) * len(chunks), stage, lambda replies: sum(int(r) for r in replies))


def remove_revoked(key: str, task_ids: Iterable[object], chunk_size: int) -> Operation[int]:
    chunks = _chunks(encode_task_ids(task_ids), chunk_size)

    def stage(pipe: PipelineLike) -> None:
        for chunk in chunks:
            pipe.zrem(key, *chunk)

    return Operation((key,) * len(chunks), stage, lambda replies: sum(int(r) for r in replies))


def count_revoked(key: str) -> Operation[int]:
    return Operation((key,), lambda pipe: pipe.zcard(key), lambda replies: int(replies[0]))


class BadMembers:
    """What reads skipped: members that cannot be ids (not UTF-8, a non-finite score...) and keys
    of another type. One bad member must not stop a worker's boot nor a listing: it is left in
    Redis, skipped, and counted here; the caller reports it (rate-limited) and shows the count.
    """

    KEPT = 20

    def __init__(self) -> None:
        self.count = 0  # members skipped
        self.errors: list[StateDataError] = []  # the first KEPT, to report
        self.reported = 0  # errors[:reported] were reported already (the caller's bookkeeping)
        self.unreadable: dict[str, StateDataError] = {}  # key -> why it could not be read at all (its type)

    def key_unreadable(self, error: StateDataError) -> None:
        self.unreadable.setdefault(error.key, error)

    def skip(self, error: StateDataError) -> None:
        self.count += 1
        if len(self.errors) < self.KEPT:
            self.errors.append(error)

    def unreported(self) -> list[StateDataError]:
        new = self.errors[self.reported :]
        self.reported = len(self.errors)
        return new


def _bad(key: str, bad: BadMembers | None, error: CorruptValueError) -> None:
    if bad is None:
        raise error
    bad.skip(error)


def decode_revoked_page(key: str, rows: Sequence[tuple[bytes, float]], bad: BadMembers | None = None
                        ) -> list[tuple[str, float]]:
    """(task id, revocation time) pairs; corrupt members or scores name the key (skipped into ``bad``
    if given, else raised).

    Boot reads up to a million rows through here: the common case is checked a
    whole page at a time (a non-finite score makes the sum non-finite), and only
    a page that fails is walked row by row to name the culprit.
    """
    if not rows:
        return []
    members, scores = zip(*rows, strict=True)
    try:
        task_ids = list(map(bytes.decode, members))
    except UnicodeDecodeError:
        task_ids = None
    if task_ids is None or not math.isfinite(sum(scores)):
        return _decode_revoked_rows(key, rows, bad)
    return list(zip(task_ids, scores, strict=True))


def _decode_revoked_rows(key: str, rows: Sequence[tuple[bytes, float]], bad: BadMembers | None
                         ) -> list[tuple[str, float]]:
    page = []
    for member, score in rows:
        try:
            task_id = member.decode("utf-8")
        except UnicodeDecodeError:
            _bad(key, bad, CorruptValueError(
                f"Redis key {key!r} holds a member that is not UTF-8 text: {member[:60]!r}", key=key))
            continue
        if not math.isfinite(score):
            _bad(key, bad, CorruptValueError(
                f"Redis key {key!r} holds task id {task_id[:60]!r} with a non-finite score {score!r}", key=key))
            continue
        page.append((task_id, score))
    return page


def revoked_page(key: str, *, newer_than: float | None, offset: int, count: int,
                 high: float | str = "+inf", bad: BadMembers | None = None) -> Operation[list[tuple[str, float]]]:
    """One page of ids, newest first, revoked at or before ``high`` (skipping ``offset`` of
    those) and at or after ``newer_than`` (all if None)."""
    low: float | str = "-inf" if newer_than is None else newer_than

    def stage(pipe: PipelineLike) -> None:
        pipe.zrevrangebyscore(key, high, low, start=offset, num=count, withscores=True)

    return Operation((key,), stage, lambda replies: decode_revoked_page(key, replies[0], bad))


def parse_clock(key: str, raw: object) -> int:
    """A stored clock: any non-negative integer (decimal text); anything else names the key."""
    if raw is None:
        return 0
    if isinstance(raw, bytes) and len(raw) <= MAX_CLOCK_DIGITS and _DIGITS.fullmatch(raw):
        return int(raw)
    raise CorruptValueError(
        f"Redis key {key!r} does not hold a non-negative integer clock: {raw!r:.60}", key=key
    )


def read_clock(key: str) -> Operation[int]:
    return Operation((key,), lambda pipe: pipe.get(key), lambda replies: parse_clock(key, replies[0]))


def check_clock_value(value: object, key: str) -> int:
    """A clock value to store: any non-negative integer that parse_clock reads back."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"clock value must be a non-negative integer, got {value!r:.60}")
    if value.bit_length() > MAX_CLOCK_DIGITS * 3:  # 3 bits a digit is less than log2(10): within the digits
        raise InvalidInputError(f"the clock for Redis key {key!r} is {value.bit_length()} bits long: "
                                f"not stored (a real clock ticks once per event)")
    return value


def implausible_clock(value: int, previous: int | None) -> str | None:
    """Why ``value`` (coming after ``previous``) cannot be a real clock, or None if it can be.

    A clock ticks once per event: beyond 2**53 ticks, or a jump of 2**32 at once, it was
    forged (a ``worker-heartbeat`` event with any clock is enough) or corrupted. It is
    stored and used all the same (a clock must never stop a worker), and reported.
    """
    if value > MAX_CLOCK:
        return f"clock {value} is above 2**53"
    if previous is not None and value - previous > IMPLAUSIBLE_JUMP:
        return f"clock jumped by {value - previous} at once (from {previous} to {value})"
    return None


def advance_clock(key: str, value: int) -> Operation[ClockAdvance]:
    """Store ``value`` unless the stored clock is already ahead."""
    checked = check_clock_value(value, key)

    def stage(pipe: PipelineLike) -> None:
        pipe.eval(ADVANCE_CLOCK_SCRIPT, 1, key, str(checked))

    def parse(replies: Sequence[Any]) -> ClockAdvance:
        stored, created = replies[0]
        return ClockAdvance(parse_clock(key, stored), bool(created))

    return Operation((key,), stage, parse)


PROBE_MEMBER = b"\x00statedb-probe"


def check_zadd_lt(key: str) -> Operation[None]:
    """ZADD XX LT on a member that is never there: no effect, but Redis < 6.2 rejects the syntax."""

    def stage(pipe: PipelineLike) -> None:
        pipe.zadd(key, {PROBE_MEMBER: 0}, xx=True, lt=True)

    return Operation((key,), stage, lambda replies: None)


def ping() -> Operation[bool]:
    return Operation(("",), lambda pipe: pipe.ping(), lambda replies: bool(replies[0]))


class KeysetCursor(Generic[R_co]):
    """Walks a sorted set newest first, page by page, up to ``limit`` rows (keyset paging).

    Each page starts at the score where the previous one ended and skips only the
    rows already read at that very score: the server never walks the pages read
    before, which a LIMIT offset does (N rows in pages then cost O(N^2 / page) on
    the server). Rows added meanwhile with a newer score are not read; rows purged
    below the cursor shift nothing. Subclasses say how a page is read and where a
    row's score is.
    """

    def __init__(self, key: str, *, newer_than: float | None, limit: int | None, chunk_size: int,
                 bad: BadMembers | None = None) -> None:
        self.bad = bad  # where bad members are skipped to (None: raised)
        if chunk_size < 1:
            raise InvalidInputError(f"chunk size must be at least 1, got {chunk_size!r}")
        self.key, self.newer_than, self.limit, self.chunk_size = key, newer_than, limit, chunk_size
        self.offset = 0  # rows read so far
        self.high: float | str = "+inf"  # the score the next page starts at
        self.skip = 0  # rows already read at exactly that score
        self._requested = 0
        self._raw: Sequence[Any] | None = None  # the last page's rows as read (set by its parse)
        self.done = limit is not None and limit <= 0

    def page(self, *, offset: int, count: int, high: float | str) -> Operation[list[R_co]]:
        raise NotImplementedError

    @staticmethod
    def score(row: Any) -> float:
        raise NotImplementedError

    def next_operation(self) -> Operation[list[R_co]] | None:
        if self.done:
            return None
        left = None if self.limit is None else self.limit - self.offset
        self._requested = self.chunk_size if left is None else min(self.chunk_size, left)
        self._raw = None
        operation = self.page(offset=self.skip, count=self._requested, high=self.high)
        parse = operation.parse

        def keep_raw(replies: Sequence[Any]) -> list[R_co]:
            self._raw = replies[0]  # the (member, score) rows as read, bad ones included
            return parse(replies)

        return Operation(operation.keys, operation.stage, keep_raw)

    def feed(self, page: list[R_co]) -> list[R_co]:
        # Paging follows the rows as read: a bad member skipped from the page still counts.
        raw = self._raw
        rows, score = (page, self.score) if raw is None else (raw, lambda row: float(row[1]))
        self.offset += len(rows)
        if len(rows) < self._requested or (self.limit is not None and self.offset >= self.limit):
            self.done = True
        elif rows:
            last = score(rows[-1])
            ties = 0
            for row in reversed(rows):
                if score(row) != last:
                    break
                ties += 1
            self.skip = self.skip + ties if last == self.high else ties
            self.high = last
        return page


class PageCursor(KeysetCursor[tuple[str, float]]):
    """(task id, revocation time) rows of a revoked set, newest first."""

    def page(self, *, offset: int, count: int, high: float | str) -> Operation[list[tuple[str, float]]]:
        return revoked_page(self.key, newer_than=self.newer_than, offset=offset, count=count, high=high,
                            bad=self.bad)

    @staticmethod
    def score(row: Any) -> float:
        return float(row[1])


def decode_task_ids(key: str, members: Sequence[bytes], bad: BadMembers | None = None) -> list[str]:
    """Stored members as task ids; a member that is not UTF-8 names the key (skipped into ``bad``
    if given, else raised)."""
    try:
        return list(map(bytes.decode, members))
    except UnicodeDecodeError:
        return [task_id for task_id, _ in _decode_revoked_rows(key, [(member, 0.0) for member in members], bad)]


MAX_WINDOWS = 1000


def revoked_windows(now: float, newer_than: float, width: float) -> list[tuple[str, str, float]]:
    """Score windows newest first: (now, +inf], then (now - width, now], ... down to newer_than.

    Each is (max, min) in ZRANGE BYSCORE syntax and the wall-clock time its ids are
    stamped with: its newest bound (``now`` for ids stamped in the future). There are
    at most MAX_WINDOWS below ``now`` (wider ones if ``width`` asks for more), so a
    width too small for the float precision of the times still ends.
    """
    if not (math.isfinite(width) and width > 0):
        raise InvalidInputError(f"window width must be finite and greater than zero, got {width!r}")
    if not (math.isfinite(now) and math.isfinite(newer_than)):
        raise InvalidInputError(f"window bounds must be finite, got {now!r} and {newer_than!r}")
    windows = [("+inf", f"({now!r}", now)]
    span = now - newer_than
    if span < 0:
        return windows
    count = max(1, min(MAX_WINDOWS, math.ceil(span / width)))
    bounds = [now - span * i / count for i in range(count)]
    for high, low in itertools.pairwise(bounds):
        windows.append((repr(high), f"({low!r}", high))
    windows.append((repr(bounds[-1]), repr(newer_than), bounds[-1]))
    return windows


MAX_READ_AHEAD = 128


class WindowCursor:
    """Walks a revoked set newest first by windows of revocation time, reading ids only.

    Boot's fast path: no score crosses the wire (formatting and parsing the scores
    costs more than the ids themselves), and every id is stamped with the newest
    bound of its window, so it is taken to be at most one window width younger than
    it is: it may stay in memory up to that much longer, never shorter. Up to
    ``chunk_size`` ids per command (a fuller window is read on with LIMIT offsets),
    ``per_trip`` commands per round trip at first, and ``limit`` ids in all, the
    newest. While windows come back less than full the read-ahead doubles (up to
    MAX_READ_AHEAD windows a trip), so an empty or sparse set costs a few round trips,
    not one per ``per_trip`` windows. Windows are ranges of scores, so ids added or
    purged meanwhile in other windows shift nothing. ZREVRANGEBYSCORE only: the
    documented worker ACL fits.
    """

    def __init__(self, key: str, *, now: float, newer_than: float, width: float, limit: int | None,
                 chunk_size: int, per_trip: int = 8, bad: BadMembers | None = None) -> None:
        self.key, self.limit, self.chunk_size, self.per_trip, self.bad = key, limit, chunk_size, per_trip, bad
        self.windows = revoked_windows(now, newer_than, width)
        self.expect = (0, 0)  # the (window, offset) page to hand out next
        self.received: dict[tuple[int, int], tuple[int, list[str], int]] = {}  # page -> (asked for, ids, read)
        self._raw_lengths: list[int] = []
        self.loaded = 0
        # Ranks of the set (newest first) the pages handed out cover, bad members skipped in them
        # included; a page cut short by the limit counts its ids kept only (never more than it covers).
        self.ranks = 0
        self.reach = per_trip  # windows read ahead in one trip
        self.done = limit is not None and limit <= 0
        self._plan: list[tuple[int, int, int]] = []  # (window, offset, ids asked for)

    def next_operation(self) -> Operation[list[list[str]]] | None:
        if self.done:
            return None
        window, offset = self.expect
        left = None if self.limit is None else self.limit - self.loaded
        count = self.chunk_size if left is None else min(self.chunk_size, left)
        if offset:  # this window holds more than a page: read on in it
            pages = self.per_trip if left is None else min(self.per_trip, -(-left // self.chunk_size))
            plan = [(window, offset + i * self.chunk_size, self.chunk_size) for i in range(pages)]
        else:
            plan = [(w, 0, count) for w in range(window, min(window + self.reach, len(self.windows)))]
        plan = self._plan = [page for page in plan if page[:2] not in self.received]
        key, windows, bad = self.key, self.windows, self.bad

        def stage(pipe: PipelineLike) -> None:
            for w, start, num in plan:
                high, low, _ = windows[w]
                # Window 0 (ids stamped in the future, normally none) is read with its
                # scores: +inf, the only corrupt score that can sort there, stops the boot.
                pipe.zrevrangebyscore(key, high, low, start=start, num=num, withscores=w == 0)

        def parse(replies: Sequence[Any]) -> list[list[str]]:
            self._raw_lengths = [len(reply) for reply in replies]  # bad members skipped still count
            return [[task_id for task_id, _ in decode_revoked_page(key, reply, bad)] if w == 0
                    else decode_task_ids(key, reply, bad) for (w, _, _), reply in zip(plan, replies, strict=True)]

        return Operation((key,) * len(plan), stage, parse)

    def feed(self, pages: list[list[str]]) -> list[tuple[float, list[str]]]:
        """The pages now ready, in order: (wall-clock stamp, ids newest first)."""
        raw = self._raw_lengths if len(self._raw_lengths) == len(pages) else [len(ids) for ids in pages]
        self._raw_lengths = []
        for (w, start, num), ids, got in zip(self._plan, pages, raw, strict=True):
            self.received[w, start] = (num, ids, got)
        heads = [got < num for (_, start, num), got in zip(self._plan, raw, strict=True) if not start]
        if heads:  # windows read from their start: all short means a sparse stretch, read further ahead
            self.reach = min(MAX_READ_AHEAD, self.reach * 2) if all(heads) else self.per_trip
        ready: list[tuple[float, list[str]]] = []
        while not self.done and self.expect in self.received:
            window, offset = self.expect
            asked, ids, got = self.received.pop(self.expect)
            # A page cut short by the limit is "full" too: the limit then ends the walk below.
            full = got == asked
            if self.limit is not None and len(ids) > self.limit - self.loaded:
                ids = ids[: self.limit - self.loaded]
                self.ranks += len(ids)
            else:
                self.ranks += got
            if ids:
                ready.append((self.windows[window][2], ids))
                self.loaded += len(ids)
            if self.limit is not None and self.loaded >= self.limit:
                self.done = True
            elif full:
                self.expect = (window, offset + asked)
            elif window + 1 < len(self.windows):
                self.expect = (window + 1, 0)
            else:
                self.done = True
        # Pages read on past the end of a window are never handed out.
        self.received = {page: got for page, got in self.received.items() if page[0] > self.expect[0]}
        return ready
