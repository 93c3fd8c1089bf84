"""Commands for the stored ids beyond a worker's memory: read them all, confirm a few.

Boot reads, after the newest ids (which go into Celery's own set), the rest of each
revoked set within the horizon, ids only, by rank: ``ZREVRANGE`` by rank costs
O(log N + M) on the server, where a ``LIMIT`` offset walks every id before it.
A hit of the in-memory index is confirmed with ``ZMSCORE`` on the sets it may be in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from statedb.commands import BadMembers, Operation, PipelineLike, encode_task_ids
from statedb.errors import CorruptValueError

MAX_PAGES_PER_TRIP = 4


def count_within(key: str, horizon_start: float | None) -> Operation[tuple[int, int]]:
    """(ids in the set, ids revoked before ``horizon_start``): which ranks are within the horizon."""
    before = "(-inf" if horizon_start is None else f"({horizon_start!r}"

    def stage(pipe: PipelineLike) -> None:
        pipe.zcard(key)
        pipe.zcount(key, "-inf", before)

    return Operation((key, key), stage, lambda replies: (int(replies[0]), int(replies[1])))


class RankCursor:
    """Ids (bytes, as stored) of ranks ``start`` to ``stop - 1``, newest first, ``chunk_size`` a command.

    Ranks are read as they are when each page is read: an id added meanwhile at the
    top shifts the rest down by one (an id read twice, harmless in a set); one
    removed above the cursor shifts them up (one id not read until the next boot).
    """

    def __init__(self, key: str, *, start: int, stop: int, chunk_size: int,
                 per_trip: int = MAX_PAGES_PER_TRIP, bad: BadMembers | None = None) -> None:
        self.key, self.next, self.stop, self.chunk_size, self.per_trip = key, start, stop, chunk_size, per_trip
        self.bad = bad  # where members that are not UTF-8 are skipped to (None: kept, inert in the index)
        self._plan: list[tuple[int, int]] = []

    def next_operation(self) -> Operation[list[list[bytes]]] | None:
        if self.next >= self.stop:
            return None
        pages: list[tuple[int, int]] = []
        at = self.next
        while at < self.stop and len(pages) < self.per_trip:
            end = min(self.stop, at + self.chunk_size)
            pages.append((at, end - 1))
            at = end
        self.next = at
        self._plan = pages
        key = self.key

        def stage(pipe: PipelineLike) -> None:
            for first, last in pages:
                pipe.zrevrange(key, first, last)

        return Operation((key,) * len(pages), stage, lambda replies: [list(reply) for reply in replies])

    def feed(self, pages: list[list[bytes]]) -> list[list[bytes]]:
        if any(len(page) < last - first + 1 for (first, last), page in zip(self._plan, pages, strict=True)):
            self.next = self.stop  # the set shrank meanwhile: nothing further down
        if self.bad is not None:
            pages = [page if b"".join(page).isascii() else self._text_only(page) for page in pages]
        return pages

    def _text_only(self, page: list[bytes]) -> list[bytes]:
        """The members of ``page`` that are UTF-8 (no task id can be any other); the rest are skipped."""
        kept = []
        for member in page:
            try:
                member.decode("utf-8")
            except UnicodeDecodeError:
                assert self.bad is not None
                self.bad.skip(CorruptValueError(
                    f"Redis key {self.key!r} holds a member that is not UTF-8 text: {member[:60]!r}", key=self.key))
                continue
            kept.append(member)
        return kept


def revoked_scores(keys: Sequence[str], task_ids: Sequence[object]) -> Operation[list[float | None]]:
    """For each id, the earliest score it has in any of ``keys`` (None if in none)."""
    members = encode_task_ids(task_ids)
    if len(members) != len(task_ids):
        raise ValueError("revoked_scores takes distinct ids")

    def stage(pipe: PipelineLike) -> None:
        for key in keys:
            pipe.zmscore(key, members)

    def parse(replies: Sequence[Any]) -> list[float | None]:
        best: list[float | None] = [None] * len(members)
        for key, reply in zip(keys, replies, strict=True):
            for i, score in enumerate(reply or ()):
                if score is None:
                    continue
                value = float(score)
                if math.isnan(value):
                    raise CorruptValueError(f"Redis key {key!r} holds a NaN score", key=key)
                current = best[i]
                best[i] = value if current is None else min(current, value)
        return best

    return Operation(tuple(keys), stage, parse)
