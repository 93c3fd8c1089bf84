"""The sans-I/O command layer: pure functions that stage commands and parse replies.

Each function returns an :class:`Operation`; a repository stages it on a
non-transactional pipeline, executes it (sync or async) and hands the replies to
``parse``. No operation spans two keys in one command, so Redis Cluster stays an
option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from statedb.errors import CorruptValueError, InvalidInputError
from statedb.names import check_timestamp, encode_task_id
from statedb.translate import CLOCK_CORRUPT_MARKER, translate_reply_error

T = TypeVar("T")
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


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def encode_task_ids(task_ids: Iterable[object]) -> list[bytes]:
    """Validated, de-duplicated ids in their stored form, in first-seen order."""
    return list(dict.fromkeys(encode_task_id(task_id) for task_id in task_ids))


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
    for task_id, when in stamped:
        member, score = encode_task_id(task_id), check_timestamp(when, "revocation time")
        mapping[member] = min(score, mapping.get(member, score))
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
    """(task id, revocation time) pairs; corrupt members or scores name the key."""
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


def revoked_page(key: str, *, newer_than: float | None, offset: int, count: int) -> Operation[list[tuple[str, float]]]:
    """One page of ids, newest first, revoked at or after ``newer_than`` (all if None)."""
    low: float | str = "-inf" if newer_than is None else newer_than

    def stage(pipe: PipelineLike) -> None:
        pipe.zrevrangebyscore(key, "+inf", low, start=offset, num=count, withscores=True)

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


class PageCursor:
    """Walks a revoked set newest first, page by page, up to ``limit`` ids.

    Paging by rank is safe against ids added meanwhile: newer ids land before the
    cursor and only shift already-read ids into the next page (read twice, never
    skipped).
    """

    def __init__(self, key: str, *, newer_than: float | None, limit: int | None, chunk_size: int) -> None:
        self.key, self.newer_than, self.limit, self.chunk_size = key, newer_than, limit, chunk_size
        self.offset = 0
        self._requested = 0
        self.done = limit is not None and limit <= 0

    def next_operation(self) -> Operation[list[tuple[str, float]]] | None:
        if self.done:
            return None
        left = None if self.limit is None else self.limit - self.offset
        self._requested = self.chunk_size if left is None else min(self.chunk_size, left)
        return revoked_page(self.key, newer_than=self.newer_than, offset=self.offset, count=self._requested)

    def feed(self, page: list[tuple[str, float]]) -> list[tuple[str, float]]:
        self.offset += len(page)
        if len(page) < self._requested or (self.limit is not None and self.offset >= self.limit):
            self.done = True
        return page
