"""A worker's revoked set and clock, kept in Redis as they change.

Boot merges what Redis holds (:mod:`boot_merge`): the newest ids into ``state.revoked``,
every other stored id within the horizon into an index (:mod:`stored_revokes`), so a
stored revoke binds beyond Celery's in-memory window. From then on every id that
enters the set is written before the caller (a revoke command) answers. When a write
fails, the id stays honoured in memory and waits in a pending buffer; while Redis is
failing nothing else blocks on it (:mod:`outage`): Celery's timer probes it with a
short timeout, backing off exponentially, and once it answers the whole in-memory set
is written again (after an outage in which Redis did not answer, or on a new connection:
a restart or a Sentinel failover), so a Redis that came back empty is repaired. A write
that too few replicas acknowledged (``redis_state_min_replicas``) fails the same way.
Every tick also checks, in one round trip (:mod:`watch`), that Redis still holds what
this worker wrote (loss, rollback, eviction), measures the server's clock (revocation
times are stamped on it) and, now and then, the eviction policy.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from celery.utils.collections import LimitedSet

import celery_redis_statedb
from celery_redis_statedb.boot_merge import DEFAULT_SNAPSHOT_POLICY, STAMP_WINDOW, MergeCounts, merge_stored
from celery_redis_statedb.fleet_snapshot import SnapshotPolicy
from celery_redis_statedb.outage import OutageTracker
from celery_redis_statedb.revoked_set import attach, detach
from celery_redis_statedb.stamps import stamps_for
from celery_redis_statedb.stored_revokes import StoredRevokes
from celery_redis_statedb.watch import StateWatch
from statedb._sync.clients import ConnectionCounter, FirstConnectFree, open_sync_client
from statedb._sync.repository import SyncStateRepository
from statedb.client import COMMAND_RETRIES, boot_backoff
from statedb.commands import (
    IMPLAUSIBLE_JUMP,
    MAX_CLOCK,
    BadMembers,
    ClockAdvance,
    WorkerInfo,
    implausible_clock,
)
from statedb.config import StateDBConfig, UnavailablePolicy
from statedb.errors import (
    EvictionPolicyError,
    InvalidInputError,
    RedisUnavailableError,
    StateDataError,
    StateDBError,
    WrongKeyTypeError,
)
from statedb.names import encode_task_id, is_storable_task_id
from statedb.timeframes import format_duration
from statedb.urls import target_kind

logger = logging.getLogger("celery_redis_statedb")

PROBE_TIMEOUT = 1.0
# A boot attempt is not started with less time than this left before the boot timeout.
MIN_ATTEMPT = 0.05
# Above this many stored ids, boot says so once: every worker reads them all.
MANY_STORED_IDS = 1_000_000


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
        # A cluster client connects to each node as it first needs it: only reconnections count there.
        self.connections = ConnectionCounter(per_node=target_kind(config.url) == "cluster")
        self.repository = repository or SyncStateRepository.open(config, hostname, on_connect=self.connections)
        # Write-through (before a revoke is answered) within the write budget, no retry after a timeout:
        # past it the ids wait for the timer, which uses the normal timeouts.
        self.writer = self.repository if repository is not None else SyncStateRepository.open(
            dataclasses.replace(config, socket_timeout=min(config.write_budget, config.socket_timeout),
                                socket_connect_timeout=min(config.write_budget, config.socket_connect_timeout)),
            hostname, on_connect=FirstConnectFree(self.connections), retry_timeouts=False)
        # Bad members and keys of another type are skipped at boot, reported and counted, never fatal.
        self.bad = self.repository.bad = self.repository.bad or BadMembers()
        self._bad_keys_reported: set[str] = set()
        self.unstorable = 0  # ids (and stamps) honoured in memory only: lost at the next restart
        self.last_unstorable: str | None = None
        self._clock_stored: int | None = None  # the clock last read or written (to spot forged jumps)
        self._clock_warned_high = False
        self.pending: dict[str, float] = {}
        # Ids in Celery's set read from the fleet set only (worker scope): a repair writes them back there.
        self.fleet_only: dict[str, None] = {}
        self.watch = StateWatch(self)
        self.loaded = False
        self.merged = MergeCounts(0, 0)
        # How boot reads the fleet set: from its snapshot (None: the whole set, as 0.5 did). Its check reads
        # the set's count, then the snapshot, in that order: on a Redis Cluster only one node keeps that
        # order, so there the snapshot needs a hash-tagged prefix (every key in one slot).
        usable = target_kind(config.url) != "cluster" or config.keys.hash_tagged
        self.fleet_snapshot: SnapshotPolicy | None = DEFAULT_SNAPSHOT_POLICY if usable else None
        self._lock = threading.RLock()
        self.outage = OutageTracker(config.safe_url, backoff_base=config.retry_backoff_base,
                                    backoff_cap=config.retry_backoff_cap)
        # A hit of the index is confirmed before the task may go on: within the write budget too.
        self.stored = StoredRevokes(self.repository, confirm_with=self.writer, horizon=config.horizon,
                                    pending=self.pending, outage=self.outage, lock=self._lock,
                                    pending_count=lambda: len(self.pending), now=self.now)
        self._probe: SyncStateRepository | None = None
        self._seen_connections = 0
        self._needs_resync = False
        self._last_clock_save = 0.0  # monotonic: when the next periodic save is due
        self.last_clock_save: float | None = None  # wall clock, on the server's: the last successful save
        self.boot_duration: float | None = None  # seconds the last successful merge of the stored state took
        self.version: str = celery_redis_statedb.__version__
        self._timer_entry: Any = None
        self._closed = False

    @property
    def failing(self) -> bool:
        return self.outage.failing

    def now(self) -> float:
        """Wall-clock time on the Redis server's clock: what revocation times are stamped with."""
        return self.watch.now()

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
        # Attached first, without recording: ids the merge pushes out of Celery's set go to the index.
        attach(self.revoked, self, stored=self.stored)
        try:
            with self._lock:
                self._load_until(time.monotonic() + self.config.boot_timeout)
        except RedisUnavailableError as exc:
            if self.config.on_unavailable is not UnavailablePolicy.DEGRADE:
                detach(self.revoked)
                raise
            logger.warning(
                "redis-statedb: starting DEGRADED without stored state (%s); revokes are kept in memory "
                "and the stored state is merged when Redis is back", exc,
            )
            self.outage.failed(exc, pending=self.waiting(), warn=False, said=True)
        except BaseException:
            detach(self.revoked)
            raise
        stamps_for(self).attach()

    def _load_until(self, deadline: float) -> None:
        """``_load`` with backoff until ``deadline``; no attempt's socket timeouts run past it."""
        backoff, failures = boot_backoff(self.config), 0
        while True:
            try:
                self._bounded_load(deadline - time.monotonic())
                return
            except RedisUnavailableError as exc:
                failures += 1
                remaining = deadline - time.monotonic()
                if remaining <= MIN_ATTEMPT:
                    raise
                logger.warning("redis-statedb: %s; retrying (boot timeout %ss)", exc, self.config.boot_timeout)
                time.sleep(min(backoff.compute(failures), remaining - MIN_ATTEMPT))

    def _bounded_load(self, remaining: float) -> None:
        """One boot attempt; with less time left than its commands' timeouts could take (a retry
        included), on a client whose timeouts share what is left, without retries."""
        config = self.config
        worst = (COMMAND_RETRIES + 1) * (config.socket_timeout + config.socket_connect_timeout)
        if config.boot_timeout == 0 or remaining >= worst:
            self._load(at_boot=True)
            return
        half = max(remaining / 2, MIN_ATTEMPT / 2)
        bounded = open_sync_client(dataclasses.replace(
            config, socket_timeout=min(half, config.socket_timeout),
            socket_connect_timeout=min(half, config.socket_connect_timeout)), on_connect=self.connections, retries=0)
        normal, self.repository.client = self.repository.client, bounded
        try:
            self._load(at_boot=True)
        except BaseException:
            self.repository.client = normal
            raise
        finally:
            bounded.close()
        # Loaded: from now on a fresh client with the normal timeouts, whose first connection is expected.
        normal.close()
        self.repository.client = open_sync_client(config, on_connect=FirstConnectFree(self.connections))

    def reload(self) -> None:
        """Merge what Redis holds into memory again (after a migration wrote to it)."""
        with self._lock:
            self._load(at_boot=True)

    def _load(self, *, at_boot: bool) -> None:
        started = time.monotonic()
        self.repository.ping()
        try:
            self.repository.check_server()
        except WrongKeyTypeError as exc:  # the worker's own set: reported below, revokes then wait in memory
            self.bad.key_unreadable(exc)
        try:
            self.watch.boot_check()
        except EvictionPolicyError as exc:
            if at_boot:
                raise
            # A degraded start merging late, on the timer: the worker cannot be stopped from here.
            logger.critical("redis-statedb: %s", exc)
        self.merged = merge_stored(self.repository, self.revoked, self.stored.index, horizon=self.config.horizon,
                                   now=self.now(), snapshot=self.fleet_snapshot)
        data = self.revoked._data
        self.fleet_only.update((task_id, None) for task_id in self.merged.fleet_ids if task_id in data)
        stamps_for(self).load()
        clock = self._merge_clock()
        self._report_bad()
        self.loaded = True
        self._seen_connections = self.connections.count
        self._last_clock_save = time.monotonic()
        self.boot_duration = self._last_clock_save - started
        horizon = "no limit" if self.config.horizon is None else format_duration(self.config.horizon)
        logger.info(
            "redis-statedb: restored %d revoked ids from %s (key %s): %d honoured in memory, %d more by the "
            "index of stored revokes (horizon: %s); clock %s",
            self.merged.total, self.config.safe_url, self.repository.keys.revoked, self.merged.in_memory,
            self.merged.in_index, horizon, clock,
        )
        if self.merged.total > MANY_STORED_IDS:
            logger.warning(
                "redis-statedb: %d stored revoked ids bind this worker (more than %d): every worker reads them "
                "all at boot; purge old ones with `celery statedb purge --older-than 30d` or set "
                "redis_state_horizon", self.merged.total, MANY_STORED_IDS,
            )

    def _merge_clock(self) -> int | None:
        """No clock value stops a boot: a corrupt clock key is reported and left alone (the clock
        goes on from the local value), an implausible one is merged with a warning."""
        if not self.clock:
            return None
        key = self.repository.keys.clock
        try:
            stored = self.repository.read_clock()
        except StateDataError as exc:  # reported with the other keys that cannot be read; the key is left alone
            self.bad.key_unreadable(exc)
            return int(self.clock.value)
        self._check_clock(stored, key)
        value = int(self.clock.adjust(stored))
        info = self.worker_info()
        try:
            saved = self.repository.save_clock(value, info)
        except (StateDataError, InvalidInputError) as exc:
            logger.error("redis-statedb: the clock cannot be saved at boot (%s); booting on the local clock", exc)
            return value
        self._clock_stored = saved.advance.stored
        self.note_clock_save(saved.advance, saved.info_error, at=info.last_seen)
        return saved.advance.stored

    def worker_info(self) -> WorkerInfo:
        """The info hash staged with each clock save: last seen now (on the server's clock), scope, version."""
        return WorkerInfo(self.now(), self.config.scope.value, self.version)

    def note_clock_save(self, advance: ClockAdvance, info_error: StateDBError | None, *, at: float) -> None:
        """A clock save (staged at ``at``, server clock) went through; the info hash too unless ``info_error``."""
        self._last_clock_save = time.monotonic()
        self.last_clock_save = at
        self.watch.clock_saved(advance.stored)
        self.watch.info_refused(info_error)

    def _check_clock(self, value: int, key: str) -> None:
        """Warn (loudly, never refusing) about a clock no real worker reaches: above 2**53, or a
        jump of 2**32 at once (a forged ``worker-heartbeat`` event is enough)."""
        previous, self._clock_stored = self._clock_stored, max(value, self._clock_stored or 0)
        why = implausible_clock(value, previous)
        if why is None or (previous is not None and value <= previous):
            return
        high = value > MAX_CLOCK
        if high and self._clock_warned_high and (previous is None or value - previous <= IMPLAUSIBLE_JUMP):
            return  # said once: a clock that stays above 2**53 is not news at every save
        self._clock_warned_high = self._clock_warned_high or high
        logger.warning("redis-statedb: implausible logical clock for Redis key %r: %s (forged by an event or a "
                       "peer, or corrupted); stored and used all the same", key, why)

    def _report_bad(self) -> None:
        """One ERROR line per bad member skipped (the first few) and per key of another type."""
        for error in self.bad.unreported():
            logger.error("redis-statedb: skipped a bad member (left in Redis, not honoured): %s", error)
        for key, error in self.bad.unreadable.items():
            if key not in self._bad_keys_reported:
                self._bad_keys_reported.add(key)
                logger.error("redis-statedb: %s: not read, the worker boots on what it can read (the key is left "
                             "as it is: fix or delete it)", error)
        if self.bad.count > self.bad.reported:
            logger.error("redis-statedb: %d bad members skipped in all (remove them with ZREM)", self.bad.count)

    def note_unstorable(self, exc: Exception) -> int:
        """Count an id (or stamp) honoured in memory only; returns how many so far."""
        self.unstorable += 1
        self.last_unstorable = str(exc)[:200]
        return self.unstorable

    def status(self) -> dict[str, Any]:
        """What operators look at (the ``statedb_status`` inspect command): JSON-able, no password.

        Read without the lock (a tick may hold it for a socket timeout): each figure is read once.
        ``pending`` counts the revokes waiting to be written, ids and stamped headers.
        """
        keys = self.repository.keys
        return {
            "hostname": self.hostname, "version": self.version, "url": self.config.safe_url,
            "scope": self.config.scope.value,
            "keys": {"revoked": keys.revoked, "clock": keys.clock, "info": keys.info, "shared": keys.shared,
                     "stamps": keys.stamps, "shared_stamps": keys.shared_stamps},
            "loaded": self.loaded, "in_memory": len(self.revoked), "index_size": len(self.stored.index),
            "pending": self.waiting(), "failing": self.failing,
            "failing_since": self.outage.failing_since, "last_clock_save": self.last_clock_save,
            "boot": {"duration_s": self.boot_duration, "merged_in_memory": self.merged.in_memory,
                     "merged_in_index": self.merged.in_index},
            "unstorable": self.unstorable, "last_unstorable": self.last_unstorable, "bad_members": self.bad.count,
            "unreadable_keys": sorted(self.bad.unreadable.copy()),
        }

    def waiting(self) -> int:
        """Revokes waiting to be written: ids and stamped headers."""
        return len(self.pending) + len(stamps_for(self).pending)

    # -- write-through -----------------------------------------------------

    def record(self, task_ids: Sequence[object]) -> None:
        """Called by ``state.revoked`` for ids that just entered it. Never raises.

        While Redis is failing this does no I/O at all: the ids wait for the timer. A write
        slower than ``write_budget`` counts as failed (the ids wait for the timer too); it may
        have been applied anyway, which is harmless (ZADD LT keeps the earliest time).
        """
        now = self.now()
        with self._lock:
            if not self.pending and not self.failing:
                # The usual case: one ZADD, each id checked as it is encoded.
                try:
                    self.writer.add_revoked(task_ids, revoked_at=now)
                    return
                except InvalidInputError:
                    pass  # an id that cannot be stored: sorted out, and logged, below
                except StateDBError as exc:
                    # Every id was checked before any I/O: they all wait for the timer.
                    self.pending.update(dict.fromkeys(task_ids, now))  # type: ignore[arg-type]
                    self.outage.failed(exc, pending=len(self.pending))
                    return
        storable: list[str] = []
        for task_id in task_ids:
            try:
                encode_task_id(task_id)
            except InvalidInputError as exc:
                logger.error("redis-statedb: revoked id honoured in memory only, not storable (%d so far; lost at "
                             "the next restart): %s", self.note_unstorable(exc), exc)
            else:
                storable.append(task_id)  # type: ignore[arg-type]
        if not storable:
            return
        with self._lock:
            for task_id in storable:
                self.pending.setdefault(task_id, now)
            if self.failing:
                self.outage.warn_pending(None, len(self.pending))
                return
            try:
                self.writer.add_revoked_at(list(self.pending.items()))
                self.pending.clear()
            except StateDBError as exc:
                self.outage.failed(exc, pending=len(self.pending))

    def _flush(self) -> None:
        if self.pending:
            self.repository.add_revoked_at(list(self.pending.items()))
            self.pending.clear()

    def _resync(self) -> None:
        """Write the whole in-memory set again (idempotent: the earliest time wins), each id to the
        set it came from: ids read from the fleet set only go back to the fleet set, every other
        one (revoked here, read from the worker's own set, pending) to the worker's own set.
        The index of stored ids beyond memory holds hashes only: those cannot be written back."""
        seen = self.connections.count
        wall, mono = self.now(), time.monotonic()
        earliest: dict[str, float] = {}
        fleet: dict[str, float] = {}
        fleet_only = self.fleet_only
        # entry[0] is the monotonic stamp in every Celery release (the entry's shape differs).
        for item, entry in list(self.revoked._data.items()):
            if isinstance(item, str) and is_storable_task_id(item):
                (fleet if item in fleet_only else earliest)[item] = wall - max(0.0, mono - entry[0])
        for task_id, when in self.pending.items():
            earliest[task_id] = min(when, earliest.get(task_id, when))
        self.repository.add_revoked_at(list(earliest.items()))
        if fleet:
            self.repository.add_fleet_revoked_at(list(fleet.items()))
        if len(fleet) != len(fleet_only):
            self.fleet_only = {task_id: None for task_id in fleet_only if task_id in fleet}
        self.pending.clear()
        self._needs_resync = False
        self._seen_connections = seen
        where = f" ({len(fleet)} of them to the fleet set)" if fleet else ""
        logger.warning("redis-statedb: wrote %d revoked ids held in memory back to %s%s",
                       len(earliest) + len(fleet), self.config.safe_url, where)

    # -- lifting (restore and purge, told by the control commands) ----------

    def lift(self, task_ids: Sequence[str]) -> None:
        """Restored ids: no longer revoked here, in memory, in the index or waiting to be written."""
        with self._lock:
            for task_id in task_ids:
                self.revoked.discard(task_id)
                self.pending.pop(task_id, None)
                self.fleet_only.pop(task_id, None)
            self.stored.lift(task_ids)

    def lift_fleet_entries(self, task_ids: Sequence[str]) -> list[str]:
        """The fleet set no longer holds these ids: lift those bound here only through it (read from the
        fleet set alone at boot, in the worker scope; every one in the shared scope, where the fleet set is
        this worker's set). Ids this worker's own set holds stay revoked, and are never written back to
        the fleet set. Returns the ids lifted (present here or not)."""
        keys = self.repository.keys
        with self._lock:
            chosen = list(task_ids) if keys.revoked == keys.shared else [t for t in task_ids if t in self.fleet_only]
            self.lift(chosen)
        return chosen

    def purged_before(self, before: float) -> int:
        """A purge removed ids revoked before ``before``: drop those Redis no longer holds."""
        expires = self.revoked.expires or 0.0
        with self._lock:
            if self._needs_resync or not self.loaded:
                return 0  # Redis may have lost its data: what it lacks is not a purge
            try:
                return self.stored.purged_before(before, self.revoked, slack=expires * STAMP_WINDOW)
            except StateDBError as exc:
                self.outage.failed(exc, pending=len(self.pending), warn=False)
                return 0

    def _probe_server(self) -> None:
        """A PING with a short connect timeout and no retry: cheap to fail while Redis is away.

        Its reply may take the socket timeout: a Redis slower than the write budget but within
        the socket timeout is up, and the timer writes the pending ids to it.
        """
        if self._probe is None:
            quick = dataclasses.replace(
                self.config, socket_connect_timeout=min(PROBE_TIMEOUT, self.config.socket_connect_timeout),
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
                self.outage.failed(exc, pending=self.waiting())
            except Exception as exc:  # the timer must keep running; the state stays pending
                logger.exception("redis-statedb: unexpected error on the timer, will retry")
                self.outage.failed(StateDBError(f"unexpected {type(exc).__name__}: {exc}"),
                                   pending=self.waiting(), warn=False, said=True)

    def _tick(self) -> None:
        recovering = self.failing
        # Back from an outage in which Redis may have restarted empty (not just been short of replicas).
        lost_contact = self.outage.lost_contact
        if recovering:
            if not self.outage.due:
                return
            self._probe_server()
        if not self.loaded:
            self._load(at_boot=False)
        # One round trip: loss, rollback, eviction, the server clock; the clock saved when it moved
        # or is due (a bad clock key is reported there and holds back nothing).
        advance: int | None = None
        if self.clock and self.loaded:
            value = int(self.clock.value)
            due = time.monotonic() - self._last_clock_save >= self.config.clock_interval
            if due or value > (self.watch.saved_clock or 0):
                advance = value
                self._check_clock(value, self.repository.keys.clock)  # a forged jump is said, never refused
        slow: RedisUnavailableError | None = None
        try:
            if self.loaded and self.watch.check(advance_to=advance) is not None:
                self._needs_resync = True
                if advance is None:
                    self._save_clock()  # the clock key is gone or behind: put this worker's back
        except RedisUnavailableError as exc:  # past the write budget: waiting ids are still written below
            slow = exc
        if lost_contact or self.connections.count != self._seen_connections:
            self._needs_resync = True
        stamps_for(self).tick(resync=self._needs_resync)
        if self._needs_resync:
            self._resync()
        else:
            self._flush()
        if slow is not None:
            raise slow  # counted as an outage: the next checks back off
        self.outage.recovered()

    def _save_clock(self, value: int | None = None) -> None:
        if not self.clock:
            return
        current = int(self.clock.value if value is None else value)
        self._check_clock(current, self.repository.keys.clock)
        info = self.worker_info()
        saved = self.repository.save_clock(current, info)
        self.note_clock_save(saved.advance, saved.info_error, at=info.last_seen)
        if saved.advance.created:
            # The clock written at boot is gone: Redis lost its data.
            self._needs_resync = True

    def _report_shutdown_failure(self, exc: StateDBError) -> None:
        """What the last save could not write: a count only of what was waiting (none: the outage alone)."""
        ids, stamps = len(self.pending), len(stamps_for(self).pending)
        url = self.config.safe_url
        if ids or stamps:
            what = " and ".join(text for count, text in ((ids, f"{ids} revoked ids"),
                                                         (stamps, f"{stamps} stamped-header revokes")) if count)
            logger.error("redis-statedb: at shutdown %s could not be written to %s: %s", what, url, exc)
        else:  # every revoke acknowledged was written (a write-back after a reconnect is a precaution)
            logger.error("redis-statedb: at shutdown the clock could not be saved to %s (no revoke was waiting to "
                         "be written): %s", url, exc)

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
                stamps_for(self).save()
                if self._needs_resync or self.connections.count != self._seen_connections:
                    self._resync()
                else:
                    self._flush()
            except StateDBError as exc:
                self._report_shutdown_failure(exc)
            finally:
                detach(self.revoked)
                stamps_for(self).detach()
                self.repository.close()
                if self.writer is not self.repository:
                    self.writer.close()
                if self._probe is not None:
                    self._probe.close()
