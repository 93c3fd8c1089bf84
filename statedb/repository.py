"""The async repository: one worker's revoked set and clock, on ``redis.asyncio``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError

from statedb import commands
from statedb.client import COMMAND_RETRIES, client_options, command_backoff
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError
from statedb.keys import WorkerKeys
from statedb.translate import translate_exception

T = TypeVar("T")


def open_async_client(config: StateDBConfig) -> aioredis.Redis:
    """A ``redis.asyncio`` client for ``config`` (the caller owns and closes it)."""
    try:
        return aioredis.from_url(
            config.url, retry=Retry(command_backoff(), COMMAND_RETRIES), **client_options(config)
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Redis URL {config.safe_url} is not usable: {exc}") from None


class AsyncStateRepository:
    """Reads and writes one worker's state; every redis error leaves as a StateDBError."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: WorkerKeys,
        *,
        target: str,
        load_chunk_size: int = 10_000,
        write_chunk_size: int = 5_000,
        owns_client: bool = False,
    ) -> None:
        self.client, self.keys, self.target = client, keys, target
        self.load_chunk_size, self.write_chunk_size = load_chunk_size, write_chunk_size
        self._owns_client = owns_client

    @classmethod
    def open(cls, config: StateDBConfig, worker: str) -> AsyncStateRepository:
        """A repository with a client of its own, closed by :meth:`aclose`."""
        keys = config.keys.for_worker(worker, config.scope)
        return cls(
            open_async_client(config), keys, target=config.safe_url,
            load_chunk_size=config.load_chunk_size, write_chunk_size=config.write_chunk_size,
            owns_client=True,
        )

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
        try:
            pipe = self.client.pipeline(transaction=False)
            operation.stage(pipe)
            replies: Sequence[Any] = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise translate_exception(exc, target=self.target) from exc
        return operation.result(replies)

    async def ping(self) -> bool:
        return await self._run(commands.ping())

    async def add_revoked(self, task_ids: Iterable[object], *, revoked_at: float | None = None) -> int:
        """Store ids (one round trip for any number); returns how many were new."""
        when = time.time() if revoked_at is None else revoked_at
        op = commands.add_revoked(self.keys.revoked, task_ids, when, self.write_chunk_size)
        return await self._run(op)

    async def add_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> int:
        return await self._run(commands.add_revoked_at(self.keys.revoked, stamped, self.write_chunk_size))

    async def remove_revoked(self, task_ids: Iterable[object]) -> int:
        return await self._run(commands.remove_revoked(self.keys.revoked, task_ids, self.write_chunk_size))

    async def count_revoked(self) -> int:
        return await self._run(commands.count_revoked(self.keys.revoked))

    async def iter_revoked(
        self, *, newer_than: float | None = None, limit: int | None = None
    ) -> AsyncIterator[tuple[str, float]]:
        """(task id, revocation time) pairs, newest first, streamed in chunks."""
        cursor = commands.PageCursor(
            self.keys.revoked, newer_than=newer_than, limit=limit, chunk_size=self.load_chunk_size
        )
        while (operation := cursor.next_operation()) is not None:
            for row in cursor.feed(await self._run(operation)):
                yield row

    async def read_clock(self) -> int:
        return await self._run(commands.read_clock(self.keys.clock))

    async def advance_clock(self, value: int) -> commands.ClockAdvance:
        """Store ``value`` unless the stored clock is ahead; returns the stored clock."""
        return await self._run(commands.advance_clock(self.keys.clock, value))
