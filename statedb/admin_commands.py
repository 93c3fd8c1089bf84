"""The admin side of the sans-I/O command layer: what the admin APIs, the CLI and migrations send.

Pure functions returning :class:`~statedb.commands.Operation`\\ s, as in
:mod:`statedb.commands`. Keys found by SCAN are the bytes Redis holds (a name that is
not UTF-8 is still reached); errors name them as text (:func:`statedb.keys.key_text`).
Every parse accepts the replies of any client passed in: bytes or text
(``decode_responses``), RESP2 or RESP3 shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from statedb.commands import LenientOperation, Operation, encode_task_ids, parse_clock
from statedb.errors import CorruptValueError
from statedb.integrity import parse_server_time
from statedb.keys import RedisKey, key_text

T = TypeVar("T")
SCAN_COUNT = 1000
INFO_FIELDS = ("last_seen", "scope", "version")


def as_bytes(key: RedisKey) -> bytes:
    """A key as the bytes Redis holds (SCAN through a ``decode_responses`` client gives text)."""
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def as_text(value: object) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _names(keys: Sequence[RedisKey]) -> tuple[str, ...]:
    return tuple(key_text(key) for key in keys)


def scan_page(match: str, cursor: int, count: int = SCAN_COUNT) -> Operation[tuple[int, list[bytes]]]:
    """One SCAN step: (the next cursor, 0 when done; the keys found, as bytes)."""

    def stage(pipe: Any) -> None:
        pipe.scan(cursor, match=match, count=count)

    def parse(replies: Sequence[Any]) -> tuple[int, list[bytes]]:
        following, keys = replies[0]
        return int(following), [as_bytes(key) for key in keys]

    return Operation((None,), stage, parse)


def server_time() -> Operation[float]:
    """The Redis server's clock (TIME): revocation times and last-seen times are on it."""
    def stage(pipe: Any) -> None:
        pipe.time()

    return Operation((None,), stage, lambda replies: parse_server_time(replies[0]))


def ping() -> Operation[bool]:
    return Operation((None,), lambda pipe: pipe.ping(), lambda replies: bool(replies[0]))


# -- describing workers and sets -------------------------------------------------------------


@dataclass(frozen=True)
class SetFacts:
    """A sorted set's size, oldest and newest score, and memory (None: MEMORY USAGE refused)."""

    count: int
    oldest: float | None
    newest: float | None
    memory_bytes: int | None


@dataclass(frozen=True)
class Probe:
    """What to read for one listed worker or set: each key may be absent (None)."""

    revoked: RedisKey | None = None
    clock: RedisKey | None = None
    info: RedisKey | None = None
    stamps: RedisKey | None = None


@dataclass(frozen=True)
class Facts:
    revoked: SetFacts | None  # None: the key does not exist
    clock: int | None
    info: dict[str, str] | None
    stamps: SetFacts | None


def _score(key: RedisKey, rows: Sequence[Any]) -> float | None:
    if not rows:
        return None
    score = float(rows[0][1])
    if not math.isfinite(score):
        raise CorruptValueError(f"Redis key {key_text(key)!r} holds a non-finite score {score!r}", key=key_text(key))
    return score


def parse_info(key: RedisKey, reply: Any) -> dict[str, str] | None:
    """HGETALL of a worker's info hash, as text; None when the key does not exist."""
    if not reply:
        return None
    info = {as_text(name): as_text(value) for name, value in dict(reply).items()}
    last_seen = info.get("last_seen")
    if last_seen is not None:
        try:
            seen = float(last_seen)
        except ValueError:
            seen = math.nan
        if not math.isfinite(seen) or seen < 0:
            raise CorruptValueError(f"Redis key {key_text(key)!r} holds a last_seen that is not a time: "
                                    f"{last_seen!r:.60}", key=key_text(key))
    return info


