"""Durations and purge cutoffs: pure arithmetic, kept apart so its bounds are easy to test.

An id is *older than* a duration when it was revoked strictly before ``now - duration``;
one revoked exactly at the cutoff is kept.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from statedb.errors import InvalidInputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` or a plain number of seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise InvalidInputError(f"duration {text!r} is not understood: use e.g. 90s, 15m, 12h, 30d or 2w")
    return float(match["number"]) * _UNITS[match["unit"] or "s"]


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit ``parse_duration`` reads back exactly: ``30d``, ``12h``, ``90s``."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"


def below_expiry(expiry: float) -> str:
    """Why a purge of ids younger than the workers' in-memory expiry is refused unless forced (the
    CLI's ``--force``, the dashboard's ``force``): said the same way by both."""
    shown = "none: they keep ids until their size cap pushes them out" if math.isinf(expiry) else format_duration(
        expiry)
    return (f"is below the workers' in-memory expiry ({shown}): a live worker that missed the purge broadcast "
            f"keeps honouring such ids until they expire from its memory, and may write them back")


def as_seconds(older_than: timedelta | float | int | str) -> float:
    """A validated, finite, non-negative number of seconds."""
    if isinstance(older_than, str):
        return parse_duration(older_than)
    if isinstance(older_than, timedelta):
        seconds = older_than.total_seconds()
    elif isinstance(older_than, (int, float)) and not isinstance(older_than, bool):
        seconds = float(older_than)
    else:
        raise InvalidInputError(f"older_than must be a timedelta or seconds, got {type(older_than).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInputError(f"older_than must be finite and not negative, got {older_than!r}")
    return seconds


def cutoff(now: float, older_than: timedelta | float | int | str) -> float:
    """The revocation time below which ids are older than ``older_than``."""
    return now - as_seconds(older_than)


def purge_range(cutoff_time: float) -> tuple[str, str]:
    """ZREMRANGEBYSCORE/ZCOUNT bounds for "revoked strictly before ``cutoff_time``"."""
    return "-inf", f"({cutoff_time!r}"
