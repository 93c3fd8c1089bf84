"""Stored revokes beyond Celery's own set: honoured through the index, confirmed in Redis.

``state.revoked`` asks :meth:`StoredRevokes.binds` about every id it does not hold
itself. An id the index does not hold answers False at once (the hot path: no Redis
call). A candidate is revoked if it waits to be written (pending), or if Redis holds
it in this worker's set or the fleet set, revoked within the horizon; otherwise it
was restored, purged or aged out of the horizon, and it leaves the index.

While Redis cannot answer, a candidate is honoured (the task is discarded) and a
warning is logged: the index was read from Redis and live restores lift ids from it
at once, so a candidate is a stored revoke but for a restore this worker did not hear,
or a 2**-64 hash collision. A revoked task never runs for want of Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

from celery.utils.collections import LimitedSet

from celery_redis_statedb.outage import OutageTracker, Throttle
from celery_redis_statedb.stored_index import StoredIdIndex
from statedb._sync.repository import SyncStateRepository
from statedb.errors import StateDBError
from statedb.names import is_storable_task_id

logger = logging.getLogger("celery_redis_statedb")

CONFIRMED_MAX = 4096
# A confirmed hit is trusted this long (Celery checks one message two or three times in a row);
# after it the next check asks Redis again, so a restore this worker did not hear still lifts it.
CONFIRMED_FOR = 2.0


class StoredRevokes:
    """The index of stored ids beyond ``state.revoked``, and the confirmation of its hits."""

    def __init__(self, repository: SyncStateRepository, *, confirm_with: SyncStateRepository | None = None,
                 horizon: float | None, pending: Mapping[str, float], outage: OutageTracker,
                 lock: threading.RLock, pending_count: Callable[[], int],
                 now: Callable[[], float] = time.time) -> None:
        self.repository, self.horizon, self.pending, self.outage = repository, horizon, pending, outage
        self.confirmer = confirm_with or repository
        self.now = now  # wall clock of the stored scores (the server's)
        self.index = StoredIdIndex()
        self._lock = lock
        self._pending_count = pending_count
        # id -> (revocation time, when confirmed on the monotonic clock): hits confirmed a moment ago
        self._confirmed: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._warnings = Throttle()
        self.confirmations = 0  # Redis round trips made for candidates (for tests and metrics)

    # -- called by state.revoked -------------------------------------------

    def binds(self, task_id: object) -> bool:
        """True if ``task_id`` (not in Celery's own set) is revoked by a stored revoke."""
        if not self.index.may_hold(task_id):
            return False
        assert isinstance(task_id, str)  # may_hold holds only strings
        with self._lock:
            return self._confirm(task_id)

    def evicted(self, task_id: object) -> None:
        """Celery's set dropped ``task_id`` (its size cap or expiry): the index takes it over.

        Runs once an id whenever the set is full; an id that was never storable costs one
        confirmation at most (Redis does not hold it: it leaves the index then)."""
        self.index.add(task_id)

    def evicted_many(self, task_ids: Sequence[object]) -> None:
        self.index.add_many(task_ids)

    # -- lifting -----------------------------------------------------------

    def lift(self, task_ids: Iterable[str]) -> None:
        """Restored ids: out of the index and the confirmations (the caller drops them from Redis)."""
        ids = list(task_ids)
        with self._lock:
            self.index.lift(ids)
            for task_id in ids:
                self._confirmed.pop(task_id, None)

    def purged_before(self, before: float, revoked: LimitedSet, *, slack: float) -> int:
        """After a purge of ids revoked before ``before`` (wall clock): drop from memory the ids
        Redis no longer holds; returns how many. Ids in memory are stamped up to ``slack``
        seconds late, so the candidates are those stamped before ``before + slack``, each
        checked in Redis (an id still stored, pending or not storable stays)."""
        with self._lock:
            for task_id, (revoked_at, _) in list(self._confirmed.items()):
                if revoked_at < before:
                    del self._confirmed[task_id]
            if self.outage.failing:
                return 0
            mono_limit = time.monotonic() - (self.now() - before) + slack
            candidates = [item for item, entry in list(revoked._data.items())
                          if entry[0] < mono_limit and item not in self.pending and is_storable_task_id(item)]
            dropped, size = 0, self.repository.operations.write_chunk_size  # ids a command carries
            for i in range(0, len(candidates), size):
                chunk = candidates[i : i + size]
                scores = self.repository.revoked_scores(chunk)
                for task_id, score in zip(chunk, scores, strict=True):
                    if score is None or not self._within_horizon(score):
                        revoked.discard(task_id)
                        dropped += 1
            return dropped

    # -- internals ---------------------------------------------------------

    def _within_horizon(self, revoked_at: float) -> bool:
        return self.horizon is None or revoked_at >= self.now() - self.horizon

    def _confirm(self, task_id: str) -> bool:
        if task_id in self.pending:
            return True
        confirmed = self._confirmed.get(task_id)
        if confirmed is not None:
            revoked_at, at = confirmed
            if time.monotonic() - at < CONFIRMED_FOR and self._within_horizon(revoked_at):
                return True
            del self._confirmed[task_id]
        if self.outage.failing:
            self._warn_unconfirmed(task_id, None)
            return True
        try:
            (score,) = self.confirmer.revoked_scores([task_id])
        except StateDBError as exc:
            self.outage.failed(exc, pending=self._pending_count(), warn=False)
            self._warn_unconfirmed(task_id, exc)
            return True
        finally:
            self.confirmations += 1
        if score is None or not self._within_horizon(score):
            self.index.lift([task_id])
            self._confirmed.pop(task_id, None)
            return False
        self._confirmed[task_id] = (score, time.monotonic())
        if len(self._confirmed) > CONFIRMED_MAX:
            self._confirmed.popitem(last=False)
        return True

    def _warn_unconfirmed(self, task_id: str, exc: StateDBError | None) -> None:
        if not self._warnings.ready():
            return
        logger.warning(
            "redis-statedb: task %r matches a stored revoke that Redis at %s cannot confirm now%s; "
            "it is discarded as revoked (a revoked task must not run)",
            task_id[:80], self.outage.url, f" ({exc})" if exc else "",
        )
