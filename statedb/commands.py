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
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from statedb.errors import CorruptValueError, InvalidInputError, StateDataError, StateDBError
from statedb.names import MAX_TASK_ID_BYTES, check_timestamp, encode_task_id
from statedb.translate import CLOCK_CORRUPT_MARKER, translate_reply_error

T = TypeVar("T")
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
    def hset(self, name: Any, *args: Any, **kwargs: Any) -> Any: ...
    def getrange(self, key: Any, start: Any, end: Any) -> Any: ...
    def set(self, name: Any, value: Any, *args: Any, **kwargs: Any) -> Any: ...
    def zrangebyscore(self, name: Any, min: Any, max: Any, *args: Any, **kwargs: Any) -> Any: ...
    def eval(self, script: Any, numkeys: Any, *keys_and_args: Any) -> Any: ...
    def ping(self, **kwargs: Any) -> Any: ...
    def execute_command(self, *args: Any, **options: Any) -> Any: ...


@dataclass(frozen=True)
class Operation(Generic[T]):
    """Commands to stage, the key each one targets, and how to read their replies."""

    keys: tuple[str | None, ...]  # the key each command targets (None: a server command such as PING)
    stage: Callable[[PipelineLike], None]
    parse: Callable[[Sequence[Any]], T]

    def result(self, replies: Sequence[Any]) -> T:
        """Parse replies, raising the library error for the first error reply."""
        for reply, key in zip(replies, self.keys, strict=True):
            if isinstance(reply, Exception):
                raise translate_reply_error(reply, key=key) from reply
        return self.parse(replies)


@dataclass(frozen=True)
class LenientOperation(Operation[T]):
    """An operation some of whose replies (by index) may be errors: those reach ``parse`` as they are."""

    optional: frozenset[int] = field(default_factory=frozenset)

    def result(self, replies: Sequence[Any]) -> T:
        for index, (reply, key) in enumerate(zip(replies, self.keys, strict=True)):
            if isinstance(reply, Exception) and index not in self.optional:
                raise translate_reply_error(reply, key=key) from reply
        return self.parse(replies)


U = TypeVar("U")


def combined(operations: Sequence[Operation[T]]) -> Operation[list[T]]:
    """Several operations on one pipeline (one round trip): their results in order."""
    keys = tuple(key for operation in operations for key in operation.keys)

    def stage(pipe: Any) -> None:
        for operation in operations:
            operation.stage(pipe)

    def parse(replies: Sequence[Any]) -> list[T]:
        results, start = [], 0
        for operation in operations:
            width = len(operation.keys)
            results.append(operation.result(replies[start : start + width]))
            start += width
        return results

    # Each operation checks its own replies (some may accept error replies): none is checked here.
    return LenientOperation(keys, stage, parse, optional=frozenset(range(len(keys))))


def combine(first: Operation[T], second: Operation[U]) -> Operation[tuple[T, U]]:
    """Two operations of different result types in one round trip: :func:`combined` of the pair."""
    pair: Operation[list[Any]] = combined([first, second])

    def parse(replies: Sequence[Any]) -> tuple[T, U]:
        one, two = pair.result(replies)
        return one, two

    return LenientOperation(pair.keys, pair.stage, parse, optional=frozenset(range(len(pair.keys))))


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _encode(task_id: object) -> bytes:
    # The usual id, printable ASCII text within the limit, needs no other check (for ASCII text,
    # isprintable() is false exactly for the control characters: newline, tab, ESC, DEL...).
    if type(task_id) is str and task_id.isascii() and task_id.isprintable() and 0 < len(task_id) <= MAX_TASK_ID_BYTES:
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
    task_ids = _texts(members)
    if task_ids is None or not math.isfinite(sum(scores)):
        return _decode_revoked_rows(key, rows, bad)
    return list(zip(task_ids, scores, strict=True))


def _texts(members: Sequence[bytes | str]) -> list[str] | None:
    """Members as text, or None if one is not UTF-8. A client made with ``decode_responses=True``
    (one passed in to the admin APIs) hands them over as text already."""
    try:
        return list(map(bytes.decode, members))  # type: ignore[arg-type]
    except UnicodeDecodeError:
        return None
    except TypeError:
        if all(type(member) is str for member in members):
            return list(members)  # type: ignore[arg-type]
        return None


def _decode_revoked_rows(key: str, rows: Sequence[tuple[bytes, float]], bad: BadMembers | None
                         ) -> list[tuple[str, float]]:
    page = []
    for member, score in rows:
        try:
            task_id = member if isinstance(member, str) else member.decode("utf-8")
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
    if isinstance(raw, str) and raw.isascii():  # from a client made with decode_responses=True
        raw = raw.encode()
    if isinstance(raw, bytes) and len(raw) <= MAX_CLOCK_DIGITS and _DIGITS.fullmatch(raw):
        return int(raw)
    raise CorruptValueError(
        f"Redis key {key!r} does not hold a non-negative integer clock: {raw!r:.60}", key=key
    )


def read_clock(key: str) -> Operation[int]:
    return Operation((key,), lambda pipe: pipe.get(key), lambda replies: parse_clock(key, replies[0]))


