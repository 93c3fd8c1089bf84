"""A worker's revoked set and clock, kept in Redis as they change.

Boot merges what Redis holds into ``state.revoked``; from then on every id that
enters the set is written before the caller (a revoke command) answers. When
Redis cannot take a write, the id stays honoured in memory and waits in a
pending buffer that Celery's timer retries; after any reconnect the whole
in-memory set is written again, so a Redis that came back empty is repaired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery.utils.collections import LimitedSet
from redis.retry import Retry

from celery_redis_statedb.repository import ConnectionCounter, SyncStateRepository
from celery_redis_statedb.revoked_set import add_unrecorded, attach
from statedb.client import boot_backoff, retries_within
from statedb.config import StateDBConfig, UnavailablePolicy
from statedb.errors import InvalidInputError, RedisUnavailableError, StateDBError
from statedb.names import encode_task_id

logger = logging.getLogger("celery_redis_statedb")

WARN_EVERY = 10.0


class WorkerStatePersistence:
    """Keeps one worker's ``state.revoked`` and logical clock in Redis."""

    def __init__(
        self,
        config: StateDBConfig,
        hostname: str,
        *,
        revoked: LimitedSet,
        clock: Any | None,
        repository: SyncStateRepository | None = None,
    ) -> None:
        self.config, self.hostname, self.revoked, self.clock = config, hostname, revoked, clock
        self.connections = ConnectionCounter()
        self.repository = repository or SyncStateRepository.open(config, hostname, on_connect=self.connections)
        self.pending: dict[str, float] = {}
        self.loaded = False
        self._lock = threading.RLock()
        self._seen_connections = 0
        self._needs_resync = False
        self._failing_since: float | None = None
        self._last_attempt = 0.0
        self._last_warning = 0.0
        self._last_clock_save = 0.0
        self._timer_entry: Any = None
        self._closed = False

    # -- boot --------------------------------------------------------------

    def boot(self) -> None:
        """Apply limits, merge stored state (retrying within boot_timeout), start write-through.

        Raises RedisUnavailableError after the retry budget unless the policy is
        ``degrade``; any other StateDBError (bad credentials, wrong key type) at once.
        """
        if self.config.revoke_expires is not None:
            self.revoked.expires = self.config.revoke_expires
        if self.config.revokes_max is not None:
            self.revoked.maxlen = self.config.revokes_max
        retries = retries_within(self.config.boot_timeout, self.config.retry_backoff_base,
                                 self.config.retry_backoff_cap)
        retry = Retry(boot_backoff(self.config), retries, supported_errors=(RedisUnavailableError,))
        try:
            with self._lock:
                retry.call_with_retry(self._load, self._on_boot_failure)
        except RedisUnavailableError as exc:
            if self.config.on_unavailable is not UnavailablePolicy.DEGRADE:
                raise
            self._mark_failing(exc)
            logger.warning(
                "redis-statedb: starting DEGRADED without stored state (%s); revokes are kept in memory "
                "and the stored state is merged when Redis is back", exc,
            )
        attach(self.revoked, self)

    def _on_boot_failure(self, exc: Exception) -> None:
        logger.warning("redis-statedb: %s; retrying (boot timeout %ss)", exc, self.config.boot_timeout)

    def _load(self) -> None:
        self.repository.ping()
        merged = self._merge_revoked()
        clock = self._merge_clock()
        self.loaded = True
        self._seen_connections = self.connections.count
        self._last_clock_save = time.monotonic()
        logger.info(
            "redis-statedb: restored %d revoked ids from %s (key %s), clock %s",
            merged, self.config.safe_url, self.repository.keys.revoked, clock,
        )

    def _merge_revoked(self) -> int:
        """Newest first, within the in-memory limits, stamped on the local monotonic clock."""
        expires, maxlen = self.revoked.expires, self.revoked.maxlen
        wall, mono = time.time(), time.monotonic()
        merged = 0
        rows = self.repository.iter_revoked(newer_than=wall - expires if expires else None,
                                            limit=maxlen or None)
        for task_id, revoked_at in rows:
            add_unrecorded(self.revoked, task_id, mono - max(0.0, wall - revoked_at))
            merged += 1
        return merged

    def _merge_clock(self) -> int | None:
        if not self.clock:
            return None
        value = int(self.clock.adjust(self.repository.read_clock()))
        return self.repository.advance_clock(value).stored

    # -- write-through -----------------------------------------------------

    def record(self, task_ids: Sequence[object]) -> None:
        """Called by ``state.revoked`` for ids that just entered it. Never raises."""
        now = time.time()
        storable: list[str] = []
        for task_id in task_ids:
            try:
                encode_task_id(task_id)
            except InvalidInputError as exc:
                logger.error("redis-statedb: revoked id honoured in memory only, not storable: %s", exc)
            else:
                storable.append(task_id)  # type: ignore[arg-type]
        if not storable:
            return
        with self._lock:
            for task_id in storable:
                self.pending.setdefault(task_id, now)
            if self._failing_since is not None and time.monotonic() - self._last_attempt < self.config.flush_interval:
                self._warn_pending(None)
                return
            self._guarded(self._flush)

    def _flush(self) -> None:
        if self.pending:
            self.repository.add_revoked_at(list(self.pending.items()))
            self.pending.clear()

    def _resync(self) -> None:
        """Write the whole in-memory set again (idempotent: the earliest time wins)."""
        wall, mono = time.time(), time.monotonic()
        earliest: dict[str, float] = {}
        for inserted, _, item in list(self.revoked._data.values()):
            if isinstance(item, str) and _storable(item):
                earliest[item] = wall - max(0.0, mono - inserted)
        for task_id, when in self.pending.items():
            earliest[task_id] = min(when, earliest.get(task_id, when))
        self.repository.add_revoked_at(list(earliest.items()))
        self.pending.clear()
        self._needs_resync = False
        logger.warning("redis-statedb: wrote %d revoked ids held in memory back to %s",
                       len(earliest), self.config.safe_url)

    def _guarded(self, action: Callable[[], None]) -> bool:
        """Run an I/O action, turning a failure into pending state and a warning."""
        self._last_attempt = time.monotonic()
        try:
            action()
        except StateDBError as exc:
            self._mark_failing(exc)
            return False
        if self._failing_since is not None:
            logger.warning("redis-statedb: Redis at %s is reachable again after %.1fs",
                           self.config.safe_url, time.monotonic() - self._failing_since)
            self._failing_since = None
            self._needs_resync = self.loaded
        return True

    def _mark_failing(self, exc: StateDBError) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self._last_warning = 0.0
        self._warn_pending(exc)

    def _warn_pending(self, exc: StateDBError | None) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            return
        self._last_warning = now
        logger.warning(
            "redis-statedb: %d revoked ids are honoured in memory but NOT yet stored in Redis at %s%s; "
            "retrying every %ss", len(self.pending), self.config.safe_url,
            f" ({exc})" if exc else "", self.config.flush_interval,
        )

    # -- periodic work on Celery's timer -----------------------------------

    def tick(self) -> None:
        """Retry pending writes, merge late (degraded boot), save the clock, repair after reconnects."""
        with self._lock:
            if not self.loaded and not self._guarded(self._load):
                return
            clock_due = time.monotonic() - self._last_clock_save >= self.config.clock_interval
            if clock_due and not self._guarded(self._save_clock):
                return
            if self.connections.count != self._seen_connections:
                self._needs_resync = True
            if self._needs_resync:
                seen = self.connections.count
                if self._guarded(self._resync):
                    self._seen_connections = seen
            elif self.pending:
                self._guarded(self._flush)

    def _save_clock(self, value: int | None = None) -> None:
        if not self.clock:
            return
        result = self.repository.advance_clock(int(self.clock.value if value is None else value))
        self._last_clock_save = time.monotonic()
        if result.created:
            # The clock written at boot is gone: Redis lost its data.
            self._needs_resync = True

    def start(self, timer: Any) -> None:
        self._timer_entry = timer.call_repeatedly(self.config.flush_interval, self.tick)

    def save(self) -> None:
        """Final flush and clock save at shutdown; idempotent. Logs what could not be written."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._timer_entry is not None:
                self._timer_entry.cancel()
            try:
                if self._needs_resync:
                    self._resync()
                self._flush()
                if self.clock:
                    self._save_clock(int(self.clock.forward()))
            except StateDBError as exc:
                logger.error("redis-statedb: at shutdown %d revoked ids could not be written to %s: %s",
                             len(self.pending), self.config.safe_url, exc)
            finally:
                self.repository.close()

    stop = save


def _storable(task_id: object) -> bool:
    try:
        encode_task_id(task_id)
    except InvalidInputError:
        return False
    return True
