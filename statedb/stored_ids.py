"""Commands for the stored ids beyond a worker's memory: count them, confirm a few.

Boot reads, after the newest ids (which go into Celery's own set), the rest of each
revoked set within the horizon by rank (:class:`statedb.cursors.RankCursor`); these
say which ranks are within the horizon. A hit of the in-memory index is confirmed
with ``ZMSCORE`` on the sets it may be in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from statedb.commands import Operation, PipelineLike, encode_task_ids
from statedb.errors import CorruptValueError


def count_within(key: str, horizon_start: float | None) -> Operation[tuple[int, int]]:
    """(ids in the set, ids revoked before ``horizon_start``): which ranks are within the horizon."""
    before = "(-inf" if horizon_start is None else f"({horizon_start!r}"

    def stage(pipe: PipelineLike) -> None:
        pipe.zcard(key)
        pipe.zcount(key, "-inf", before)

    return Operation((key, key), stage, lambda replies: (int(replies[0]), int(replies[1])))


def count_from(key: str, low: float | str) -> Operation[int]:
    """Ids scored ``low`` or more (``"(x"``: more than x): the first ranks of the set, newest first."""
    bound = low if isinstance(low, str) else repr(low)
    return Operation((key,), lambda pipe: pipe.zcount(key, bound, "+inf"), lambda replies: int(replies[0]))


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
