"""``WorkerStatePersistence`` objects for the tests that drive one in-process, without a worker."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import WorkerStatePersistence
from statedb import StateDBConfig


def celery_revoked() -> LimitedSet:
    """A revoked set as Celery makes it by default (50 000 ids, 3 hours)."""
    return LimitedSet(maxlen=50_000, expires=10_800)


class Persistences:
    """Makes persistences for one test, under its key prefix; on exit saves each, as a worker does at shutdown.

    Per module: the default URL (None: every call names one), hostname, in-memory revoked set and
    whether a new persistence gets a Lamport clock (else ``clock=None``, as without one).
    """

    def __init__(self, key_prefix: str, url: str | None = None, *, hostname: str = "w@host",
                 revoked: Callable[[], LimitedSet] = celery_revoked, clock: bool = True) -> None:
        self.key_prefix, self.url, self.hostname = key_prefix, url, hostname
        self.new_revoked, self.with_clock = revoked, clock
        self.made: list[WorkerStatePersistence] = []

    def __call__(self, url: str | None = None, *, hostname: str | None = None, revoked: LimitedSet | None = None,
                 clock: Any = None, **settings: Any) -> WorkerStatePersistence:
        """A persistence (not booted); ``settings`` are more StateDBConfig fields."""
        url = url or self.url
        if url is None:
            raise TypeError("give the URL: this module's persistences have no default one")
        if clock is None and self.with_clock:
            clock = LamportClock()
        config = StateDBConfig(url=url, key_prefix=self.key_prefix, **settings)
        persistence = WorkerStatePersistence(config, hostname or self.hostname, clock=clock,
                                             revoked=revoked if revoked is not None else self.new_revoked())
        self.made.append(persistence)
        return persistence

    def __enter__(self) -> Persistences:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for persistence in self.made:
            persistence.save()
