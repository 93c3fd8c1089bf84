"""Purge across a fleet: this library's admin APIs vs a plain SCAN + pipelined ZREMRANGEBYSCORE.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_purge.py [--redis-url URL] [--quick]

W workers (1 000) each hold the same 1 000 revoked ids (a revoke broadcast reaches every worker)
and a clock key; half the ids are two days old, half one hour old. Each contender removes the ids
older than one day from every worker's set; before each run the old half is written back
(untimed). Contenders alternate (the order rotates every round):

- floor: a new client, ``SCAN MATCH <prefix>* COUNT 1000``, keep the ``:revoked`` keys, one pipeline
  of ZREMRANGEBYSCORE (-inf, (cutoff);
- async API: ``await statedb.purge_old_revoked(url, older_than=86400, key_prefix=...)``;
- sync API: ``celery_redis_statedb.purge_old_revoked_tasks(app, 86400, redis_url=url)``.

Celery's file statedb has no purge (each worker's file can only be changed by stopping that worker).
The APIs are imported if present; otherwise the row says so.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import _common as c
import redis

from celery_redis_statedb.local_servers import delete_prefixed
from statedb.keys import glob_escape

NAMES = ("purge",)
OLDER_THAN = 86400.0


def _apis() -> tuple[Callable[..., object] | None, Callable[..., object] | None]:
    try:
        from statedb import purge_old_revoked
    except ImportError:
        purge_old_revoked = None  # type: ignore[assignment]
    try:
        from celery_redis_statedb import purge_old_revoked_tasks
    except ImportError:
        purge_old_revoked_tasks = None  # type: ignore[assignment]
    return purge_old_revoked, purge_old_revoked_tasks


def run(url: str, args: argparse.Namespace, only: set[str] | None = None) -> list[c.Table]:  # noqa: PLR0915
    if only is not None and "purge" not in only:
        return []
    workers, per_worker, rounds = (300, 200, 3) if args.quick else (1000, 1000, 5)
    async_api, sync_api = _apis()
    prefix = c.new_prefix("purge")
    raw = redis.Redis.from_url(url)
    now = time.time()
    ids = [f"{i:08d}-0000-4000-8000-purgebench00" for i in range(per_worker)]
    old = {task_id: now - 2 * 86400 + i for i, task_id in enumerate(ids[: per_worker // 2])}
    new = {task_id: now - 3600 + i for i, task_id in enumerate(ids[per_worker // 2:])}
    keys = [f"{prefix}worker-{i:05d}@host:revoked" for i in range(workers)]

    def write(mapping: dict[str, float], *, clocks: bool = False) -> None:
        pipe = raw.pipeline(transaction=False)
        for i, key in enumerate(keys):
            pipe.zadd(key, mapping)
            if clocks:
                pipe.set(f"{prefix}worker-{i:05d}@host:clock", 1000 + i)
            if len(pipe) >= 200:
                pipe.execute()
        pipe.execute()

    expected = workers * len(old)

    def floor() -> int:
        client = redis.Redis.from_url(url)
        try:
            found = [k for k in client.scan_iter(match=glob_escape(prefix) + "*", count=1000)
                     if k.endswith(b":revoked")]
            pipe = client.pipeline(transaction=False)
            cutoff = time.time() - OLDER_THAN
            for key in found:
                pipe.zremrangebyscore(key, "-inf", f"({cutoff!r}")
            return sum(pipe.execute())
        finally:
            client.close()

    contenders: list[tuple[str, Callable[[], int] | None]] = [("floor", floor)]
    if async_api is not None:
        import asyncio

        def run_async() -> int:
            return int(asyncio.run(async_api(url, older_than=OLDER_THAN, key_prefix=prefix)))  # type: ignore[misc]

        contenders.append(("async", run_async))
    else:
        contenders.append(("async", None))
    if sync_api is not None:
        from celery import Celery

        app = Celery("purge-bench", set_as_current=False)
        app.conf.redis_state_key_prefix = prefix

        def run_sync() -> int:
            return int(sync_api(app, OLDER_THAN, redis_url=url))  # type: ignore[misc]

        contenders.append(("sync", run_sync))
    else:
        contenders.append(("sync", None))

    times: dict[str, list[float]] = {name: [] for name, fn in contenders if fn is not None}
    try:
        write(new, clocks=True)
        runnable = [(name, fn) for name, fn in contenders if fn is not None]
        for i in range(rounds):
            for name, fn in runnable[i % len(runnable):] + runnable[: i % len(runnable)]:
                write(old)
                removed: list[int] = []
                times[name].append(c.timed(lambda fn=fn, removed=removed: removed.append(fn())))  # type: ignore[misc]
                assert removed == [expected], (name, removed, expected)
    finally:
        delete_prefixed(raw, prefix)
        raw.close()

    t = c.Table(f"5. Purge ids older than 1 day across {workers:,} workers x {per_worker:,} ids (half old; medians)",
                ["contender", "rounds", "median ms", "vs floor", "target"])
    t.add("celery file statedb", "-", "n/a", "", "no purge: stop each worker and edit its file")
    base = c.median(times["floor"])
    t.add("floor (SCAN + pipelined ZREMRANGEBYSCORE)", len(times["floor"]), c.ms(base), "1.000", "")
    for name, label in (("async", "statedb.purge_old_revoked (async)"),
                        ("sync", "celery_redis_statedb.purge_old_revoked_tasks (sync)")):
        if name not in times:
            t.add(label, "-", "purge API not available yet", "", "")
            continue
        ratios = [a / b for a, b in zip(times[name], times["floor"], strict=True)]
        r = c.median(ratios)
        t.add(label, len(times[name]), c.ms(c.median(times[name])), f"{r:.3f}", c.verdict(r, 1.5))
    t.notes.append(f"each run removes {expected:,} ids (checked); the old half is written back before every run "
                   "(untimed); ratios = median of per-round ratios")
    return [t]


if __name__ == "__main__":
    c.standalone(run, argparse.ArgumentParser(description=__doc__.split("\n")[0]))
