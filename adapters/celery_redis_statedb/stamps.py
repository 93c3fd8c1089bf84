"""Stamped-header revokes (``revoke_by_stamped_headers``) kept in Redis, worker side.

Celery keeps them in ``state.revoked_stamps``, a plain dict bound at import by
``celery.worker.request`` (so it is only ever changed in place here, never rebound)
and never persisted. With the Redis statedb:

- **Write-through:** while a :class:`WorkerStamps` is attached, Celery's
  ``revoke_by_stamped_headers`` control handler (``Panel.data``) is wrapped: the
  (header, value) pairs are written to the worker's stamps key first, then Celery's own
  handler runs, unchanged (terminate, the ``['k=v']`` list form, its reply). While Redis
  is failing they are honoured in memory and wait in ``pending``, written by the
  persistence's timer once Redis answers (a SIGKILL before then loses them: the same
  window as ids). Without an attached persistence Celery's handler is in place, untouched.
- **Boot:** the worker's stamps key and the fleet's are merged into
  ``state.revoked_stamps`` (values appended, no duplicates), only those revoked at or
  after ``now - horizon`` when ``redis_state_horizon`` is set.
- **Revocation times** are kept in memory per stored member, so that a purge by age
  (``statedb_purge_stamps``) and the horizon lift stamps in live workers too;
  ``statedb_restore_stamps`` lifts given ones. Prefork children clearing the dict
  (``reset_state()``) never touch Redis: nothing here reacts to the dict itself.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import Panel, control_command, ok

from celery_redis_statedb.outage import Throttle
from statedb.errors import InvalidInputError, StateDBError, WrongKeyTypeError
from statedb.stamps import Stamp, decode_stamp, encode_stamp

if TYPE_CHECKING:
    from celery_redis_statedb.persistence import WorkerStatePersistence
    from statedb._sync.repository import SyncStateRepository

logger = logging.getLogger("celery_redis_statedb")

CELERY_COMMAND = "revoke_by_stamped_headers"
RESTORE_COMMAND = "statedb_restore_stamps"
PURGE_COMMAND = "statedb_purge_stamps"

Handler = Callable[..., Any]


def celery_pairs(headers: Any) -> list[Stamp]:
    """The (header, value) pairs Celery's handler adds to ``revoked_stamps``, split exactly as it does.

    Raises whatever Celery's handler would raise on the same argument.
    """
    if isinstance(headers, list):
        headers = {h.split("=")[0]: h.split("=")[1] for h in headers}
    pairs: list[Stamp] = []
    for header, stamps in headers.items():
        pairs.extend((header, value) for value in list(maybe_list(stamps)))
    return pairs


def _values(current: Any) -> list[Any]:
    return list(maybe_list(current)) if current is not None else []


def merge_into_memory(revoked_stamps: dict[Any, Any], pairs: Iterable[Stamp]) -> int:
    """Append values to ``revoked_stamps`` in place (a new list per header, as Celery does), no duplicates."""
    added: dict[Any, list[Any]] = {}
    for header, value in pairs:
        values = added.get(header)
        if values is None:
            values = added[header] = _values(revoked_stamps.get(header))
        if value not in values:
            values.append(value)
    count = 0
    for header, values in added.items():
        before = len(_values(revoked_stamps.get(header)))
        if len(values) != before:
            count += len(values) - before
            revoked_stamps[header] = values
    return count


def lift_from_memory(revoked_stamps: dict[Any, Any], pairs: Iterable[Stamp]) -> int:
    """Remove every occurrence of each (header, value) from ``revoked_stamps``, in place; returns how many pairs."""
    lifted = 0
    for header, value in pairs:
        if header not in revoked_stamps:
            continue
        values = _values(revoked_stamps[header])
        kept = [v for v in values if v != value]
        if len(kept) == len(values):
            continue
        lifted += 1
        if kept:
            revoked_stamps[header] = kept
        else:
            del revoked_stamps[header]
    return lifted


class WorkerStamps:
    """One worker's stamped-header revokes: write-through, boot merge, revocation times.

    Shares the persistence's repository, lock and failure state (a failing Redis is
    not retried here: the persistence's timer calls :meth:`flush`).
    """

    def __init__(self, persistence: WorkerStatePersistence, revoked_stamps: dict[Any, Any] | None = None) -> None:
        self.persistence = persistence
        self.revoked_stamps = worker_state.revoked_stamps if revoked_stamps is None else revoked_stamps
        self.times: dict[bytes, float] = {}  # stored member -> earliest revocation time (wall clock)
        self.fleet: set[bytes] = set()  # members loaded from the fleet stamps key (worker scope)
        self.own: set[bytes] = set()  # members of this worker's own key (loaded or recorded)
        self.pending: dict[bytes, float] = {}  # members not yet written (Redis failing)
        self.original: Handler | None = None
        self._warnings = Throttle()

    # -- boot ----------------------------------------------------------------

    def load(self) -> int:
        """Merge the worker's and the fleet's stamps into memory (within the horizon). Raises StateDBError."""
        repository, horizon = self.persistence.repository, self.persistence.config.horizon
        now = self.persistence.now()
        newer_than = None if horizon is None else now - horizon
        keys = repository.keys
        rows: list[tuple[str, Any, float, bool]] = []
        for shared in (False, True) if keys.stamps != keys.shared_stamps else (False,):
            try:
                read = list(repository.iter_stamps(newer_than=newer_than, shared=shared))
            except WrongKeyTypeError as exc:  # reported by the persistence; boot on what can be read
                if repository.bad is None:
                    raise
                repository.bad.key_unreadable(exc)
                continue
            rows.extend((h, v, when, shared) for h, v, when in read)
        for header, value, when, shared in rows:
            member = encode_stamp(header, value)
            if when < self.times.get(member, when + 1):
                self.times[member] = when
            (self.fleet if shared else self.own).add(member)
        merged = merge_into_memory(self.revoked_stamps, [(h, v) for h, v, _, _ in rows])
        where = keys.stamps if keys.stamps == keys.shared_stamps else f"{keys.stamps} and {keys.shared_stamps}"
        logger.info("redis-statedb: restored %d stamped-header revokes from %s (%s)%s", merged,
                    self.persistence.config.safe_url, where,
                    "" if horizon is None else f", revoked in the last {horizon:g}s")
        return merged

    # -- write-through -----------------------------------------------------------

    def record(self, pairs: Sequence[Stamp]) -> None:
        """Store pairs that are about to enter ``revoked_stamps``. Never raises."""
        now = self.persistence.now()
        members: list[bytes] = []
        for header, value in pairs:
            try:
                members.append(encode_stamp(header, value))
            except InvalidInputError as exc:
                logger.error("redis-statedb: stamped-header revoke honoured in memory only, not storable (%d so far; "
                             "lost at the next restart): %s", self.persistence.note_unstorable(exc), exc)
        if not members:
            return
        persistence = self.persistence
        with persistence._lock:
            for member in members:
                self.times.setdefault(member, now)
                self.pending.setdefault(member, now)
                self.own.add(member)
            if persistence.failing:
                if not self._warnings.ready():
                    return
                logger.warning("redis-statedb: %d stamped-header revokes are honoured in memory but NOT yet "
                               "stored in Redis at %s; retrying with backoff", len(self.pending),
                               persistence.config.safe_url)
                return
            try:
                self.flush(repository=persistence.writer)  # within the write budget
            except StateDBError as exc:
                persistence.outage.failed(exc, pending=len(persistence.pending) + len(self.pending))

    def flush(self, *, resync: bool = False, repository: SyncStateRepository | None = None) -> None:
        """Write pending stamps (every one in memory when ``resync``). Raises StateDBError; the caller
        holds the persistence's lock and marks Redis failing."""
        batch = {m: w for m, w in self.times.items() if m in self.own} if resync else dict(self.pending)
        # After data loss, stamps read from the fleet key (and not the worker's own) go back there.
        fleet = {m: w for m, w in self.times.items() if m in self.fleet and m not in self.own} if resync else {}
        if not batch and not fleet:
            return
        repository = repository or self.persistence.repository
        for members, shared in ((batch, False), (fleet, True)):
            by_time: dict[float, list[Stamp]] = {}
            for member, when in members.items():
                by_time.setdefault(when, []).append(decode_stamp(repository.keys.stamps, member))
            for when, stamps in by_time.items():
                repository.add_stamps(stamps, revoked_at=when, shared=shared)
        for member in batch:
            self.pending.pop(member, None)
        if resync:
            logger.warning("redis-statedb: wrote %d stamped-header revokes held in memory back to %s",
                           len(batch) + len(fleet), self.persistence.config.safe_url)

    def save(self) -> None:
        """At shutdown, before the persistence writes its ids: pending stamps (all of them after data loss)."""
        persistence = self.persistence
        self.flush(resync=persistence._needs_resync or persistence.connections.count != persistence._seen_connections)

    def tick(self, *, resync: bool = False) -> None:
        """On the persistence's timer: lift what the horizon no longer covers, write what is pending."""
        self.expire()
        self.flush(resync=resync)

    def expire(self, now: float | None = None) -> int:
        """Lift stamps revoked before ``now - horizon`` (nothing when there is no horizon)."""
        horizon = self.persistence.config.horizon
        if horizon is None or not self.times:
            return 0
        return self.lift_before((self.persistence.now() if now is None else now) - horizon, fleet=True)

    # -- lifting ---------------------------------------------------------------

    def forget(self, members: Iterable[bytes]) -> None:
        for member in members:
            self.times.pop(member, None)
            self.pending.pop(member, None)
            self.fleet.discard(member)
            self.own.discard(member)

    def lift_before(self, cutoff: float, *, fleet: bool) -> int:
        """Lift stamps revoked strictly before ``cutoff`` (those loaded from the fleet key only if ``fleet``)."""
        old = [m for m, when in self.times.items() if when < cutoff and (fleet or m not in self.fleet)]
        pairs = [decode_stamp("memory", member) for member in old]
        self.forget(old)
        return lift_from_memory(self.revoked_stamps, pairs)

    # -- the control handler -------------------------------------------------------

    def attach(self) -> None:
        """Wrap Celery's revoke_by_stamped_headers handler (idempotent)."""
        _registry.active = self
        current = Panel.data.get(CELERY_COMMAND)
        if current is None or getattr(current, "_statedb_wrapper", False):
            return
        self.original = current
        Panel.data[CELERY_COMMAND] = _make_wrapper(current)

    def detach(self) -> None:
        """Put Celery's own handler back."""
        if _registry.active is self:
            _registry.active = None
        current = Panel.data.get(CELERY_COMMAND)
        if self.original is not None and getattr(current, "_statedb_wrapper", False):
            Panel.data[CELERY_COMMAND] = self.original
        self.original = None