def describe(probes: Sequence[Probe]) -> Operation[list[Facts]]:
    """For each probe, in one pipeline: ZCARD and the first and last score of its sets, MEMORY USAGE
    of its revoked set (refused by some ACLs and managed servers: then None), its clock, its info hash."""
    keys: list[str | None] = []
    optional: set[int] = set()
    for probe in probes:
        for key in (probe.revoked, probe.stamps):
            if key is not None:
                keys.extend([key_text(key)] * 3)
        if probe.revoked is not None:
            optional.add(len(keys))
            keys.append(key_text(probe.revoked))
        keys.extend(key_text(key) for key in (probe.clock, probe.info) if key is not None)

    def stage(pipe: Any) -> None:
        for probe in probes:
            for key in (probe.revoked, probe.stamps):
                if key is not None:
                    pipe.zcard(key)
                    pipe.zrange(key, 0, 0, withscores=True)
                    pipe.zrange(key, -1, -1, withscores=True)
            if probe.revoked is not None:
                pipe.memory_usage(probe.revoked)
            if probe.clock is not None:
                pipe.get(probe.clock)
            if probe.info is not None:
                pipe.hgetall(probe.info)

    def parse(replies: Sequence[Any]) -> list[Facts]:
        it = iter(replies)

        def set_facts(key: RedisKey | None) -> SetFacts | None:
            if key is None:
                return None
            count, first, last = int(next(it)), next(it), next(it)
            # A sorted set is never empty in Redis: no members, no key (None).
            return SetFacts(count, _score(key, first), _score(key, last), None) if count else None

        facts = []
        for probe in probes:
            revoked, stamps = set_facts(probe.revoked), set_facts(probe.stamps)
            if probe.revoked is not None:
                used = next(it)  # an error reply when refused: unknown
                if revoked is not None and isinstance(used, int) and not isinstance(used, bool):
                    revoked = SetFacts(revoked.count, revoked.oldest, revoked.newest, used)
            raw = next(it) if probe.clock is not None else None
            clock = None if probe.clock is None or raw is None else parse_clock(key_text(probe.clock), raw)
            info = parse_info(probe.info, next(it)) if probe.info is not None else None
            facts.append(Facts(revoked, clock, info, stamps))
        return facts

    return LenientOperation(tuple(keys), stage, parse, optional=frozenset(optional))


# -- per-set counts and changes ------------------------------------------------------------


def _each(keys: Sequence[RedisKey], call: Callable[[Any, RedisKey], Any], parse: Callable[[Any], Any]
          ) -> Operation[list[Any]]:
    def stage(pipe: Any) -> None:
        for key in keys:
            call(pipe, key)

    return Operation(_names(keys), stage, lambda replies: [parse(reply) for reply in replies])


def count_between(keys: Sequence[RedisKey], low: str, high: str) -> Operation[list[int]]:
    """ZCOUNT of each set (a dry run of :func:`remove_between`)."""
    return _each(keys, lambda pipe, key: pipe.zcount(key, low, high), int)


def remove_between(keys: Sequence[RedisKey], low: str, high: str) -> Operation[list[int]]:
    """ZREMRANGEBYSCORE of each set: how many each lost."""
    return _each(keys, lambda pipe, key: pipe.zremrangebyscore(key, low, high), int)


def remove_members(keys: Sequence[RedisKey], task_ids: Sequence[object]) -> Operation[list[int]]:
    """ZREM of the ids (validated) from each set: how many each lost."""
    members = encode_task_ids(task_ids)
    if not members:
        return Operation((), lambda pipe: None, lambda replies: [0] * len(keys))
    return _each(keys, lambda pipe, key: pipe.zrem(key, *members), int)


def scores_of(keys: Sequence[RedisKey], task_id: object) -> Operation[list[float | None]]:
    """ZSCORE of one id (validated) in each set (None: not there)."""
    (member,) = encode_task_ids([task_id])
    return _each(keys, lambda pipe, key: pipe.zscore(key, member),
                 lambda reply: None if reply is None else float(reply))


def unlink(keys: Sequence[RedisKey]) -> Operation[int]:
    """UNLINK each key, one command a key (freed in the background: a large set does not block the
    server; no command spans two keys); how many existed."""
    def stage(pipe: Any) -> None:
        for key in keys:
            pipe.unlink(key)

    return Operation(_names(keys), stage, lambda replies: sum(int(reply) for reply in replies))


def key_type(key: RedisKey) -> Operation[str]:
    """TYPE of a key (``none`` when missing)."""
    def stage(pipe: Any) -> None:
        pipe.type(key)

    return Operation((key_text(key),), stage, lambda replies: as_text(replies[0]))


def read_value(key: RedisKey) -> Operation[bytes | None]:
    """GET of a string key, as bytes (text from a ``decode_responses`` client is encoded back)."""
    return Operation((key_text(key),), lambda pipe: pipe.get(key),
                     lambda replies: None if replies[0] is None else as_bytes(replies[0]))
