"""OutageTracker alone: failing, backoff from the end of the failed attempt, rate-limited warnings."""

from __future__ import annotations

import logging
import time

import pytest

from celery_redis_statedb.outage import WARN_EVERY, OutageTracker
from statedb import RedisUnavailableError


def test_backoff_grows_and_recovery_resets(caplog: pytest.LogCaptureFixture) -> None:
    tracker = OutageTracker("redis://h:6379/0", backoff_base=0.2, backoff_cap=5.0)
    assert not tracker.failing and tracker.due
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        tracker.failed(RedisUnavailableError("down"), pending=3)
        assert tracker.failing and not tracker.due
        first = tracker._next_attempt - time.monotonic()
        for _ in range(6):
            tracker.failed(RedisUnavailableError("down"), pending=3)
        assert tracker._next_attempt - time.monotonic() >= first
        assert tracker._next_attempt - time.monotonic() <= 5.0
        tracker.recovered()
    assert not tracker.failing and tracker.due
    assert caplog.text.count("NOT yet stored in Redis at redis://h:6379/0") == 1  # rate-limited
    assert "3 revoked ids are honoured in memory" in caplog.text
    assert "reachable again after" in caplog.text


def test_warnings_repeat_after_the_interval(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    tracker = OutageTracker("redis://h:6379/0", backoff_base=0.2, backoff_cap=5.0)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        tracker.warn_pending(None, 1)
        clock[0] += WARN_EVERY / 2
        tracker.warn_pending(None, 2)
        clock[0] += WARN_EVERY
        tracker.warn_pending(None, 3)
    assert [r.getMessage().split(" revoked")[0] for r in caplog.records] == ["redis-statedb: 1", "redis-statedb: 3"]


def test_a_failure_without_warning_stays_quiet(caplog: pytest.LogCaptureFixture) -> None:
    tracker = OutageTracker("redis://h:6379/0", backoff_base=0.2, backoff_cap=5.0)
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        tracker.failed(None, pending=0, warn=False)
    assert tracker.failing and not caplog.records
