"""Sans-I/O reads that tell whether the stored state is still what a worker wrote.

One round trip on the worker's timer (:func:`check_health`): the clock key as it is
stored (before any advance staged behind it), the size of each revoked set and
whether it still holds a few ids the worker knows it wrote or read there, the
server's ``TIME`` (the reference clock for revocation times) and, when asked, the
eviction policy from ``INFO memory`` (readable without ``CONFIG`` rights). Reads a
least-privilege user may lack (``INFO``, ``TIME``) never fail the whole check: they
come back as None with the refusal in ``refused``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from statedb import commands
from statedb.commands import LenientOperation
from statedb.errors import StateDataError, StateDBError

# Policies that may evict a key without a TTL: every key of this library (none has a TTL).
# volatile-* only evict keys with a TTL, noeviction refuses writes (an outage, not a loss).
EVICTING_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})


def evicts_our_keys(policy: str | None) -> bool:
    return policy is not None and policy.strip().lower() in EVICTING_POLICIES


class SetProbe(NamedTuple):
    """A revoked set and ids that should be in it."""

    key: str
    members: tuple[str, ...]


class SetState(NamedTuple):
    key: str
    size: int
    missing: tuple[str, ...]  # the probed ids the set does not hold


@dataclass(frozen=True)
class Health:
    """What one check saw. ``clock`` is the stored value before any advance (None: missing,
    not asked or unreadable, see ``clock_missing``)."""

    clock: int | None = None
    clock_missing: bool = False
    sets: tuple[SetState, ...] = ()
    server_time: float | None = None
    policy: str | None = None
    advanced: commands.ClockAdvance | StateDBError | None = None
    refused: tuple[str, ...] = ()


def parse_server_time(reply: object) -> float:
    """TIME's reply (seconds, microseconds), as redis-py parses it or raw."""
    if isinstance(reply, (list, tuple)) and len(reply) == 2:
        return int(reply[0]) + int(reply[1]) / 1_000_000
    raise ValueError(f"unexpected TIME reply {reply!r:.60}")


def parse_policy(reply: object) -> str | None:
    """``maxmemory_policy`` from INFO memory (a dict as redis-py parses it, or the raw text)."""
    if isinstance(reply, dict):
        value = reply.get("maxmemory_policy", reply.get(b"maxmemory_policy"))
        if value is None:
            return None
        return (value.decode() if isinstance(value, bytes) else str(value)).strip()
    if isinstance(reply, (bytes, str)):
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "maxmemory_policy":
                return value.strip()
    return None


def _stored_clock(key: str, raw: object) -> tuple[int | None, bool]:
    """(clock, missing) from a GET reply; a corrupt clock is (None, False): the advance reports it."""
    if raw is None:
        return None, True
    try:
        return commands.parse_clock(key, raw), False
    except StateDataError:
        return None, False


def _optional(what: str, reply: object, parse: Any, refused: list[str]) -> Any:
    if isinstance(reply, Exception):
        refused.append(f"{what}: {reply}")
        return None
    return parse(reply)


def check_health(
    clock_key: str | None,
    probes: Sequence[SetProbe],
    *,
    server_time: bool = True,
    policy: bool = False,
    advance_to: int | None = None,
) -> commands.Operation[Health]:
    """GET clock, ZCARD + ZMSCORE of each probe, TIME, INFO memory, then (given ``advance_to``)
    the clock's advance script, in one pipeline: the GET reads the clock before the advance."""
    advance = None if advance_to is None or clock_key is None else commands.advance_clock(clock_key, advance_to)
    keys: list[str | None] = [] if clock_key is None else [clock_key]
    for probe in probes:
        keys.extend((probe.key, probe.key) if probe.members else (probe.key,))
    first_optional = len(keys)
    keys.extend([None] * (server_time + policy))
    if advance is not None:
        keys.extend(advance.keys)

    def stage(pipe: commands.PipelineLike) -> None:
        raw = cast(Any, pipe)  # TIME and INFO are not on PipelineLike: the command layer's own reads
        if clock_key is not None:
            pipe.get(clock_key)
        for probe in probes:
            pipe.zcard(probe.key)
            if probe.members:
                pipe.zmscore(probe.key, list(probe.members))
        if server_time:
            raw.time()
        if policy:
            raw.info("memory")
        if advance is not None:
            advance.stage(pipe)

    def parse(replies: Sequence[Any]) -> Health:
        it = iter(replies)
        clock, missing_clock = (None, False) if clock_key is None else _stored_clock(clock_key, next(it))
        sets: list[SetState] = []
        for probe in probes:
            size = int(next(it))
            scores = next(it) if probe.members else ()
            missing = tuple(m for m, score in zip(probe.members, scores, strict=True) if score is None)
            sets.append(SetState(probe.key, size, missing))
        refused: list[str] = []
        when = _optional("TIME", next(it), parse_server_time, refused) if server_time else None
        found = _optional("INFO memory", next(it), parse_policy, refused) if policy else None
        advanced: commands.ClockAdvance | StateDBError | None = None
        if advance is not None:
            try:
                advanced = advance.result(list(it))
            except StateDBError as exc:
                advanced = exc
        return Health(clock, missing_clock, tuple(sets), when, found, advanced, tuple(refused))

    optional = frozenset(range(first_optional, len(keys)))
    return LenientOperation(tuple(keys), stage, parse, optional=optional)