def check_clock_value(key: str, value: object) -> int:
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
    checked = check_clock_value(key, value)

    def stage(pipe: PipelineLike) -> None:
        pipe.eval(ADVANCE_CLOCK_SCRIPT, 1, key, str(checked))

    def parse(replies: Sequence[Any]) -> ClockAdvance:
        stored, created = replies[0]
        return ClockAdvance(parse_clock(key, stored), bool(created))

    return Operation((key,), stage, parse)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker records in its ``<prefix><worker>:info`` hash with each clock save."""

    last_seen: float  # when the clock was saved: epoch seconds on the Redis server's clock
    scope: str  # "worker" or "shared"
    version: str  # of the library

    def fields(self) -> dict[str, str]:
        """The hash fields, as text (``last_seen`` as decimal seconds, never in exponent form)."""
        return {"last_seen": f"{check_timestamp(self.last_seen, 'last seen time'):.6f}", "scope": self.scope,
                "version": self.version}


def write_info(key: str, info: WorkerInfo) -> Operation[int]:
    """HSET the worker's info hash (fields added or changed, never removed)."""
    mapping = info.fields()
    return Operation((key,), lambda pipe: pipe.hset(key, mapping=mapping), lambda replies: int(replies[0]))


class ClockSave(NamedTuple):
    """A clock advance and how the info hash staged with it fared (None: written, or not asked)."""

    advance: ClockAdvance
    info_error: StateDBError | None = None


def save_clock(clock_key: str, value: int, info_key: str | None = None, info: WorkerInfo | None = None
               ) -> Operation[ClockSave]:
    """The clock's advance and, given ``info_key`` and ``info``, the worker's info hash in the same round
    trip. The advance failing raises; the HSET failing (an ACL without ``+hset`` on ``:info`` keys, a key
    of another type) never does: it comes back in ``info_error``."""
    advance = advance_clock(clock_key, value)
    note = None if info_key is None or info is None else write_info(info_key, info)

    def stage(pipe: PipelineLike) -> None:
        advance.stage(pipe)
        if note is not None:
            note.stage(pipe)

    def parse(replies: Sequence[Any]) -> ClockSave:
        error = None
        if note is not None and isinstance(replies[1], Exception):
            error = translate_reply_error(replies[1], key=info_key)
        return ClockSave(advance.parse(replies[:1]), error)

    keys = advance.keys if note is None else advance.keys + note.keys
    return LenientOperation(keys, stage, parse, optional=frozenset(range(1, len(keys))))


PROBE_MEMBER = b"\x00statedb-probe"


def check_zadd_lt(key: str) -> Operation[None]:
    """ZADD XX LT on a member that is never there: no effect, but Redis < 6.2 rejects the syntax."""

    def stage(pipe: PipelineLike) -> None:
        pipe.zadd(key, {PROBE_MEMBER: 0}, xx=True, lt=True)

    return Operation((key,), stage, lambda replies: None)


def ping() -> Operation[bool]:
    return Operation((None,), lambda pipe: pipe.ping(), lambda replies: bool(replies[0]))


def decode_task_ids(key: str, members: Sequence[bytes], bad: BadMembers | None = None) -> list[str]:
    """Stored members as task ids; a member that is not UTF-8 names the key (skipped into ``bad``
    if given, else raised)."""
    texts = _texts(members)
    if texts is not None:
        return texts
    return [task_id for task_id, _ in _decode_revoked_rows(key, [(member, 0.0) for member in members], bad)]




# -- every command the library sends, and to which keys -----------------------------------------
# The README's ACL rules (Security) are checked against this table (tests/test_command_table.py),
# and the admin APIs' commands against it as they run. The demo (its own embedded server) is not
# in it.

KEY_KINDS = {  # a kind of key, as in the README's Key layout, with the worker "celery@host"
    "revoked": "{prefix}celery@host:revoked",
    "clock": "{prefix}celery@host:clock",
    "info": "{prefix}celery@host:info",
    "stamps": "{prefix}celery@host:stamps",
    "fleet-revoked": "{prefix}shared:fleet-revoked",
    "fleet-stamps": "{prefix}shared:fleet-stamps",
    "legacy-blob": "{prefix}celery@host:zrevoked",
    "fleet-snapshot": "{prefix}shared:fleet-revoked:snapshot",
    "fleet-snapshot-lock": "{prefix}shared:fleet-revoked:snapshot-lock",
}
SNAPSHOT = ("fleet-snapshot", "fleet-snapshot-lock")
WORKER, ADMIN = "worker", "admin"  # admin: the CLI, the admin APIs, migrations and producers' revokes
SETS = ("revoked", "fleet-revoked")
ALL_SETS = ("revoked", "fleet-revoked", "stamps", "fleet-stamps")


@dataclass(frozen=True)
class CommandUse:
    """A command (as ACL rules name it), the kinds of keys it is sent to (none: a server command),
    who sends it, and what for."""

    command: str
    keys: tuple[str, ...]
    sender: str
    why: str


