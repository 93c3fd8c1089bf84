"""Purge arithmetic: reversed or inclusive/exclusive bounds delete nothing or everything."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from statedb import InvalidInputError
from statedb.timeframes import as_seconds, below_expiry, cutoff, format_duration, parse_duration, purge_range


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000),
                                               ("2w", 1209600), ("3600", 3600), (" 1.5h ", 5400), ("0s", 0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "-5m", "h", "1h30m", "ten minutes", "1e3s"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(InvalidInputError, match="not understood"):
        parse_duration(text)


@pytest.mark.parametrize("value", [timedelta(days=-1), -1, float("nan"), float("inf"), True, None])
def test_bad_older_than(value: object) -> None:
    with pytest.raises(InvalidInputError):
        as_seconds(value)  # type: ignore[arg-type]


def test_cutoff_is_in_the_past() -> None:
    assert cutoff(1000.0, timedelta(seconds=100)) == 900.0
    assert cutoff(1000.0, 100) == 900.0
    assert cutoff(1000.0, "100s") == 900.0


def test_purge_range_is_exclusive_of_the_cutoff() -> None:
    low, high = purge_range(900.0)
    assert (low, high) == ("-inf", "(900.0")


def test_purge_range_keeps_full_precision() -> None:
    _, high = purge_range(1795511777.4771234)
    assert float(high[1:]) == 1795511777.4771234


@pytest.mark.parametrize(("seconds", "text"), [(2592000, "30d"), (1209600, "2w"), (43200, "12h"), (5400, "90m"),
                                               (90, "90s"), (1.5, "1.5s"), (86401, "86401s")])
def test_format_duration_reads_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_below_expiry_names_the_expiry_even_an_infinite_one() -> None:
    assert below_expiry(3 * 3600).startswith("is below the workers' in-memory expiry (3h): a live worker")
    assert "(none: they keep ids until their size cap pushes them out)" in below_expiry(math.inf)
