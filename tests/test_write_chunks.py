"""One write chunk size, ``StateDBConfig.write_chunk_size``, for every command that carries ids.

Counted with INFO commandstats on a private server (no other client there).
"""

from __future__ import annotations

import ast
import math
import time
from pathlib import Path

import redis
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import WorkerStatePersistence
from celery_redis_statedb.local_servers import PrivateServer
from statedb import StateDBConfig, revoke, revoke_stamps

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "chunks:"


def calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_chunk_sizes_are_defined_once_in_the_config() -> None:
    defaults = {StateDBConfig.write_chunk_size, StateDBConfig.load_chunk_size}
    found = []
    for path in sorted([*ROOT.glob("statedb/*.py"), *ROOT.glob("adapters/celery_redis_statedb/*.py")]):
        if path == ROOT / "statedb" / "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in defaults:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert found == []


async def test_async_admin_revokes_write_in_chunks_of_the_setting(private_server: PrivateServer) -> None:
    client = private_server.client()
    count = StateDBConfig.write_chunk_size + 1
    try:
        assert await revoke(private_server.url, [f"id-{i}" for i in range(count)], key_prefix=PREFIX) == count
        assert calls(client, "zadd") == 2
        stamps = [("batch", f"v{i}") for i in range(count)]
        assert await revoke_stamps(private_server.url, stamps, key_prefix=PREFIX) == count
        assert calls(client, "zadd") == 4
    finally:
        client.close()


def test_purge_revalidation_reads_in_chunks_of_the_setting(private_server: PrivateServer) -> None:
    config = StateDBConfig(url=private_server.url, key_prefix=PREFIX, write_chunk_size=3)
    revoked = LimitedSet(maxlen=50000, expires=10800)
    persistence = WorkerStatePersistence(config, "w@h", revoked=revoked, clock=LamportClock())
    client = private_server.client()
    ids = [f"id-{i}" for i in range(7)]
    try:
        persistence.boot()
        revoked.update(ids)  # written through
        assert client.zcard(persistence.repository.keys.revoked) == 7
        client.delete(persistence.repository.keys.revoked)  # an operator's purge
        client.config_resetstat()

        assert persistence.purged_before(time.time() + 1) == 7

        # One ZMSCORE a chunk on each set an id may be in: the worker's and the fleet's.
        assert calls(client, "zmscore") == 2 * math.ceil(len(ids) / 3)
        assert not revoked
    finally:
        client.close()
        persistence.save()
