"""Stamped-header revokes (``revoke_by_stamped_headers``) in the command layer.

Stored like ids: a sorted set per worker (``<prefix><worker>:stamps``) and one for the
fleet (``<prefix>shared:fleet-stamps``); member = the JSON text ``["header", value]``
(compact, UTF-8, never pickle), score = wall-clock time of the first revocation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from statedb.commands import BadMembers, Operation, PipelineLike, count_revoked
from statedb.cursors import KeysetCursor
from statedb.errors import CorruptValueError, InvalidInputError
from statedb.keys import RedisKey, key_text
from statedb.names import MAX_TASK_ID_BYTES, check_timestamp
from statedb.timeframes import purge_range

Stamp = tuple[str, Any]  # (header, one value)


def expand_headers(headers: Mapping[str, Any] | Sequence[str]) -> list[Stamp]:
    """(header, value) pairs of a revoke_by_stamped_headers argument, as Celery reads it.

    A mapping's value may be one value or a list of them; a list of ``"header=value"``
    strings is split the way Celery's control command splits it.
    """
    if isinstance(headers, Mapping):
        items: Iterable[tuple[Any, Any]] = headers.items()
    elif isinstance(headers, (list, tuple)):
        items = []
        for text in headers:
            if not isinstance(text, str) or "=" not in text:
                raise InvalidInputError(f"stamped header {text!r:.80} is not of the form header=value")
            name, _, value = text.partition("=")
            items.append((name, value))
    else:
        raise InvalidInputError(f"stamped headers must be a mapping or a list, got {type(headers).__name__}")
    pairs: list[Stamp] = []
    for header, values in items:
        for value in values if isinstance(values, (list, tuple)) else [values]:
            pairs.append((header, value))
    return pairs


def encode_stamp(header: object, value: object) -> bytes:
    """The stored member for one (header, value); raises InvalidInputError naming what is wrong."""
    if not isinstance(header, str) or not header:
        raise InvalidInputError(f"stamped header name must be a non-empty string, got {header!r:.80}")
    try:
        text = json.dumps([header, value], separators=(",", ":"), ensure_ascii=False, sort_keys=True,
                          allow_nan=False)
        raw = text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidInputError(f"stamped header {header!r:.60}={value!r:.60} cannot be stored: {exc}") from None
    if len(raw) > MAX_TASK_ID_BYTES:
        raise InvalidInputError(f"stamped header {header!r:.60} is {len(raw)} bytes long "
                                f"(limit {MAX_TASK_ID_BYTES})")
    return raw


def decode_stamp(key: str, member: bytes | str) -> Stamp:
    """(header, value) of a stored member (text from a client made with ``decode_responses=True``);
    anything else is a CorruptValueError naming the key."""
    try:
        header, value = json.loads(member if isinstance(member, str) else member.decode("utf-8"))
        if not isinstance(header, str) or not header:
            raise ValueError("no header name")
    except (UnicodeDecodeError, ValueError, TypeError):
        raise CorruptValueError(f"Redis key {key!r} holds a member that is not a stamped header: {member[:60]!r}",
                                key=key) from None
    return header, value


def add_stamps(key: str, stamps: Iterable[Stamp], revoked_at: float, chunk_size: int) -> Operation[int]:
    """ZADD LT of each (header, value): new ones added, the earliest time kept for the others."""
    members = list(dict.fromkeys(encode_stamp(header, value) for header, value in stamps))
    score = check_timestamp(revoked_at, "revocation time")
    chunks = [members[i : i + chunk_size] for i in range(0, len(members), chunk_size)]

    def stage(pipe: PipelineLike) -> None:
        for chunk in chunks:
            pipe.zadd(key, dict.fromkeys(chunk, score), lt=True)

    return Operation((key,) * len(chunks), stage, lambda replies: sum(int(r) for r in replies))


def remove_stamps(key: RedisKey, stamps: Iterable[Stamp]) -> Operation[int]:
    members = list(dict.fromkeys(encode_stamp(header, value) for header, value in stamps))

    def stage(pipe: PipelineLike) -> None:
        if members:
            pipe.zrem(key, *members)

    return Operation((key_text(key),) if members else (), stage, lambda replies: sum(int(r) for r in replies))


# -- reading: newest first, with scores, above a floor ---------------------------

StampRow = tuple[str, Any, float]  # (header, value, revocation time)


def decode_stamps_page(key: str, rows: Sequence[tuple[bytes, float]], bad: BadMembers | None = None
                       ) -> list[StampRow]:
    """(header, value, revocation time) rows; a corrupt member or a non-finite score names the key
    (skipped into ``bad`` if given, else raised)."""
    page: list[StampRow] = []
    for member, score in rows:
        try:
            header, value = decode_stamp(key, member)
            if not math.isfinite(score):
                raise CorruptValueError(f"Redis key {key!r} holds stamped header {header!r:.60} with a non-finite "
                                        f"score {score!r}", key=key)
        except CorruptValueError as error:
            if bad is None:
                raise
            bad.skip(error)
            continue
        page.append((header, value, float(score)))
    return page


def stamps_page(key: str, *, newer_than: float | None, offset: int, count: int,
                high: float | str = "+inf", bad: BadMembers | None = None) -> Operation[list[StampRow]]:
    """One page of stamps, newest first, revoked at or before ``high`` (skipping ``offset`` of
    those) and at or after ``newer_than`` (all if None)."""
    low: float | str = "-inf" if newer_than is None else newer_than

    def stage(pipe: PipelineLike) -> None:
        pipe.zrevrangebyscore(key, high, low, start=offset, num=count, withscores=True)

    return Operation((key,), stage, lambda replies: decode_stamps_page(key, replies[0], bad))


class StampPageCursor(KeysetCursor[StampRow]):
    """(header, value, revocation time) rows of a stamps set, newest first (keyset paging, as
    :class:`statedb.cursors.PageCursor`). ZREVRANGEBYSCORE ... WITHSCORES only."""

    def page(self, *, offset: int, count: int, high: float | str) -> Operation[list[StampRow]]:
        return stamps_page(self.key, newer_than=self.newer_than, offset=offset, count=count, high=high,
                           bad=self.bad)

    @staticmethod
    def score(row: Any) -> float:
        return float(row[2])


count_stamps = count_revoked  # the same ZCARD: any sorted set of the library


def purge_stamps_before(key: RedisKey, cutoff_time: float, *, dry_run: bool = False) -> Operation[int]:
    """ZREMRANGEBYSCORE (ZCOUNT on a dry run) of the stamps revoked strictly before ``cutoff_time``."""
    if isinstance(cutoff_time, bool) or not isinstance(cutoff_time, (int, float)) or not math.isfinite(cutoff_time):
        raise InvalidInputError(f"purge cutoff must be a finite number of seconds, got {cutoff_time!r}")
    low, high = purge_range(float(cutoff_time))

    def stage(pipe: Any) -> None:
        if dry_run:
            pipe.zcount(key, low, high)
        else:
            pipe.zremrangebyscore(key, low, high)

    return Operation((key_text(key),), stage, lambda replies: int(replies[0]))
