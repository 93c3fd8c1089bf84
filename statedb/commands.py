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

from statedb.errors import CorruptValueError, InvalidInputError
from statedb.names import MAX_TASK_ID_BYTES, check_timestamp, encode_task_id
from statedb.translate import CLOCK_CORRUPT_MARKER, translate_reply_error

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)
MAX_CLOCK = 2**53 - 1
# A stored clock this close to the limit cannot be real (one tick per event); treat it as corrupt.
MAX_STORED_CLOCK = MAX_CLOCK - 2**32
_DIGITS = re.compile(rb"\d{1,16}")

# Moves the clock forward only, so concurrent writers can never make it go back.
# Replies {stored value, 1 if the key was missing}: a missing clock of a worker
# that wrote one before means Redis lost its data.
ADVANCE_CLOCK_SCRIPT = f"""
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1])
  return {{ARGV[1], 1}}
end
if not string.match(current, '^%d+$') or string.len(current) > 16 then
  return redis.error_reply('ERR {CLOCK_CORRUPT_MARKER}')
end
if tonumber(current) >= tonumber(ARGV[1]) then
  return {{current, 0}}
end
redis.call('SET', KEYS[1], ARGV[1])
return {{ARGV[1], 0}}
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


def decode_revoked_page(key: str, rows: Sequence[tuple[bytes, float]]) -> list[tuple[str, float]]:
    """(task id, revocation time) pairs; corrupt members or scores name the key.

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
        return _decode_revoked_rows(key, rows)
    return list(zip(task_ids, scores, strict=True))


def _decode_revoked_rows(key: str, rows: Sequence[tuple[bytes, float]]) -> list[tuple[str, float]]:
    page = []
    for member, score in rows:
        try:
            task_id = member.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptValueError(
                f"Redis key {key!r} holds a member that is not UTF-8 text: {member[:60]!r}", key=key
            ) from None
        if not math.isfinite(score):
            raise CorruptValueError(
                f"Redis key {key!r} holds task id {task_id[:60]!r} with a non-finite score {score!r}",
                key=key,
            )
        page.append((task_id, score))
    return page


def revoked_page(key: str, *, newer_than: float | None, offset: int, count: int,
                 high: float | str = "+inf") -> Operation[list[tuple[str, float]]]:
    """One page of ids, newest first, revoked at or before ``high`` (skipping ``offset`` of
    those) and at or after ``newer_than`` (all if None)."""
    low: float | str = "-inf" if newer_than is None else newer_than

    def stage(pipe: PipelineLike) -> None:
        pipe.zrevrangebyscore(key, high, low, start=offset, num=count, withscores=True)

    return Operation((key,), stage, lambda replies: decode_revoked_page(key, replies[0]))


def parse_clock(key: str, raw: object) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bytes) and _DIGITS.fullmatch(raw) and int(raw) <= MAX_STORED_CLOCK:
        return int(raw)
    raise CorruptValueError(
        f"Redis key {key!r} does not hold a non-negative integer clock: {raw!r:.60}", key=key
    )


def read_clock(key: str) -> Operation[int]:
    return Operation((key,), lambda pipe: pipe.get(key), lambda replies: parse_clock(key, replies[0]))


