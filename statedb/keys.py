"""The key schema: which Redis key holds what.

``<prefix><worker>:revoked`` is a sorted set (member = task id, score = wall-clock
time of the first revocation), ``<prefix><worker>:clock`` a string holding the
worker's logical clock, ``<prefix><worker>:stamps`` a sorted set of stamped-header
revokes (member = the JSON text ``["header", "value"]``, score as above), and
``<prefix><worker>:info`` a hash written with each clock save (``last_seen``: the
server-clock time of the save, ``scope``, ``version``). The fleet-wide sets do not end
in ``:revoked``, ``:clock``, ``:stamps`` or ``:info``, so no worker name can ever
produce their keys; nor can it produce the fleet set's snapshot
(``<prefix>shared:fleet-revoked:snapshot``, a string: see :mod:`statedb.snapshot`) and
its build lock (``...:snapshot-lock``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from statedb.names import check_name

DEFAULT_KEY_PREFIX = "celery:worker:state:"
REVOKED_SUFFIX = ":revoked"
CLOCK_SUFFIX = ":clock"
STAMPS_SUFFIX = ":stamps"
INFO_SUFFIX = ":info"
SHARED_REVOKED_NAME = "shared:fleet-revoked"
SHARED_STAMPS_NAME = "shared:fleet-stamps"
SNAPSHOT_SUFFIX = ":snapshot"  # appended to the fleet set's key
SNAPSHOT_LOCK_SUFFIX = ":snapshot-lock"
# celery-redis-statedb 0.2 kept a zlib+pickle blob at <prefix><worker>:zrevoked; only an explicit migration reads it.
LEGACY_BLOB_SUFFIX = ":zrevoked"


class Scope(str, Enum):
    """Whose revoked set a worker reads and writes."""

    WORKER = "worker"
    SHARED = "shared"


@dataclass(frozen=True)
class WorkerKeys:
    """The keys one worker uses: its revoked set (or the fleet's), its clock, the fleet's set,
    and the same pair for stamped-header revokes."""

    worker: str
    revoked: str
    clock: str
    shared: str
    stamps: str = ""
    shared_stamps: str = ""
    info: str = ""


RedisKey = str | bytes  # a key built here (text) or found by SCAN (the bytes Redis holds, used as they are)


def key_text(key: RedisKey) -> str:
    """A key as text for results and messages: bytes that are not UTF-8 are shown as ``\\xNN`` escapes."""
    return key if isinstance(key, str) else key.decode("utf-8", "backslashreplace")


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

    def stamps_key(self, worker: str) -> str:
        return f"{self.prefix}{check_name(worker, 'worker name')}{STAMPS_SUFFIX}"

    def info_key(self, worker: str) -> str:
        return f"{self.prefix}{check_name(worker, 'worker name')}{INFO_SUFFIX}"

    @property
    def shared_revoked_key(self) -> str:
        return f"{self.prefix}{SHARED_REVOKED_NAME}"

    @property
    def shared_stamps_key(self) -> str:
        return f"{self.prefix}{SHARED_STAMPS_NAME}"

    @property
    def shared_snapshot_key(self) -> str:
        return self.shared_revoked_key + SNAPSHOT_SUFFIX

    @property
    def shared_snapshot_lock_key(self) -> str:
        return self.shared_revoked_key + SNAPSHOT_LOCK_SUFFIX

    def for_worker(self, worker: str, scope: Scope = Scope.WORKER) -> WorkerKeys:
        shared, shared_stamps = self.shared_revoked_key, self.shared_stamps_key
        own = scope is not Scope.SHARED
        return WorkerKeys(
            worker=worker, revoked=self.revoked_key(worker) if own else shared, clock=self.clock_key(worker),
            shared=shared, stamps=self.stamps_key(worker) if own else shared_stamps, shared_stamps=shared_stamps,
            info=self.info_key(worker),
        )

    @property
    def hash_tagged(self) -> bool:
        """Whether the prefix holds a Redis Cluster hash tag (``{...}``, non-empty, the first ``{``): then
        every key of the library hashes to one slot, one node of a cluster."""
        opening = self.prefix.find("{")
        closing = self.prefix.find("}", opening + 1) if opening >= 0 else -1
        return closing > opening + 1

    @property
    def match_all(self) -> str:
        """A SCAN MATCH pattern for every key under the prefix (the prefix taken literally)."""
        return glob_escape(self.prefix) + "*"

    def parse(self, key: str) -> tuple[str, str] | None:
        """(worker, 'revoked', 'clock', 'stamps' or 'info') for a worker key of this prefix; None otherwise."""
        if not key.startswith(self.prefix) or key in (self.shared_revoked_key, self.shared_stamps_key):
            return None
        rest = key[len(self.prefix):]
        for suffix, kind in ((REVOKED_SUFFIX, "revoked"), (CLOCK_SUFFIX, "clock"), (STAMPS_SUFFIX, "stamps"),
                             (INFO_SUFFIX, "info")):
            if rest.endswith(suffix) and len(rest) > len(suffix):
                return rest[: -len(suffix)], kind
        return None
