"""The synchronous twin of :class:`statedb.AsyncStateRepository` on the sync redis client.

Workers use this one: no event loop and no thread of ours inside a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisError
from redis.retry import Retry

from statedb import commands, integrity
from statedb.client import COMMAND_RETRIES, client_options, command_backoff
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError
from statedb.keys import WorkerKeys
from statedb.operations import StateOperations
from statedb.translate import translate_exception

T = TypeVar("T")


class ConnectionCounter:
    """Counts connections made, so a reconnect (a Redis that restarted, maybe empty) is noticed."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, connection: Any) -> None:
        connection.on_connect()
        self.count += 1


class FirstConnectFree:
    """``on_connect`` of a client opened after boot: its first connection is expected, later ones
    (reconnects: Redis may have restarted) are counted on ``counter``."""

    def __init__(self, counter: ConnectionCounter) -> None:
        self.counter, self.connects = counter, 0

    def __call__(self, connection: Any) -> None:
        connection.on_connect()
        self.connects += 1
        if self.connects > 1:
            self.counter.count += 1


def open_sync_client(
    config: StateDBConfig, *, on_connect: Callable[[Any], None] | None = None, retries: int = COMMAND_RETRIES,
    retry_timeouts: bool = True,
) -> redis.Redis:
    """``retry_timeouts=False``: a timeout is final (a dead pooled connection is still retried)."""
    extra: dict[str, Any] = {} if on_connect is None else {"redis_connect_func": on_connect}
    retry = (Retry(command_backoff(), retries) if retry_timeouts
             else Retry(command_backoff(), retries, supported_errors=(redis.exceptions.ConnectionError,)))
    try:
        return redis.Redis.from_url(config.url, retry=retry, **client_options(config), **extra)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Redis URL {config.safe_url} is not usable: {exc}") from None


class SyncStateRepository:
    """Reads and writes one worker's state; every redis error leaves as a StateDBError."""

    def __init__(self, client: redis.Redis, operations: StateOperations, *, owns_client: bool = False,
                 bad: commands.BadMembers | None = None) -> None:
        self.client, self.operations, self._owns_client = client, operations, owns_client
        # Given ``bad``, reads skip members that cannot be ids into it; else they raise CorruptValueError.
        self.bad = bad

    @classmethod
    def open(
        cls, config: StateDBConfig, worker: str, *, on_connect: Callable[[Any], None] | None = None,
        retries: int = COMMAND_RETRIES, retry_timeouts: bool = True, bad: commands.BadMembers | None = None,
    ) -> SyncStateRepository:
        client = open_sync_client(config, on_connect=on_connect, retries=retries, retry_timeouts=retry_timeouts)
        return cls(client, StateOperations.for_worker(config, worker), owns_client=True, bad=bad)

    @property
    def keys(self) -> WorkerKeys:
        return self.operations.keys

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def _run(self, operation: commands.Operation[T]) -> T:
        try:
            pipe = self.client.pipeline(transaction=False)
            operation.stage(pipe)
            replies: Sequence[Any] = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise translate_exception(exc, target=self.operations.target) from exc
        return operation.result(replies)

    def ping(self) -> bool:
        return self._run(self.operations.ping())

    def check_server(self) -> None:
        """Raise ConfigurationError if the server lacks a command this library needs."""
        self._run(self.operations.check_server())

    def add_revoked(self, task_ids: Iterable[object], *, revoked_at: float | None = None) -> int:
        return self._run(self.operations.add_revoked(task_ids, revoked_at))

    def add_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> int:
        return self._run(self.operations.add_revoked_at(stamped))

    def remove_revoked(self, task_ids: Iterable[object]) -> int:
        return self._run(self.operations.remove_revoked(task_ids))

    def count_revoked(self) -> int:
        return self._run(self.operations.count_revoked())

    def iter_revoked(self, *, newer_than: float | None = None, limit: int | None = None,
                     shared: bool = False) -> Iterator[tuple[str, float]]:
        yield from self._walk(self.operations.revoked_pages(newer_than, limit, shared=shared, bad=self.bad))

    def iter_revoked_windows(self, *, now: float, newer_than: float, width: float, limit: int | None = None,
                             shared: bool = False, ranks: list[int] | None = None
                             ) -> Iterator[tuple[float, list[str]]]:
        """(wall-clock stamp, ids newest first) pages, newest first: see commands.WindowCursor.

        Given ``ranks``, its one item is set, once the walk is over, to how many of the set's ranks
        (newest first) the pages cover, bad members skipped in them included."""
        cursor = self.operations.revoked_windows(now, newer_than, width, limit, shared=shared, bad=self.bad)
        yield from self._walk(cursor)
        if ranks is not None:
            ranks[:] = [cursor.ranks]

    def _walk(self, cursor: commands.Cursor[T]) -> Iterator[T]:
        while (operation := cursor.next_operation()) is not None:
            yield from cursor.feed(self._run(operation))

    def read_clock(self) -> int:
        return self._run(self.operations.read_clock())

    def advance_clock(self, value: int) -> commands.ClockAdvance:
        return self._run(self.operations.advance_clock(value))

    def count_within(self, horizon_start: float | None, *, shared: bool = False) -> tuple[int, int]:
        """(ids in the set, ids revoked before ``horizon_start``)."""
        return self._run(self.operations.count_within(horizon_start, shared=shared))

    def iter_stored_ids(self, start: int, stop: int, *, shared: bool = False) -> Iterator[list[bytes]]:
        """Pages of stored ids (bytes) of ranks ``start`` to ``stop - 1``, newest first."""
        yield from self._walk(self.operations.stored_ranks(start, stop, shared=shared, bad=self.bad))

    def revoked_scores(self, task_ids: Sequence[object]) -> list[float | None]:
        """The earliest revocation time of each id in this worker's set or the fleet set (None: in neither)."""
        return self._run(self.operations.revoked_scores(task_ids))

    # -- stamped-header revokes (statedb.stamps) --------------------------------

    def add_stamps(self, stamps: Iterable[tuple[str, object]], *, revoked_at: float | None = None,
                   shared: bool = False) -> int:
        """Store (header, value) pairs in this worker's stamps key (the fleet's if shared); how many were new."""
        return self._run(self.operations.add_stamps(stamps, revoked_at, shared=shared))

    def iter_stamps(self, *, newer_than: float | None = None, limit: int | None = None,
                    shared: bool = False) -> Iterator[tuple[str, object, float]]:
        """(header, value, revocation time), newest first (of the fleet stamps key if shared)."""
        yield from self._walk(self.operations.stamp_pages(newer_than, limit, shared=shared, bad=self.bad))

    def count_stamps(self, *, shared: bool = False) -> int:
        return self._run(self.operations.count_stamps(shared=shared))

    # -- integrity checks (statedb.integrity) -----------------------------------

    def check_health(self, probes: Sequence[integrity.SetProbe], *, clock: bool = True, server_time: bool = True,
                     policy: bool = False, advance_to: int | None = None) -> integrity.Health:
        """The stored clock, the probed sets, TIME and (if asked) the eviction policy, in one round trip."""
        return self._run(self.operations.check_health(probes, clock=clock, server_time=server_time, policy=policy,
                                                      advance_to=advance_to))

    def add_fleet_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> int:
        """Store ids with a revocation time each in the fleet set (earliest wins)."""
        return self._run(self.operations.add_fleet_revoked_at(stamped))
