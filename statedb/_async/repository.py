"""One worker's revoked set, clock and stamps, read and written through the command layer.

Every redis-py error leaves as a :class:`~statedb.errors.StateDBError`. A client passed
in is never closed here; one opened by :meth:`AsyncStateRepository.open` is closed by
``aclose`` (or the ``async with`` block).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from statedb import cluster, commands, cursors, integrity
from statedb._async.clients import (
    Client,
    DeferredCluster,
    OnConnect,
    cluster_ready,
    find_primary_again,
    is_cluster_client,
    open_async_client,
)
from statedb.client import COMMAND_RETRIES
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError, NotDurableError
from statedb.keys import WorkerKeys
from statedb.operations import StateOperations
from statedb.translate import REDIS_FAILURES, translate_exception

T = TypeVar("T")


async def run_staged(client: Client, stage: Callable[[Any], None], target: str) -> list[Any]:
    """Stage commands on a non-transactional pipeline of ``client`` and execute it: one round trip
    (a node). Error replies come back in place; a failure to execute leaves as a StateDBError naming
    ``target``. On a cluster, staged through :class:`statedb.cluster.ClusterStaging`."""
    pipe: Any
    try:
        if isinstance(client, (RedisCluster, DeferredCluster)):
            built: Any = await cluster_ready(client)
            pipe = built.pipeline(transaction=False)
            stage(cluster.ClusterStaging(pipe, built))
        else:
            pipe = client.pipeline(transaction=False)
            stage(pipe)
        return list(await pipe.execute(raise_on_error=False))
    except REDIS_FAILURES as exc:
        raise translate_exception(exc, target=target) from exc


async def check_topology(client: Client, target: str, then: commands.Operation[T] | None = None) -> T | None:
    """ConfigurationError if a plain client was pointed at a Redis Cluster node: it would see that
    node's keys only (and be refused the others). Passes when the server refuses INFO.

    ``then`` runs in the same round trip; its result is returned, its error replies raised only once
    the topology passed (a cluster node answers it with a redirection, which would hide the cause)."""
    topology = None if is_cluster_client(client) else cluster.cluster_enabled()

    def stage(pipe: Any) -> None:
        for operation in (topology, then):
            if operation is not None:
                operation.stage(pipe)

    if topology is None and then is None:
        return None
    replies = await run_staged(client, stage, target)
    if topology is not None:
        if topology.result(replies[:1]):
            raise ConfigurationError(cluster.standalone_on_cluster_message(target))
        replies = replies[1:]
    return None if then is None else then.result(replies)


class AsyncStateRepository:
    """Reads and writes one worker's state; every redis error leaves as a StateDBError."""

    def __init__(self, client: Client, operations: StateOperations, *, owns_client: bool = False,
                 bad: commands.BadMembers | None = None) -> None:
        self.client, self.operations, self._owns_client = client, operations, owns_client
        # Given ``bad``, reads skip members that cannot be ids into it; else they raise CorruptValueError.
        self.bad = bad

    @classmethod
    def open(
        cls, config: StateDBConfig, worker: str, *, on_connect: OnConnect | None = None,
        retries: int = COMMAND_RETRIES, retry_timeouts: bool = True, bad: commands.BadMembers | None = None,
    ) -> AsyncStateRepository:
        """A repository on a client of its own (see :func:`open_async_client` for the options)."""
        client = open_async_client(config, on_connect=on_connect, retries=retries, retry_timeouts=retry_timeouts)
        return cls(client, StateOperations.for_worker(config, worker), owns_client=True, bad=bad)

    @property
    def keys(self) -> WorkerKeys:
        return self.operations.keys

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncStateRepository:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self, operation: commands.Operation[T]) -> T:
        replies = await run_staged(self.client, operation.stage, self.operations.target)
        try:
            return operation.result(replies)
        except NotDurableError:
            try:
                await find_primary_again(self.client)
            except REDIS_FAILURES as exc:
                raise translate_exception(exc, target=self.operations.target) from exc
            raise

    async def run(self, operation: commands.Operation[T]) -> T:
        """Execute any operation of the command layer (the admin APIs and migrations go through here)."""
        return await self._run(operation)

    async def _walk(self, cursor: cursors.Cursor[T]) -> AsyncIterator[T]:
        while (operation := cursor.next_operation()) is not None:
            for row in cursor.feed(await self._run(operation)):
                yield row

    async def iter_cursor(self, cursor: cursors.Cursor[T]) -> AsyncIterator[T]:
        """What a read in several round trips (a :class:`~statedb.cursors.Cursor`) yields."""
        async for row in self._walk(cursor):
            yield row

    async def ping(self) -> bool:
        return await self._run(self.operations.ping())

    async def check_server(self) -> None:
        """Raise ConfigurationError if the server lacks a command this library needs, or is a
        Redis Cluster node reached through a plain (not ``redis+cluster://``) URL."""
        await check_topology(self.client, self.operations.target, then=self.operations.check_server())

    async def add_revoked(self, task_ids: Iterable[object], *, revoked_at: float | None = None) -> int:
        """Store ids (one round trip for any number); returns how many were new."""
        return await self._run(self.operations.add_revoked(task_ids, revoked_at))

    async def add_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> int:
        """Store ids with a revocation time each; an id already stored keeps the earliest."""
        return await self._run(self.operations.add_revoked_at(stamped))

    async def remove_revoked(self, task_ids: Iterable[object]) -> int:
        return await self._run(self.operations.remove_revoked(task_ids))

    async def count_revoked(self) -> int:
        return await self._run(self.operations.count_revoked())

    async def iter_revoked(
        self, *, newer_than: float | None = None, limit: int | None = None, shared: bool = False
    ) -> AsyncIterator[tuple[str, float]]:
        """(task id, revocation time) pairs, newest first, streamed in chunks (of the fleet set if shared)."""
        async for row in self._walk(self.operations.revoked_pages(newer_than, limit, shared=shared, bad=self.bad)):
            yield row

    async def iter_revoked_windows(
        self, cursor: cursors.WindowCursor
    ) -> AsyncIterator[tuple[float, list[str]]]:
        """(wall-clock stamp, ids newest first) pages of ``cursor`` (from
        ``operations.revoked_windows``), newest first; once the walk is over, ``cursor.ranks``
        says how many of the set's ranks the pages cover."""
        async for page in self._walk(cursor):
            yield page

    async def read_clock(self) -> int:
        return await self._run(self.operations.read_clock())

    async def advance_clock(self, value: int) -> commands.ClockAdvance:
        """Store ``value`` unless the stored clock is ahead; never moves it back."""
        return await self._run(self.operations.advance_clock(value))

    async def save_clock(self, value: int, info: commands.WorkerInfo | None = None) -> commands.ClockSave:
        """:meth:`advance_clock` and, given ``info``, the worker's info hash (last seen), in one round trip;
        a refused HSET comes back in ``info_error``, never raised."""
        return await self._run(self.operations.save_clock(value, info))

    async def count_within(self, horizon_start: float | None, *, shared: bool = False) -> tuple[int, int]:
        """(ids in the set, ids revoked before ``horizon_start``)."""
        return await self._run(self.operations.count_within(horizon_start, shared=shared))

    async def iter_stored_ids(self, start: int, stop: int, *, shared: bool = False) -> AsyncIterator[list[bytes]]:
        """Pages of stored ids (bytes) of ranks ``start`` to ``stop - 1``, newest first."""
        async for page in self._walk(self.operations.stored_ranks(start, stop, shared=shared, bad=self.bad)):
            yield page

    async def revoked_scores(self, task_ids: Sequence[object]) -> list[float | None]:
        """The earliest revocation time of each id in this worker's set or the fleet set (None: in neither)."""
        return await self._run(self.operations.revoked_scores(task_ids))

    # -- stamped-header revokes (statedb.stamps) --------------------------------

    async def add_stamps(self, stamps: Iterable[tuple[str, object]], *, revoked_at: float | None = None,
                         shared: bool = False) -> int:
        """Store (header, value) pairs in this worker's stamps key (the fleet's if shared); how many were new."""
        return await self._run(self.operations.add_stamps(stamps, revoked_at, shared=shared))

    async def iter_stamps(
        self, *, newer_than: float | None = None, limit: int | None = None, shared: bool = False
    ) -> AsyncIterator[tuple[str, object, float]]:
        """(header, value, revocation time), newest first (of the fleet stamps key if shared)."""
        async for row in self._walk(self.operations.stamp_pages(newer_than, limit, shared=shared, bad=self.bad)):
            yield row

    async def count_stamps(self, *, shared: bool = False) -> int:
        return await self._run(self.operations.count_stamps(shared=shared))

    # -- integrity checks (statedb.integrity) -----------------------------------

    async def check_health(self, probes: Sequence[integrity.SetProbe], *, clock: bool = True,
                           server_time: bool = True, policy: bool = False, advance_to: int | None = None,
                           info: commands.WorkerInfo | None = None) -> integrity.Health:
        """The stored clock, the probed sets, TIME and (if asked) the eviction policy, in one round trip;
        given ``advance_to`` the clock's advance rides along, and the info hash with it given ``info``."""
        return await self._run(self.operations.check_health(probes, clock=clock, server_time=server_time,
                                                            policy=policy, advance_to=advance_to, info=info))

    async def add_fleet_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> int:
        """Store ids with a revocation time each in the fleet set (earliest wins)."""
        return await self._run(self.operations.add_fleet_revoked_at(stamped))
