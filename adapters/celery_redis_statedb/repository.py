"""The synchronous twin of :class:`statedb.AsyncStateRepository` on the sync redis client.

Workers use this one: no event loop and no thread of ours inside a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisError
from redis.retry import Retry

from statedb import commands
from statedb.client import COMMAND_RETRIES, client_options, command_backoff
from statedb.config import StateDBConfig
from statedb.errors import ConfigurationError
from statedb.keys import WorkerKeys
from statedb.translate import translate_exception

T = TypeVar("T")


class ConnectionCounter:
    """Counts connections made, so a reconnect (a Redis that restarted, maybe empty) is noticed."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, connection: Any) -> None:
        connection.on_connect()
        self.count += 1


def open_sync_client(config: StateDBConfig, *, on_connect: Callable[[Any], None] | None = None) -> redis.Redis:
    extra: dict[str, Any] = {} if on_connect is None else {"redis_connect_func": on_connect}
    try:
        return redis.Redis.from_url(
            config.url, retry=Retry(command_backoff(), COMMAND_RETRIES), **client_options(config), **extra
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Redis URL {config.safe_url} is not usable: {exc}") from None


class SyncStateRepository:
    """Reads and writes one worker's state; every redis error leaves as a StateDBError."""

    def __init__(
        self,
        client: redis.Redis,
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
    def open(
        cls, config: StateDBConfig, worker: str, *, on_connect: Callable[[Any], None] | None = None
    ) -> SyncStateRepository:
        keys = config.keys.for_worker(worker, config.scope)
        return cls(
            open_sync_client(config, on_connect=on_connect), keys, target=config.safe_url,
            load_chunk_size=config.load_chunk_size, write_chunk_size=config.write_chunk_size,
            owns_client=True,
        )

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def _run(self, operation: commands.Operation[T]) -> T:
        try:
            pipe = self.client.pipeline(transaction=False)
            operation.stage(pipe)
            replies: Sequence[Any] = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise translate_exception(exc, target=self.target) from exc
        return operation.result(replies)

    def ping(self) -> bool:
        return self._run(commands.ping())

    def add_revoked(self, task_ids: Iterable[object], *, revoked_at: float | None = None) -> int:
        when = time.time() if revoked_at is None else revoked_at
        return self._run(commands.add_revoked(self.keys.revoked, task_ids, when, self.write_chunk_size))

    def add_revoked_at(self, stamped: Sequence[tuple[object, float]]) -> int:
        return self._run(commands.add_revoked_at(self.keys.revoked, stamped, self.write_chunk_size))

    def remove_revoked(self, task_ids: Iterable[object]) -> int:
        return self._run(commands.remove_revoked(self.keys.revoked, task_ids, self.write_chunk_size))

    def count_revoked(self) -> int:
        return self._run(commands.count_revoked(self.keys.revoked))

    def iter_revoked(
        self, *, newer_than: float | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, float]]:
        cursor = commands.PageCursor(
            self.keys.revoked, newer_than=newer_than, limit=limit, chunk_size=self.load_chunk_size
        )
        while (operation := cursor.next_operation()) is not None:
            yield from cursor.feed(self._run(operation))

    def read_clock(self) -> int:
        return self._run(commands.read_clock(self.keys.clock))

    def advance_clock(self, value: int) -> commands.ClockAdvance:
        return self._run(commands.advance_clock(self.keys.clock, value))
