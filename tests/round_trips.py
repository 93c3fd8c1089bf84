"""Counting round trips to Redis: what a test claims takes one must fail when it takes two."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio.connection
import redis.connection


@contextlib.contextmanager
def round_trips() -> Iterator[list[bytes]]:
    """What the redis clients of this process (sync and async) send meanwhile: one item a round trip.

    redis-py writes a command, or a whole pipeline, with one ``send_packed_command`` and only then
    reads the replies. A connection's handshake is sent the same way: connect before counting.
    """
    sent: list[bytes] = []
    sync_send: Callable[..., None] = redis.connection.AbstractConnection.send_packed_command
    async_send: Callable[..., Awaitable[None]] = redis.asyncio.connection.AbstractConnection.send_packed_command

    def first_bytes(command: Any) -> bytes:  # of the first command: enough to tell the trips apart
        head = command[0] if isinstance(command, list) else command
        return (head.encode() if isinstance(head, str) else bytes(head))[:40]

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(first_bytes(command))
        sync_send(self, command, check_health)

    async def counted_async(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(first_bytes(command))
        await async_send(self, command, check_health)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
        patch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counted_async)
        yield sent
