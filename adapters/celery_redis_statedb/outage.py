"""Outage bookkeeping of a worker's statedb: failing since when, when to try again, warnings.

While Redis is failing no revoke touches it: the timer probes it with backoff
(measured from the end of the failed attempt, with jitter) and a loud warning is
logged at most every ``WARN_EVERY`` seconds while revokes wait to be written. With
nothing waiting, the outage itself is said once (and its end).
"""

from __future__ import annotations

import logging
import time

from redis.backoff import EqualJitterBackoff

from statedb.errors import NotDurableError, StateDBError

logger = logging.getLogger("celery_redis_statedb")

WARN_EVERY = 10.0


class Throttle:
    """Says yes at most once every ``every`` seconds (for warnings repeated while a fault lasts)."""

    def __init__(self, every: float = WARN_EVERY) -> None:
        self.every = every
        self._last: float | None = None

    def ready(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        self._last = None


class OutageTracker:
    """Knows whether Redis is failing and when the next attempt is due."""

    def __init__(self, url: str, *, backoff_base: float, backoff_cap: float) -> None:
        self.url = url  # masked
        self._backoff = EqualJitterBackoff(cap=backoff_cap, base=backoff_base)
        self._failures = 0
        self._failing_since: float | None = None
        self._next_attempt = 0.0
        self._warnings = Throttle()
        self._outage_said = False
        # False while every failure of this outage was a write Redis applied but too few replicas
        # acknowledged (NotDurableError): Redis stayed reachable, it cannot have come back empty.
        self.lost_contact = False

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    @property
    def failing_since(self) -> float | None:
        """Since when (wall clock) Redis has been failing; None while it is not."""
        if self._failing_since is None:
            return None
        return time.time() - (time.monotonic() - self._failing_since)

    @property
    def due(self) -> bool:
        """True when Redis may be tried again (always, while it is not failing)."""
        return self._failing_since is None or time.monotonic() >= self._next_attempt

    def failed(self, exc: StateDBError | None, *, pending: int, warn: bool = True, said: bool = False) -> None:
        """Count a failed attempt: back off from now, and warn (rate-limited). ``said``: the caller
        logged this outage already."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since, self._failures, self.lost_contact = now, 0, False
            self._warnings.reset()
            self._outage_said = False
        self._outage_said = self._outage_said or said
        self.lost_contact = self.lost_contact or not isinstance(exc, NotDurableError)
        self._failures += 1
        self._next_attempt = now + self._backoff.compute(self._failures)
        if warn:
            self.warn_pending(exc, pending)

    def recovered(self) -> None:
        if self._failing_since is not None:
            logger.warning("redis-statedb: Redis at %s is reachable again after %.1fs",
                           self.url, time.monotonic() - self._failing_since)
        self._failing_since, self._failures, self.lost_contact = None, 0, False

    def warn_pending(self, exc: StateDBError | None, pending: int) -> None:
        """Revokes wait to be written: say how many (rate-limited). None waiting: say the outage, once."""
        if pending <= 0:
            if not self._outage_said:
                self._outage_said = True
                logger.warning("redis-statedb: Redis at %s is failing%s; no revoke is waiting to be written; "
                               "retrying with backoff", self.url, f" ({exc})" if exc else "")
            return
        self._outage_said = True
        if not self._warnings.ready():
            return
        logger.warning(
            "redis-statedb: %d revoked ids are honoured in memory but NOT yet stored in Redis at %s%s; "
            "retrying with backoff", pending, self.url, f" ({exc})" if exc else "",
        )
