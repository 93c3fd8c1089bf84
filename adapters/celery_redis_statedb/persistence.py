"""A worker's revoked set and clock, kept in Redis as they change.

Boot merges what Redis holds into ``state.revoked``; from then on every id that
enters the set is written before the caller (a revoke command) answers. When a
write fails, the id stays honoured in memory and waits in a pending buffer;
while Redis is failing nothing else blocks on it: Celery's timer probes it with
a short timeout, backing off exponentially, and once it answers the whole
in-memory set is written again, so a Redis that came back empty is repaired.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery.utils.collections import LimitedSet
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from celery_redis_statedb.repository import ConnectionCounter, SyncStateRepository
from celery_redis_statedb.revoked_set import attach, detach, merge_unrecorded, merge_unrecorded_pages
from celery_redis_statedb.stamps import stamps_for  # stamped-header revokes
from statedb.client import boot_backoff
from statedb.config import StateDBConfig, UnavailablePolicy
from statedb.errors import InvalidInputError, RedisUnavailableError, StateDataError, StateDBError
from statedb.names import encode_task_id, is_storable_task_id

logger = logging.getLogger("celery_redis_statedb")

WARN_EVERY = 10.0
# Boot stamps ids by windows of this share of the revoke expiry (see commands.WindowCursor).
STAMP_WINDOW = 0.01
PROBE_TIMEOUT = 1.0


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Boot builds up to a million objects that all stay alive: meanwhile every pass of
    the cyclic garbage collector walks them again for nothing (40% of the merge at 50 000
    ids). Paused for the merge only, then restored as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
        self._probe: SyncStateRepository | None = None
        self._backoff = EqualJitterBackoff(cap=config.retry_backoff_cap, base=config.retry_backoff_base)
        self._seen_connections = 0
        self._needs_resync = False
        self._failures = 0
        self._failing_since: float | None = None
        self._next_attempt = 0.0
        self._last_warning = 0.0
        self._last_clock_save = 0.0
        self._timer_entry: Any = None
        self._closed = False

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    # -- boot --------------------------------------------------------------

    def boot(self) -> None:
        """Apply limits, merge stored state (retrying until boot_timeout), start write-through.

        Raises RedisUnavailableError once the boot timeout has passed, unless the
        policy is ``degrade``; any other StateDBError (refused credentials, a key
        of the wrong type, a server too old) at once.
        """
        if self.config.revoke_expires is not None:
            self.revoked.expires = self.config.revoke_expires
        if self.config.revokes_max is not None:
            self.revoked.maxlen = self.config.revokes_max
        deadline = time.monotonic() + self.config.boot_timeout

        def retry_until_deadline(exc: Exception) -> None:
            if time.monotonic() >= deadline:
                raise exc
            logger.warning("redis-statedb: %s; retrying (boot timeout %ss)", exc, self.config.boot_timeout)

        retry = Retry(boot_backoff(self.config), -1, supported_errors=(RedisUnavailableError,))
        try:
            with self._lock:
                retry.call_with_retry(self._load, retry_until_deadline)
        except RedisUnavailableError as exc:
            if self.config.on_unavailable is not UnavailablePolicy.DEGRADE:
                raise
            logger.warning(
                "redis-statedb: starting DEGRADED without stored state (%s); revokes are kept in memory "
                "and the stored state is merged when Redis is back", exc,
            )
            self._mark_failing(exc, warn=False)
        attach(self.revoked, self)
        stamps_for(self).attach()  # stamped-header revokes

    def reload(self) -> None:
        """Merge what Redis holds into memory again (after a migration wrote to it)."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        self.repository.ping()
        self.repository.check_server()
        merged = self._merge_revoked()
        stamps_for(self).load()  # stamped-header revokes
        clock = self._merge_clock()
        self.loaded = True
        self._seen_connections = self.connections.count
        self._last_clock_save = time.monotonic()
        logger.info(
            "redis-statedb: restored %d revoked ids from %s (key %s), clock %s",
            merged, self.config.safe_url, self.repository.keys.revoked, clock,
        )

    def _merge_revoked(self) -> int:
        """Newest first, within the in-memory limits, stamped on the local monotonic clock.

        A worker-scope worker also reads the fleet set, where producers write revokes
        for workers that are offline or not started yet; when both hold more than fits,
        the set's own limit keeps the newest.
        """
        expires, maxlen = self.revoked.expires, self.revoked.maxlen
        wall, mono = time.time(), time.monotonic()
        keys = self.repository.keys
        merged = 0
        with _gc_paused():
            for shared in (False, True) if keys.revoked != keys.shared else (False,):
                # Read newest first (the limit keeps the newest), insert oldest first: O(1) heap pushes.
                if expires and math.isfinite(expires):  # CELERY_WORKER_REVOKE_EXPIRES=inf: never expire
                    # Ids only, by windows of 1% of the expiry: each id is taken to be at most
                    # that much younger than it is (kept that much longer, never less).
                    pages = list(self.repository.iter_revoked_windows(
                        now=wall, newer_than=wall - expires, width=expires * STAMP_WINDOW,
                        limit=maxlen or None, shared=shared))
                    pages.reverse()
                    merged += merge_unrecorded_pages(self.revoked, pages, wall=wall, mono=mono)
                else:
                    rows = list(self.repository.iter_revoked(newer_than=None, limit=maxlen or None,
                                                             shared=shared))
                    rows.reverse()
                    merged += merge_unrecorded(self.revoked, rows, wall=wall, mono=mono)
        return merged

    def _merge_clock(self) -> int | None:
        if not self.clock:
            return None
        value = int(self.clock.adjust(self.repository.read_clock()))
        return self.repository.advance_clock(value).stored

    # -- write-through -----------------------------------------------------

    def record(self, task_ids: Sequence[object]) -> None:
        """Called by ``state.revoked`` for ids that just entered it. Never raises.

        While Redis is failing this does no I/O at all: the ids wait for the timer.
        """
        now = time.time()
        with self._lock:
            if not self.pending and not self.failing:
                # The usual case: one ZADD, each id checked as it is encoded.
                try:
                    self.repository.add_revoked(task_ids, revoked_at=now)
                    return
                except InvalidInputError:
                    pass  # an id that cannot be stored: sorted out, and logged, below
                except StateDBError as exc:
                    # Every id was checked before any I/O: they all wait for the timer.
                    self.pending.update(dict.fromkeys(task_ids, now))  # type: ignore[arg-type]
                    self._mark_failing(exc)
                    return
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
            if self.failing:
                self._warn_pending(None)
                return
            try:
                self._flush()
            except StateDBError as exc:
                self._mark_failing(exc)

    def _flush(self) -> None:
        if self.pending:
            self.repository.add_revoked_at(list(self.pending.items()))
            self.pending.clear()

    def _resync(self) -> None:
        """Write the whole in-memory set again (idempotent: the earliest time wins)."""
        seen = self.connections.count
        wall, mono = time.time(), time.monotonic()
        earliest: dict[str, float] = {}
        # entry[0] is the monotonic stamp in every Celery release (the entry's shape differs).
        for item, entry in list(self.revoked._data.items()):
            if isinstance(item, str) and is_storable_task_id(item):
                earliest[item] = wall - max(0.0, mono - entry[0])
        for task_id, when in self.pending.items():
            earliest[task_id] = min(when, earliest.get(task_id, when))
        self.repository.add_revoked_at(list(earliest.items()))
        self.pending.clear()
        self._needs_resync = False
        self._seen_connections = seen
        logger.warning("redis-statedb: wrote %d revoked ids held in memory back to %s",
                       len(earliest), self.config.safe_url)

    # -- failure bookkeeping -----------------------------------------------

    def _mark_failing(self, exc: StateDBError, *, warn: bool = True) -> None:
        """Back off (measured from now, the end of the failed attempt) and warn, rate-limited."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since, self._failures, self._last_warning = now, 0, 0.0
        self._failures += 1
        self._next_attempt = now + self._backoff.compute(self._failures)
        if warn:
            self._warn_pending(exc)

    def _clear_failing(self) -> None:
        if self._failing_since is not None:
            logger.warning("redis-statedb: Redis at %s is reachable again after %.1fs",
                           self.config.safe_url, time.monotonic() - self._failing_since)
        self._failing_since, self._failures = None, 0

    def _warn_pending(self, exc: StateDBError | None) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            return
        self._last_warning = now
        logger.warning(
            "redis-statedb: %d revoked ids are honoured in memory but NOT yet stored in Redis at %s%s; "
            "retrying with backoff", len(self.pending), self.config.safe_url, f" ({exc})" if exc else "",
        )

    def _probe_server(self) -> None:
        """A PING with a short timeout and no retry: cheap to fail while Redis is away."""
        if self._probe is None:
            quick = dataclasses.replace(
                self.config, socket_timeout=min(PROBE_TIMEOUT, self.config.socket_timeout),
                socket_connect_timeout=min(PROBE_TIMEOUT, self.config.socket_connect_timeout),
            )
            self._probe = SyncStateRepository.open(quick, self.hostname, retries=0)
        self._probe.ping()

    # -- periodic work on Celery's timer -----------------------------------

    def tick(self) -> None:
        """Probe and recover (late merge, resync), save the clock, flush pending. Never raises."""
        with self._lock:
            try:
                self._tick()
            except StateDBError as exc:
                self._mark_failing(exc)
            except Exception as exc:  # the timer must keep running; the state stays pending
                logger.exception("redis-statedb: unexpected error on the timer, will retry")
                self._mark_failing(StateDBError(f"unexpected {type(exc).__name__}: {exc}"), warn=False)

    def _tick(self) -> None:
        recovering = self.failing
        if recovering:
            if time.monotonic() < self._next_attempt:
                return
            self._probe_server()
        if not self.loaded:
            self._load()
        if time.monotonic() - self._last_clock_save >= self.config.clock_interval:
            try:
                self._save_clock()
            except (StateDataError, InvalidInputError) as exc:
                # A bad clock key must not hold back the revoked ids: report it and go on.
                self._last_clock_save = time.monotonic()
                logger.error("redis-statedb: the clock cannot be saved (%s); revoked ids are still stored", exc)
        if recovering or self.connections.count != self._seen_connections:
            self._needs_resync = True
        stamps_for(self).tick(resync=self._needs_resync)  # stamped-header revokes
        if self._needs_resync:
            self._resync()
        else:
            self._flush()
        self._clear_failing()

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
        """At shutdown: the clock, then pending ids (or everything, after data loss). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._timer_entry is not None:
                self._timer_entry.cancel()
            try:
                if self.failing:
                    self._probe_server()
                if self.clock and self.loaded:
                    self._save_clock(int(self.clock.forward()))
                stamps_for(self).save()  # stamped-header revokes
                if self._needs_resync or self.connections.count != self._seen_connections:
                    self._resync()
                else:
                    self._flush()
            except StateDBError as exc:
                logger.error("redis-statedb: at shutdown %d revoked ids could not be written to %s: %s",
                             len(self.pending), self.config.safe_url, exc)
            finally:
                detach(self.revoked)
                stamps_for(self).detach()  # stamped-header revokes
                self.repository.close()
                if self._probe is not None:
                    self._probe.close()

    stop = save
