"""Pytest plugin: run Celery's own LimitedSet, state and control tests on the write-through set.

Used by .ci/run against the ``t/unit`` tests of the installed Celery's sdist: every
LimitedSet those tests build is the write-through subclass with a recorder
attached and empty stored revokes beyond it (so membership and eviction go through the
library's overrides), and ``state.revoked`` is attached as a worker attaches it. The suites
must pass unchanged: the write-through set keeps all of Celery's behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.utils import collections

from celery_redis_statedb.revoked_set import WriteThroughLimitedSet, attach


class ListRecorder:
    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def record(self, task_ids: Sequence[object]) -> None:
        self.batches.append(list(task_ids))


class EmptyStoredRevokes:
    """Stored revokes beyond the set that hold nothing: membership and eviction go through them."""

    def __init__(self) -> None:
        self.evictions: list[object] = []

    def binds(self, task_id: object) -> bool:
        return False

    def evicted(self, task_id: object) -> None:
        self.evictions.append(task_id)

    def evicted_many(self, task_ids: Sequence[object]) -> None:
        self.evictions.extend(task_ids)


class RecordingLimitedSet(WriteThroughLimitedSet):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_statedb_recorder"] = ListRecorder()
        self.__dict__["_statedb_stored"] = EmptyStoredRevokes()
        super().__init__(*args, **kwargs)


def pytest_configure(config: Any) -> None:
    from celery.worker import state

    collections.LimitedSet = RecordingLimitedSet  # before the test modules import it
    attach(state.revoked, ListRecorder(), stored=EmptyStoredRevokes())