class _Registry:
    active: WorkerStamps | None = None


_registry = _Registry()
_by_persistence: weakref.WeakKeyDictionary[Any, WorkerStamps] = weakref.WeakKeyDictionary()


def stamps_for(persistence: WorkerStatePersistence) -> WorkerStamps:
    """The stamps companion of a persistence (made on first use)."""
    found = _by_persistence.get(persistence)
    if found is None:
        found = _by_persistence[persistence] = WorkerStamps(persistence)
    return found


def active() -> WorkerStamps | None:
    """The attached companion of this worker's persistence, if any."""
    return _registry.active


def _make_wrapper(original: Handler) -> Handler:
    def revoke_by_stamped_headers(state: Any, headers: Any, terminate: bool = False, signal: Any = None,
                                  **kwargs: Any) -> Any:
        stamps = _registry.active
        if stamps is not None:
            try:
                pairs = celery_pairs(headers)
            except Exception:  # Celery's handler below fails the same way, and replies so
                pairs = []
            stamps.record(pairs)
        return original(state, headers, terminate=terminate, signal=signal, **kwargs)

    revoke_by_stamped_headers.__doc__ = original.__doc__
    revoke_by_stamped_headers.__wrapped__ = original  # type: ignore[attr-defined]
    revoke_by_stamped_headers._statedb_wrapper = True  # type: ignore[attr-defined]
    return revoke_by_stamped_headers


