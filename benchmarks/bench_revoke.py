"""Revoke write-through: this library's worker path vs Celery's file statedb vs the redis-py floor.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_revoke.py [--redis-url URL] [--quick]

What a revoke costs before the worker answers the command, for one id (2 000 single revokes: p50
and p99) and for batches of 100 and 10 000 ids. Celery's control command does
``state.revoked.update(task_ids)``; every contender gets fresh ids and its own
``LimitedSet(maxlen=50_000, expires=10800)`` (Celery's defaults), and they alternate (the order
rotates every iteration):

- celery file statedb: ``LimitedSet.update(ids)``: memory only, the file is written at exit;
- library: ``update(ids)`` on the set attached by ``WorkerStatePersistence.boot()`` (the write-through);
- floor: the same in-memory ``LimitedSet.update(ids)`` **plus** one ZADD LT round trip with every id
  (a pipeline for batches): the fair floor for the same work, since Celery inserts in memory anyway;
- raw ZADD alone (no in-memory insert) is shown for reference.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import _common as c
import redis
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import StateDBConfig, WorkerStatePersistence
from celery_redis_statedb.local_servers import delete_prefixed

NAMES = ("revoke",)
MAXLEN, EXPIRES = 50_000, 10800.0


def run(url: str, args: argparse.Namespace, only: set[str] | None = None) -> list[c.Table]:  # noqa: PLR0915
    if only is not None and "revoke" not in only:
        return []
    singles = 300 if args.quick else 2000
    batch_rounds = {100: 30 if args.quick else 300, 10_000: 3 if args.quick else 25}
    prefix = c.new_prefix("revoke")
    raw = redis.Redis.from_url(url)
    floor_key, bare_key = f"{prefix}floor:revoked", f"{prefix}bare:revoked"
    counter = itertools.count()

    def fresh(n: int) -> list[str]:
        return [f"{next(counter):08d}-0000-4000-8000-bench{prefix[-12:]}" for _ in range(n)]

    lib_set = LimitedSet(maxlen=MAXLEN, expires=EXPIRES)
    persistence = WorkerStatePersistence(StateDBConfig(url=url, key_prefix=prefix), "bench@host",
                                         revoked=lib_set, clock=LamportClock())
    persistence.boot()
    celery_set = LimitedSet(maxlen=MAXLEN, expires=EXPIRES)
    floor_set = LimitedSet(maxlen=MAXLEN, expires=EXPIRES)

    def celery(ids: list[str]) -> None:
        celery_set.update(ids)

    def library(ids: list[str]) -> None:
        lib_set.update(ids)

    def floor(ids: list[str]) -> None:
        floor_set.update(ids)
        if len(ids) == 1:
            raw.zadd(floor_key, {ids[0]: time.time()}, lt=True)
        else:
            pipe = raw.pipeline(transaction=False)
            pipe.zadd(floor_key, dict.fromkeys(ids, time.time()), lt=True)
            pipe.execute()

    def bare(ids: list[str]) -> None:
        if len(ids) == 1:
            raw.zadd(bare_key, {ids[0]: time.time()}, lt=True)
        else:
            pipe = raw.pipeline(transaction=False)
            pipe.zadd(bare_key, dict.fromkeys(ids, time.time()), lt=True)
            pipe.execute()

    contenders: list[tuple[str, Callable[[list[str]], None]]] = [
        ("celery", celery), ("library", library), ("floor", floor), ("bare", bare)]

    try:
        single = c.alternating(contenders, fresh, 1, singles)
        batches = {n: c.alternating(contenders, fresh, n, rounds) for n, rounds in batch_rounds.items()}
        stored = raw.zcard(persistence.repository.keys.revoked)
        persistence.save()
    finally:
        delete_prefixed(raw, prefix)
        raw.close()

    t = c.Table("3. Revoke write-through: time until the revoke command may answer",
                ["case", "samples", "celery file ms", "library ms", "floor ms", "raw ZADD ms", "lib/floor",
                 "target", "lib/raw ZADD"])
    for label, q in (("1 id, p50", 0.5), ("1 id, p99", 0.99)):
        p = {name: c.percentile(v, q) for name, v in single.items()}
        r = p["library"] / p["floor"]
        t.add(label, len(single["library"]), c.ms(p["celery"]), c.ms(p["library"]), c.ms(p["floor"]),
              c.ms(p["bare"]), f"{r:.3f}", c.verdict(r, 1.5), f"{p['library'] / p['bare']:.3f}")
    for n, times in batches.items():
        m = {name: c.median(v) for name, v in times.items()}
        r = c.median([a / b for a, b in zip(times["library"], times["floor"], strict=True)])
        t.add(f"batch of {n:,}", len(times["library"]), c.ms(m["celery"]), c.ms(m["library"]), c.ms(m["floor"]),
              c.ms(m["bare"]), f"{r:.3f}", c.verdict(r, 1.25), f"{m['library'] / m['bare']:.3f}")
    t.notes.append("floor = LimitedSet.update(ids) + one ZADD LT (pipelined for batches): the fair floor, since the "
                   "in-memory insert is done by Celery anyway; raw ZADD = the round trip alone, for reference")
    t.notes.append("celery file statedb = the in-memory insert only: nothing reaches the file before a clean exit")
    t.notes.append(f"batch ratios = median of per-round ratios; library key holds {stored:,} ids at the end "
                   "(every id written through)")
    return [t]


if __name__ == "__main__":
    c.standalone(run, argparse.ArgumentParser(description=__doc__.split("\n")[0]))