def check_clock_value(value: object, key: str) -> int:
    """A clock value to store: what can be written can also be read back (same bound as parse_clock)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"clock value must be a non-negative integer, got {value!r:.60}")
    if value > MAX_STORED_CLOCK:
        # Only a corrupt stored clock, adjusted, gets here: a real one ticks once per event.
        raise CorruptValueError(f"the clock for Redis key {key!r} would exceed {MAX_STORED_CLOCK}: "
                                f"the stored clock is not a real one", key=key)
    return value


def advance_clock(key: str, value: int) -> Operation[ClockAdvance]:
    """Store ``value`` unless the stored clock is already ahead."""
    checked = check_clock_value(value, key)

    def stage(pipe: PipelineLike) -> None:
        pipe.eval(ADVANCE_CLOCK_SCRIPT, 1, key, checked)

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

    def __init__(self, key: str, *, newer_than: float | None, limit: int | None, chunk_size: int) -> None:
        if chunk_size < 1:
            raise InvalidInputError(f"chunk size must be at least 1, got {chunk_size!r}")
        self.key, self.newer_than, self.limit, self.chunk_size = key, newer_than, limit, chunk_size
        self.offset = 0  # rows read so far
        self.high: float | str = "+inf"  # the score the next page starts at
        self.skip = 0  # rows already read at exactly that score
        self._requested = 0
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
        return self.page(offset=self.skip, count=self._requested, high=self.high)

    def feed(self, page: list[R_co]) -> list[R_co]:
        self.offset += len(page)
        if len(page) < self._requested or (self.limit is not None and self.offset >= self.limit):
            self.done = True
        elif page:
            last = self.score(page[-1])
            ties = 0
            for row in reversed(page):
                if self.score(row) != last:
                    break
                ties += 1
            self.skip = self.skip + ties if last == self.high else ties
            self.high = last
        return page


class PageCursor(KeysetCursor[tuple[str, float]]):
    """(task id, revocation time) rows of a revoked set, newest first."""

    def page(self, *, offset: int, count: int, high: float | str) -> Operation[list[tuple[str, float]]]:
        return revoked_page(self.key, newer_than=self.newer_than, offset=offset, count=count, high=high)

    @staticmethod
    def score(row: Any) -> float:
        return float(row[1])


def decode_task_ids(key: str, members: Sequence[bytes]) -> list[str]:
    """Stored members as task ids; a member that is not UTF-8 names the key."""
    try:
        return list(map(bytes.decode, members))
    except UnicodeDecodeError:
        _decode_revoked_rows(key, [(member, 0.0) for member in members])
        raise  # pragma: no cover (the line above raises)


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
                 chunk_size: int, per_trip: int = 8) -> None:
        self.key, self.limit, self.chunk_size, self.per_trip = key, limit, chunk_size, per_trip
        self.windows = revoked_windows(now, newer_than, width)
        self.expect = (0, 0)  # the (window, offset) page to hand out next
        self.received: dict[tuple[int, int], tuple[int, list[str]]] = {}  # page -> (ids asked for, ids)
        self.loaded = 0
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
        key, windows = self.key, self.windows

        def stage(pipe: PipelineLike) -> None:
            for w, start, num in plan:
                high, low, _ = windows[w]
                # Window 0 (ids stamped in the future, normally none) is read with its
                # scores: +inf, the only corrupt score that can sort there, stops the boot.
                pipe.zrevrangebyscore(key, high, low, start=start, num=num, withscores=w == 0)

        def parse(replies: Sequence[Any]) -> list[list[str]]:
            return [[task_id for task_id, _ in decode_revoked_page(key, reply)] if w == 0
                    else decode_task_ids(key, reply) for (w, _, _), reply in zip(plan, replies, strict=True)]

        return Operation((key,) * len(plan), stage, parse)

    def feed(self, pages: list[list[str]]) -> list[tuple[float, list[str]]]:
        """The pages now ready, in order: (wall-clock stamp, ids newest first)."""
        for (w, start, num), ids in zip(self._plan, pages, strict=True):
            self.received[w, start] = (num, ids)
        heads = [len(ids) < num for (_, start, num), ids in zip(self._plan, pages, strict=True) if not start]
        if heads:  # windows read from their start: all short means a sparse stretch, read further ahead
            self.reach = min(MAX_READ_AHEAD, self.reach * 2) if all(heads) else self.per_trip
        ready: list[tuple[float, list[str]]] = []
        while not self.done and self.expect in self.received:
            window, offset = self.expect
            asked, ids = self.received.pop(self.expect)
            # A page cut short by the limit is "full" too: the limit then ends the walk below.
            full = len(ids) == asked
            if self.limit is not None:
                ids = ids[: self.limit - self.loaded]
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
