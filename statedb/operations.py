"""One worker's operations, built on the command layer: what both repositories stage.

The async repository and the sync twin differ only in how they execute an
:class:`~statedb.commands.Operation`; which keys, chunk sizes and defaults they
use lives here, once. So does durability: every write a worker must not lose (its revokes,
the ids it writes back, its stamps) waits for the replicas or the fsync its configuration asks
for (:mod:`statedb.durability`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from statedb import commands, cursors, integrity, stored_ids
from statedb.config import StateDBConfig
from statedb.durability import Durability, check_support, durable
from statedb.keys import WorkerKeys


@dataclass(frozen=True)
class StateOperations:
    """Builds the operations on one worker's keys; ``target`` (a masked URL) is what errors name;
    ``durability``: what the writes wait for (None: the primary's reply)."""

    keys: WorkerKeys
    target: str
    load_chunk_size: int = StateDBConfig.load_chunk_size
    write_chunk_size: int = StateDBConfig.write_chunk_size
    durability: Durability | None = None
    # Bytes of replies a read asks for in one round trip (None: no bound, the read-ahead of 0.5).
    trip_bytes: int | None = cursors.TRIP_BYTES

    @classmethod
    def for_worker(cls, config: StateDBConfig, worker: str) -> StateOperations:
        return cls(config.keys.for_worker(worker, config.scope), config.safe_url,
                   config.load_chunk_size, config.write_chunk_size, config.durability)

    def ping(self) -> commands.Operation[bool]:
        return commands.ping()

    def check_server(self) -> commands.Operation[None]:
        return check_support(commands.check_zadd_lt(self.keys.revoked), self.durability)

    def add_revoked(self, task_ids: Iterable[object], revoked_at: float | None) -> commands.Operation[int]:
        when = time.time() if revoked_at is None else revoked_at
        return durable(commands.add_revoked(self.keys.revoked, task_ids, when, self.write_chunk_size),
                       self.durability)

    def add_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> commands.Operation[int]:
        return durable(commands.add_revoked_at(self.keys.revoked, stamped, self.write_chunk_size), self.durability)

    def remove_revoked(self, task_ids: Iterable[object]) -> commands.Operation[int]:
        return commands.remove_revoked(self.keys.revoked, task_ids, self.write_chunk_size)

    def count_revoked(self) -> commands.Operation[int]:
        return commands.count_revoked(self.keys.revoked)

    def revoked_pages(self, newer_than: float | None, limit: int | None, *, shared: bool = False,
                      bad: commands.BadMembers | None = None) -> cursors.PageCursor:
        key = self.keys.shared if shared else self.keys.revoked
        return cursors.PageCursor(key, newer_than=newer_than, limit=limit, chunk_size=self.load_chunk_size,
                                   bad=bad, trip_bytes=self.trip_bytes)

    def revoked_windows(self, now: float, newer_than: float, width: float, limit: int | None, *,
                        shared: bool = False, bad: commands.BadMembers | None = None,
                        above: bool = False) -> cursors.WindowCursor:
        """Boot's read of the newest ids by windows of revocation time, down to ``newer_than``
        (strictly above it if ``above``)."""
        key = self.keys.shared if shared else self.keys.revoked
        return cursors.WindowCursor(key, now=now, newer_than=newer_than, width=width, limit=limit,
                                     chunk_size=self.load_chunk_size, bad=bad, trip_bytes=self.trip_bytes,
                                     above=above)

    def read_clock(self) -> commands.Operation[int]:
        return commands.read_clock(self.keys.clock)

    def advance_clock(self, value: int) -> commands.Operation[commands.ClockAdvance]:
        return commands.advance_clock(self.keys.clock, value)

    def save_clock(self, value: int, info: commands.WorkerInfo | None = None
                   ) -> commands.Operation[commands.ClockSave]:
        """The clock's advance and, given ``info``, the worker's info hash (last seen) in the same round trip."""
        return commands.save_clock(self.keys.clock, value, self.keys.info or None, info)

    def count_within(self, horizon_start: float | None, *, shared: bool = False
                     ) -> commands.Operation[tuple[int, int]]:
        return stored_ids.count_within(self.keys.shared if shared else self.keys.revoked, horizon_start)

    def count_from(self, low: float | str, *, shared: bool = False) -> commands.Operation[int]:
        """Ids scored ``low`` or more (``"(x"``: more than x)."""
        return stored_ids.count_from(self.keys.shared if shared else self.keys.revoked, low)

    def stored_ranks(self, start: int, stop: int, *, shared: bool = False,
                     bad: commands.BadMembers | None = None) -> cursors.RankCursor:
        key = self.keys.shared if shared else self.keys.revoked
        return cursors.RankCursor(key, start=start, stop=stop, chunk_size=self.load_chunk_size, bad=bad,
                                   trip_bytes=self.trip_bytes)

    def revoked_scores(self, task_ids: Sequence[object]) -> commands.Operation[list[float | None]]:
        """The earliest score of each id in this worker's set or the fleet set."""
        keys = dict.fromkeys((self.keys.revoked, self.keys.shared))
        return stored_ids.revoked_scores(list(keys), task_ids)

    # -- stamped-header revokes (statedb.stamps) --------------------------------

    def add_stamps(self, stamps: Iterable[tuple[str, object]], revoked_at: float | None, *, shared: bool = False
                   ) -> commands.Operation[int]:
        from statedb import stamps as stamp_commands

        when = time.time() if revoked_at is None else revoked_at
        key = self.keys.shared_stamps if shared else self.keys.stamps
        return durable(stamp_commands.add_stamps(key, stamps, when, self.write_chunk_size), self.durability)

    def stamp_pages(self, newer_than: float | None, limit: int | None, *, shared: bool = False,
                    bad: commands.BadMembers | None = None) -> cursors.Cursor[tuple[str, object, float]]:
        from statedb import stamps as stamp_commands

        key = self.keys.shared_stamps if shared else self.keys.stamps
        return stamp_commands.StampPageCursor(key, newer_than=newer_than, limit=limit,
                                              chunk_size=self.load_chunk_size, bad=bad, trip_bytes=self.trip_bytes)

    def count_stamps(self, *, shared: bool = False) -> commands.Operation[int]:
        from statedb import stamps as stamp_commands

        return stamp_commands.count_stamps(self.keys.shared_stamps if shared else self.keys.stamps)

    # -- integrity checks (statedb.integrity) -----------------------------------

    def check_health(self, probes: Sequence[integrity.SetProbe], *, clock: bool = True, server_time: bool = True,
                     policy: bool = False, advance_to: int | None = None, info: commands.WorkerInfo | None = None
                     ) -> commands.Operation[integrity.Health]:
        """The timer's one round trip: the stored clock, the probed sets, TIME, the eviction policy, and
        (given ``advance_to``) the clock's advance with (given ``info``) the worker's info hash."""
        return integrity.check_health(self.keys.clock if clock else None, probes, server_time=server_time,
                                      policy=policy, advance_to=advance_to, info_key=self.keys.info or None,
                                      info=info)

    def add_fleet_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> commands.Operation[int]:
        """Like :meth:`add_revoked_at`, into the fleet set (ids a worker read there, written back)."""
        return durable(commands.add_revoked_at(self.keys.shared, stamped, self.write_chunk_size), self.durability)
