"""The key schema: which Redis key holds what.

``<prefix><worker>:revoked`` is a sorted set (member = task id, score = wall-clock
time of the first revocation), ``<prefix><worker>:clock`` a string holding the
worker's logical clock. The fleet-wide set of the shared scope does not end in
``:revoked`` or ``:clock``, so no worker name can ever produce its key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from statedb.names import check_name

DEFAULT_KEY_PREFIX = "celery:worker:state:"
REVOKED_SUFFIX = ":revoked"
CLOCK_SUFFIX = ":clock"
SHARED_REVOKED_NAME = "shared:fleet-revoked"


class Scope(str, Enum):
    """Whose revoked set a worker reads and writes."""

    WORKER = "worker"
    SHARED = "shared"


@dataclass(frozen=True)
class WorkerKeys:
    """The two keys one worker uses."""

    worker: str
    revoked: str
    clock: str


@dataclass(frozen=True)
class KeySchema:
    """Builds keys under one prefix."""

    prefix: str = DEFAULT_KEY_PREFIX

    def __post_init__(self) -> None:
        check_name(self.prefix, "key prefix")

    def revoked_key(self, worker: str) -> str:
        return f"{self.prefix}{check_name(worker, 'worker name')}{REVOKED_SUFFIX}"

    def clock_key(self, worker: str) -> str:
        return f"{self.prefix}{check_name(worker, 'worker name')}{CLOCK_SUFFIX}"

    @property
    def shared_revoked_key(self) -> str:
        return f"{self.prefix}{SHARED_REVOKED_NAME}"

    def for_worker(self, worker: str, scope: Scope = Scope.WORKER) -> WorkerKeys:
        revoked = self.shared_revoked_key if scope is Scope.SHARED else self.revoked_key(worker)
        return WorkerKeys(worker=worker, revoked=revoked, clock=self.clock_key(worker))