COMMANDS: tuple[CommandUse, ...] = (
    CommandUse("ping", (), WORKER, "the probe of a Redis that failed"),
    CommandUse("zadd", ALL_SETS, WORKER, "write-through, write-back (ZADD LT); the boot's check of ZADD LT (XX)"),
    CommandUse("zrevrangebyscore", ALL_SETS, WORKER, "boot: the newest ids, every stamp"),
    CommandUse("zrevrange", SETS, WORKER, "boot: the stored ids beyond memory, by rank"),
    CommandUse("zcard", SETS, WORKER, "boot: which ranks are within the horizon; the loss check"),
    CommandUse("zcount", SETS, WORKER, "boot: which ranks are within the horizon; the fleet snapshot's check"),
    CommandUse("zrangebyscore", ("fleet-revoked",), WORKER, "boot: the fleet set oldest first, to build its snapshot; "
                                                             "the ids newer than the snapshot"),
    CommandUse("getrange", ("fleet-snapshot",), WORKER, "boot: the fleet snapshot's header and body"),
    CommandUse("get", SNAPSHOT, WORKER, "boot: the fleet snapshot (and inside its scripts)"),
    CommandUse("set", SNAPSHOT, WORKER, "boot: the snapshot's build lock (SET NX PX), inside its write script"),
    CommandUse("eval", SNAPSHOT, WORKER, "boot: the snapshot written only if no other build replaced it; the "
                                         "lock released only by its holder"),
    CommandUse("zmscore", SETS, WORKER, "a hit of the index confirmed; the loss check"),
    CommandUse("get", ("clock",), WORKER, "the stored clock (boot, the loss check)"),
    CommandUse("eval", ("clock",), WORKER, "the clock's forward-only script"),
    CommandUse("set", ("clock",), WORKER, "inside the clock's script"),
    CommandUse("hset", ("info",), WORKER, "last seen, scope and version, with each clock save"),
    CommandUse("time", (), WORKER, "the server's clock: revocation times"),
    CommandUse("info", (), WORKER, "INFO memory: the eviction policy; INFO cluster at boot: a plain URL naming "
                                   "a Redis Cluster node is refused"),
    CommandUse("ping", (), ADMIN, "celery statedb check"),
    CommandUse("scan", (), ADMIN, "every key of the prefix (MATCH <prefix>*)"),
    CommandUse("time", (), ADMIN, "the server's clock: purge cutoffs, prune, producers' revocation times"),
    CommandUse("info", (), ADMIN, "INFO cluster before a SCAN: a plain URL naming a Redis Cluster node is refused "
                                  "(refused by the ACL: not checked)"),
    CommandUse("zadd", ALL_SETS, ADMIN, "producers' revokes (fleet sets, or aimed at workers); migrations"),
    CommandUse("zcard", ALL_SETS, ADMIN, "inspect, workers, check"),
    CommandUse("zrange", ALL_SETS, ADMIN, "inspect, workers: the oldest and newest revocation"),
    CommandUse("zrevrangebyscore", ALL_SETS, ADMIN, "ls: ids or stamps, newest first"),
    CommandUse("zscore", SETS, ADMIN, "where"),
    CommandUse("zmscore", ("revoked",), ADMIN, "a migration's dry run: which ids are new"),
    CommandUse("zcount", ALL_SETS, ADMIN, "purge --dry-run"),
    CommandUse("zremrangebyscore", ALL_SETS, ADMIN, "purge"),
    CommandUse("zrem", ALL_SETS, ADMIN, "restore"),
    CommandUse("memory|usage", SETS, ADMIN, "inspect, workers: memory per set (refused: shown as unknown)"),
    CommandUse("get", ("clock", "legacy-blob"), ADMIN, "inspect, workers, check; migrate --legacy-blob"),
    CommandUse("hgetall", ("info",), ADMIN, "inspect, workers, prune: last seen, scope, version"),
    CommandUse("eval", ("clock",), ADMIN, "migrations: the clock's forward-only script"),
    CommandUse("set", ("clock",), ADMIN, "inside the clock's script"),
    CommandUse("set", ("fleet-snapshot",), ADMIN, "restore, purge: the fleet snapshot marked stale around a "
                                                  "removal from the fleet set"),
    CommandUse("type", ("legacy-blob",), ADMIN, "migrate --legacy-blob: what the 0.2 key holds"),
    CommandUse("unlink", ("revoked", "clock", "info", "stamps"), ADMIN, "forget, prune: a dead worker's keys"),
)
# Sent by redis-py itself when it connects, depending on its version, the URL and the server:
# HELLO (RESP3, or a user name), SELECT (a database other than 0), CLIENT SETINFO (Redis >= 7.2);
# a cluster client also reads the slot table (CLUSTER SLOTS) and the command table (COMMAND).
CONNECTION_COMMANDS = ("hello", "select", "client|setinfo", "cluster|slots", "command")


def commands_of(sender: str) -> dict[str, set[str]]:
    """Each command ``sender`` sends, and the kinds of keys it sends it to."""
    found: dict[str, set[str]] = {}
    for use in COMMANDS:
        if use.sender == sender:
            found.setdefault(use.command, set()).update(use.keys)
    return found
