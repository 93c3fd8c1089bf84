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
# celery-redis-statedb 0.2 kept a zlib+pickle blob at <prefix><worker>:zrevoked; only an explicit migration reads it.
LEGACY_BLOB_SUFFIX = ":zrevoked"


class Scope(str, Enum):
    """Whose revoked set a worker reads and writes."""

    WORKER = "worker"
    SHARED = "shared"


@dataclass(frozen=True)
class WorkerKeys:
    """The keys one worker uses: its revoked set (or the fleet's), its clock, and the fleet's set."""

    worker: str
    revoked: str
    clock: str
    shared: str


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis MATCH pattern (worker names are data, never patterns)."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


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
        shared = self.shared_revoked_key
        revoked = shared if scope is Scope.SHARED else self.revoked_key(worker)
        return WorkerKeys(worker=worker, revoked=revoked, clock=self.clock_key(worker), shared=shared)

    @property
    def match_all(self) -> str:
        """A SCAN MATCH pattern for every key under the prefix (the prefix taken literally)."""
        return glob_escape(self.prefix) + "*"

    def parse(self, key: str) -> tuple[str, str] | None:
        """(worker, 'revoked' or 'clock') for a worker key of this prefix; None for anything else."""
        if not key.startswith(self.prefix) or key == self.shared_revoked_key:
            return None
        rest = key[len(self.prefix):]
        for suffix, kind in ((REVOKED_SUFFIX, "revoked"), (CLOCK_SUFFIX, "clock")):
            if rest.endswith(suffix) and len(rest) > len(suffix):
                return rest[: -len(suffix)], kind
        return None
