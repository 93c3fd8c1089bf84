"""Writes that count only once replicated (``WAIT``) or on disk (``WAITAOF``).

``redis_state_min_replicas`` and ``redis_state_fsync``: the write's commands are followed, in
the same pipeline and so on the same connection, by ``WAIT n timeout`` (``WAITAOF 1 n timeout``
with fsync), which waits for that connection's writes. Fewer acknowledgements than required
raise :class:`~statedb.errors.NotDurableError` (a RedisUnavailableError): the write was
applied on the primary but does not count, and the caller keeps its ids pending and retries.
Without it a primary that dies, or is demoted by a Sentinel failover, before its replica
copied a write loses it although Redis acknowledged it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from statedb.commands import Operation, PipelineLike
from statedb.errors import ConfigurationError, NotDurableError, StateDBError
from statedb.translate import translate_reply_error

T = TypeVar("T")


@dataclass(frozen=True)
class Durability:
    """How many replicas must have a write, within ``timeout_ms``, and whether it must be fsynced."""

    replicas: int = 0
    timeout_ms: int = 100
    fsync: bool = False

    @classmethod
    def of(cls, replicas: int, timeout: float, fsync: bool) -> Durability | None:
        """From the settings (``timeout`` in seconds); None when nothing is required."""
        if replicas == 0 and not fsync:
            return None
        return cls(replicas, max(1, math.ceil(timeout * 1000)), fsync)

    def stage(self, pipe: PipelineLike) -> None:
        if self.fsync:
            pipe.execute_command("WAITAOF", 1, self.replicas, self.timeout_ms)
        else:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)

    def check(self, reply: Any) -> None:
        """Raise NotDurableError unless ``reply`` (to WAIT or WAITAOF) has every acknowledgement required."""
        if self.fsync:
            local, replicas = (int(n) for n in reply)
            if local < 1:
                raise NotDurableError(f"the write was not fsynced to the primary's AOF within {self.timeout_ms} ms "
                                      "(redis_state_fsync): it does not count and is retried")
        else:
            replicas = int(reply)
        if replicas < self.replicas:
            done = "fsynced" if self.fsync else "acknowledged"
            raise NotDurableError(
                f"only {replicas} of {self.replicas} replica{'s' if self.replicas != 1 else ''} {done} the write "
                f"within {self.timeout_ms} ms (redis_state_min_replicas): it does not count and is retried")


def _wait_error(exc: Exception, durability: Durability) -> StateDBError:
    """The library error for an error reply to WAIT/WAITAOF."""
    text = str(exc)
    if durability.fsync and "unknown command" in text.lower():
        return ConfigurationError(f"redis_state_fsync needs WAITAOF (Redis >= 7.2, or Valkey), which this server "
                                  f"lacks: {text}")
    if durability.fsync and "appendonly" in text.lower():
        return ConfigurationError(f"redis_state_fsync needs the server's append-only file (appendonly yes): {text}")
    return translate_reply_error(exc, key=None)


@dataclass(frozen=True)
class _Waited(Operation[T]):
    """An operation whose last reply is WAIT's: its error is named for what was asked."""

    durability: Durability = Durability()

    def result(self, replies: Sequence[Any]) -> T:
        acks = replies[-1]
        if isinstance(acks, Exception) and not any(isinstance(reply, Exception) for reply in replies[:-1]):
            raise _wait_error(acks, self.durability) from acks
        return super().result(replies)


def durable(operation: Operation[T], durability: Durability | None) -> Operation[T]:
    """``operation`` followed by WAIT (WAITAOF with fsync); its result only if enough acknowledged it."""
    if durability is None or not operation.keys:  # nothing written: nothing to wait for
        return operation

    def stage(pipe: PipelineLike) -> None:
        operation.stage(pipe)
        durability.stage(pipe)

    def parse(replies: Sequence[Any]) -> T:
        durability.check(replies[-1])
        return operation.parse(replies[:-1])

    return _Waited((*operation.keys, None), stage, parse, durability)


def check_support(operation: Operation[T], durability: Durability | None) -> Operation[T]:
    """``operation`` followed, when fsync is asked for, by ``WAITAOF 1 0 1``: a ConfigurationError
    if the server has no WAITAOF or no AOF. Nothing to check for replicas: a write they miss says so."""
    if durability is None or not durability.fsync:
        return operation
    probe = Durability(0, 1, fsync=True)

    def stage(pipe: PipelineLike) -> None:
        operation.stage(pipe)
        probe.stage(pipe)

    return _Waited((*operation.keys, None), stage, lambda replies: operation.parse(replies[:-1]), probe)
