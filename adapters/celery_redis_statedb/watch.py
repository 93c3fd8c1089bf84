"""Is the stored state still what this worker wrote? One cheap round trip per timer tick.

Each tick (every ``flush_interval``, 1 s) asks Redis, in one pipeline
(:func:`statedb.integrity.check_health`), for:

- the clock key as stored: gone while this worker saved one means Redis lost its data
  (a restart without persistence, FLUSHALL, eviction); below the last value this
  worker saved means Redis rolled back (a stale replica promoted, a backup restored);
  either is repaired at once;
- whether this worker's revoked set still holds the newest id it wrote or read there,
  and (worker scope) whether the fleet set still holds an id it read there: an id
  missing at two ticks in a row while still revoked here is a loss (a set that
  vanished, an eviction under an ``allkeys-*`` policy, a rollback that kept the
  clock). One tick of grace, because an operator's restore removes the id from Redis
  just before its ``statedb_restore`` broadcast lifts it here;
- the server's ``TIME``: revocation times are stamped on the server's clock (local time
  plus the measured offset), so one host's wrong clock does not move its scores;
- every ``clock_interval``, the eviction policy (``INFO memory``).

The clock's advance rides along when it is due (it moved, or ``clock_interval`` passed),
and with it the worker's info hash (``HSET <prefix><worker>:info last_seen ...``): the
time of the last clock save is what tells a live worker from a dead one's leftovers.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from celery_redis_statedb.outage import Throttle
from statedb import integrity
from statedb.commands import ClockAdvance
from statedb.errors import (
    AccessDeniedError,
    EvictionPolicyError,
    InvalidInputError,
    StateDataError,
    StateDBError,
)
from statedb.names import is_storable_task_id

if TYPE_CHECKING:
    from celery_redis_statedb.persistence import WorkerStatePersistence

logger = logging.getLogger("celery_redis_statedb")

POLICY_WARN_EVERY = 60.0
SKEW_WARN_ABOVE = 2.0  # seconds between this host's clock and the server's
SKEW_WARN_EVERY = 3600.0
# A TIME sample whose round trip took longer than this is not trusted to set the offset.
MAX_SAMPLE_RTT = 0.25
SENTINEL_SCAN = 64


def eviction_message(url: str, policy: str) -> str:
    return (f"Redis at {url} may evict keys without a TTL (maxmemory-policy {policy}): stored revokes "
            f"would vanish under memory pressure and revoked tasks would run; set maxmemory-policy to "
            f"noeviction (or a volatile-* policy), or accept the risk with redis_state_accept_eviction=true "
            f"(CELERY_REDIS_STATE_ACCEPT_EVICTION)")


class StateWatch:
    """The timer's integrity check of one worker's stored state, and the server clock offset."""

    def __init__(self, persistence: WorkerStatePersistence) -> None:
        self.persistence = persistence
        self.offset = 0.0  # server TIME minus local time.time()
        self.offset_measured = False
        self.policy: str | None = None
        self.saved_clock: int | None = None  # the highest clock this worker stored (or saw stored)
        self.repairs: list[str] = []  # why the state was written back (for logs and tests)
        self._best_rtt = math.inf
        self._policy_checked = -math.inf
        self._policy_warnings = Throttle(POLICY_WARN_EVERY)
        self._skew_warnings = Throttle(SKEW_WARN_EVERY)
        self._refusal_warned = False
        self._info_refusal_warned = False
        self._own: str | None = None
        self._suspects: dict[str, set[str]] = {}  # key -> ids found missing at the last check

    # -- clocks ------------------------------------------------------------

    def now(self) -> float:
        """Wall-clock time on the Redis server's clock (local time if it was never measured)."""
        return time.time() + self.offset

    def _sample(self, server_time: float | None, before: float, after: float) -> None:
        if server_time is None:
            return
        rtt = after - before
        if self.offset_measured and rtt > max(MAX_SAMPLE_RTT, 2 * self._best_rtt):
            return
        self._best_rtt = min(self._best_rtt, rtt)
        self.offset = server_time - (before + after) / 2
        self.offset_measured = True
        if abs(self.offset) > SKEW_WARN_ABOVE and self._skew_warnings.ready():
            logger.warning(
                "redis-statedb: this host's clock is %+.1fs off the clock of Redis at %s; revocation times "
                "are stamped on the server's clock", -self.offset, self.persistence.config.safe_url,
            )

    def clock_saved(self, stored: int) -> None:
        self.saved_clock = stored if self.saved_clock is None else max(self.saved_clock, stored)

    # -- the eviction policy -----------------------------------------------

    def _policy_seen(self, policy: str | None, *, at_boot: bool) -> None:
        self._policy_checked = time.monotonic()
        changed = policy != self.policy
        self.policy = policy
        if not integrity.evicts_our_keys(policy):
            if changed and not at_boot and self.persistence.loaded:
                self._policy_warnings.reset()
            return
        assert policy is not None
        config = self.persistence.config
        message = eviction_message(config.safe_url, policy)
        if at_boot and not config.accept_eviction:
            raise EvictionPolicyError(message)
        if changed:
            self._policy_warnings.reset()
        if not self._policy_warnings.ready():
            return
        if config.accept_eviction:
            logger.warning("redis-statedb: Redis at %s may evict keys without a TTL (maxmemory-policy %s): stored "
                           "revokes can be evicted. Accepted by redis_state_accept_eviction: this worker writes "
                           "back the ids it holds when it sees a set vanish, but ids no worker holds in memory "
                           "are lost", config.safe_url, policy)
        else:
            logger.error("redis-statedb: %s. This worker keeps running and writes back what it holds when it sees "
                         "a set vanish", message)

    def _warn_refused(self, refused: tuple[str, ...]) -> None:
        if refused and not self._refusal_warned:
            self._refusal_warned = True
            logger.warning("redis-statedb: Redis at %s refused %s: the eviction policy and the server clock "
                           "cannot be checked (grant the worker's ACL user +info and +time)",
                           self.persistence.config.safe_url, "; ".join(refused))

    def info_refused(self, error: StateDBError | None) -> None:
        """The info hash staged with a clock save was refused: said once, never fatal (a worker runs
        without it; only its last seen time goes unrecorded)."""
        if error is None or self._info_refusal_warned:
            return
        self._info_refusal_warned = True
        fix = ("grant the worker's ACL user +hset on the :info keys, see the README's Security section"
               if isinstance(error, AccessDeniedError) else "fix or delete the key")
        logger.warning("redis-statedb: %s: this worker's last seen time is not recorded, so `celery statedb "
                       "prune` cannot tell when it last ran (%s); the worker goes on", error, fix)

    def boot_check(self) -> None:
        """At boot: the server clock and the eviction policy. Raises EvictionPolicyError."""
        repository = self.persistence.repository
        before = time.time()
        health = repository.check_health((), clock=False, server_time=True, policy=True)
        self._sample(health.server_time, before, time.time())
        self._warn_refused(health.refused)
        if not any(r.startswith("INFO") for r in health.refused):
            self._policy_seen(health.policy, at_boot=True)
        self._suspects.clear()

    # -- the check on the timer --------------------------------------------

    def _own_sentinel(self) -> str | None:
        """The newest id in memory that must be in this worker's own set (written, or read there)."""
        persistence = self.persistence
        data = persistence.revoked._data
        fleet, pending = persistence.fleet_only, persistence.pending
        try:
            for scanned, item in enumerate(reversed(data)):
                if scanned >= SENTINEL_SCAN:
                    break
                if item not in pending and item not in fleet and is_storable_task_id(item):
                    self._own = item
                    break
        except RuntimeError:  # Celery's set changed meanwhile (another thread): keep the last one
            pass
        if self._own is not None and (self._own not in data or self._own in pending):
            self._own = None
        return self._own

    def _fleet_sentinel(self) -> str | None:
        persistence = self.persistence
        data, fleet = persistence.revoked._data, persistence.fleet_only
        for _ in range(SENTINEL_SCAN):
            first = next(iter(fleet), None)
            if first is None or first in data:
                return first
            del fleet[first]  # no longer in Celery's set: nothing to write back
        return None

    def _probes(self) -> list[integrity.SetProbe]:
        persistence = self.persistence
        keys = persistence.repository.keys
        data = persistence.revoked._data
        wanted: dict[str, list[str]] = {keys.revoked: []}
        own = self._own_sentinel()
        if own is not None:
            wanted[keys.revoked].append(own)
        if keys.shared != keys.revoked:
            fleet = self._fleet_sentinel()
            if fleet is not None:
                wanted[keys.shared] = [fleet]
        for key, suspects in self._suspects.items():
            still = [m for m in suspects if m in data and m not in persistence.pending]
            wanted.setdefault(key, []).extend(m for m in still if m not in wanted[key])
        return [integrity.SetProbe(key, tuple(members)) for key, members in wanted.items() if members]

    def check(self, *, advance_to: int | None) -> str | None:
        """One round trip; returns why the state must be written back (None: it is intact).

        Raises StateDBError when Redis cannot answer (the caller counts an outage).
        """
        persistence = self.persistence
        config = persistence.config
        track_clock = bool(persistence.clock) and self.saved_clock is not None
        policy_due = time.monotonic() - self._policy_checked >= config.clock_interval
        probes = self._probes()
        advance_to = advance_to if track_clock else None
        info = None if advance_to is None else persistence.worker_info()  # rides along with the clock save
        before = time.time()
        health = persistence.writer.check_health(  # within the write budget: the timer runs on the event loop
            probes, clock=track_clock, server_time=True, policy=policy_due, advance_to=advance_to, info=info,
        )
        self._sample(health.server_time, before, time.time())
        self._warn_refused(health.refused)
        if policy_due and not any(r.startswith("INFO") for r in health.refused):
            self._policy_seen(health.policy, at_boot=False)
        reason = self._clock_reason(health) if track_clock else None
        set_reason = self._set_reason(health)
        self._advanced(health, at=None if info is None else info.last_seen)
        reason = reason or set_reason
        if reason is not None:
            self.repairs.append(reason)
            self._suspects.clear()
            logger.warning("redis-statedb: %s: writing back every revoked id this worker holds", reason)
        return reason

    def _clock_reason(self, health: integrity.Health) -> str | None:
        key = self.persistence.repository.keys.clock
        if health.clock_missing:
            cause = "evicted" if integrity.evicts_our_keys(self.policy) else "Redis lost its data"
            return f"the clock key {key!r} vanished ({cause})"
        if health.clock is not None and self.saved_clock is not None and health.clock < self.saved_clock:
            saved, self.saved_clock = self.saved_clock, health.clock  # the repair saves ours again
            return (f"the stored clock {key!r} went back from {saved} to {health.clock}: Redis rolled back "
                    f"(a stale replica promoted or a backup restored)")
        return None

    def _set_reason(self, health: integrity.Health) -> str | None:
        data = self.persistence.revoked._data
        reason: str | None = None
        suspects: dict[str, set[str]] = {}
        for state in health.sets:
            before = self._suspects.get(state.key, set())
            confirmed = [m for m in state.missing if m in before and m in data]
            if state.missing:
                suspects[state.key] = set(state.missing)
            if confirmed and reason is None:
                if state.size == 0:
                    how = ("evicted" if not health.clock_missing and integrity.evicts_our_keys(self.policy)
                           else "deleted or lost")
                    reason = f"the revoked set {state.key!r} vanished ({how})"
                else:
                    reason = (f"the revoked set {state.key!r} no longer holds {len(confirmed)} id(s) still revoked "
                              f"here (Redis rolled back, or they were removed by hand)")
        self._suspects = suspects
        return reason

    def _advanced(self, health: integrity.Health, *, at: float | None) -> None:
        persistence = self.persistence
        advanced = health.advanced
        if advanced is None or at is None:
            return
        persistence._last_clock_save = time.monotonic()
        if isinstance(advanced, ClockAdvance):
            persistence.note_clock_save(advanced, health.info_error, at=at)
            if advanced.created:
                persistence._needs_resync = True
        elif isinstance(advanced, (StateDataError, InvalidInputError)):
            logger.error("redis-statedb: the clock cannot be saved (%s); revoked ids are still stored", advanced)
        else:
            raise advanced
