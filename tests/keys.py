"""The documented key layout, spelled out independently of ``statedb.keys`` (the tests' oracle)."""

from __future__ import annotations

import json


def revoked_key(prefix: str, worker: str) -> str:
    return f"{prefix}{worker}:revoked"


def clock_key(prefix: str, worker: str) -> str:
    return f"{prefix}{worker}:clock"


def info_key(prefix: str, worker: str) -> str:
    """The worker's info hash (last seen, scope, version), written with each clock save."""
    return f"{prefix}{worker}:info"


def shared_key(prefix: str) -> str:
    """The fleet's revoked set."""
    return f"{prefix}shared:fleet-revoked"


def stamps_key(prefix: str, worker: str) -> str:
    return f"{prefix}{worker}:stamps"


def shared_stamps_key(prefix: str) -> str:
    """The fleet's stamped-header revokes."""
    return f"{prefix}shared:fleet-stamps"


def stamp(header: str, value: object) -> bytes:
    """A stamped-header revoke as stored: compact JSON ``[header, value]``, UTF-8, keys sorted."""
    return json.dumps([header, value], separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