# -- the library's control commands (registered wherever this package is imported) --------------------


def _pairs_argument(stamps: Any) -> list[Stamp]:
    if isinstance(stamps, Mapping):
        return [(h, v) for h, values in stamps.items() for v in _values(values)]
    pairs: list[Stamp] = []
    for item in stamps or []:
        header, value = item
        pairs.append((header, value))
    return pairs


@control_command(args=[("stamps", list)], signature="[[header, value], ...]")  # type: ignore[untyped-decorator]
def statedb_restore_stamps(state: Any, stamps: Any = None, **kwargs: Any) -> dict[str, str]:
    """Drop stamped-header revokes from this worker's memory (Redis is left to the caller)."""
    pairs = _pairs_argument(stamps)
    companion = _registry.active
    if companion is not None:
        members = []
        for header, value in pairs:
            try:
                members.append(encode_stamp(header, value))
            except InvalidInputError:
                continue
        with companion.persistence._lock:
            companion.forget(members)
    lifted = lift_from_memory(worker_state.revoked_stamps, pairs)
    return ok(f"{lifted} of {len(pairs)} stamped headers restored")  # type: ignore[no-any-return]


@control_command(args=[("cutoff", float), ("fleet", bool)], signature="<cutoff> [fleet]")  # type: ignore[untyped-decorator]
def statedb_purge_stamps(state: Any, cutoff: Any = None, fleet: Any = True, **kwargs: Any) -> dict[str, str]:
    """Drop stamped-header revokes revoked before ``cutoff`` (wall clock) from this worker's memory."""
    companion = _registry.active
    if companion is None:
        return ok("0 stamped headers purged (no revocation times here: not a Redis statedb worker)")  # type: ignore[no-any-return]
    with companion.persistence._lock:
        lifted = companion.lift_before(float(cutoff), fleet=bool(fleet))
    return ok(f"{lifted} stamped headers purged")  # type: ignore[no-any-return]
