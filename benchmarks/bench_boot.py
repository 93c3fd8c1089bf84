"""Boot, shutdown, stored memory and scale: this library vs Celery's file statedb vs the redis-py floor.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_boot.py [--redis-url URL] [--quick] [--only boot,shutdown,memory,scale]

For each N the same N task ids (uuid4 strings, revoked over the last hour) are stored three ways:
this library's key (written by ``SyncStateRepository.add_revoked_at``, where the write-through ends),
a plain sorted set with the same members and scores written by raw redis-py, and Celery's shelve
file (``Persistent.save()`` of a LimitedSet holding the ids). Then, alternating the contenders
(the one to go first rotates each round):

- boot: Celery = ``Persistent(state, file, clock)`` (opens the shelve, unpickles, merges, adjusts the
  clock); library = ``WorkerStatePersistence(...).boot()`` (connects, checks the server, merges, clock);
  floor = connect, ZRANGE by rank in chunks of 10 000 (the newest ``maxlen``, oldest first, with
  scores), ``LimitedSet.add(id, stamp)`` for each, GET + SET of the clock. Its client is the fastest
  plain one measured: RESP2 with decode_responses=True (redis-py 8 defaults to RESP3, where keeping
  the legacy reply shape re-encodes every score to text and back: about 1 us per id more).
  Every contender starts from an empty ``LimitedSet(maxlen=N, expires=10800)`` and a fresh
  ``LamportClock``, with the garbage collector on (as in a worker).
- shutdown with the N booted ids in memory: Celery ``Persistent.save()``; library ``save()``;
  floor = one SET of the clock (write-through leaves nothing else to write).
"""

from __future__ import annotations

import argparse
import dbm
import gc
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import redis
from celery.utils.collections import LimitedSet
from celery.worker import state as worker_state
from kombu.clocks import LamportClock

from celery_redis_statedb import StateDBConfig, SyncStateRepository, WorkerStatePersistence
from celery_redis_statedb.local_servers import delete_prefixed

NAMES = ("boot", "shutdown", "memory", "scale")
EXPIRES = 10800.0  # Celery's REVOKE_EXPIRES default
CHUNK = 10_000
WORKER = "bench@host"

FULL_SIZES = {10_000: 9, 50_000: 9, 100_000: 7, 300_000: 5, 1_000_000: 5}  # N -> rounds
QUICK_SIZES = {10_000: 3, 50_000: 3}


@dataclass
class Dataset:
    n: int
    url: str
    prefix: str
    ids: list[str] = field(default_factory=list)
    file_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="statedb-bench-file-")))

    @property
    def config(self) -> StateDBConfig:
        return StateDBConfig(url=self.url, key_prefix=self.prefix)

    @property
    def our_key(self) -> str:
        return self.config.keys.revoked_key(WORKER)

    @property
    def clock_key(self) -> str:
        return self.config.keys.clock_key(WORKER)

    @property
    def raw_key(self) -> str:
        return f"{self.prefix}raw:revoked"

    @property
    def raw_clock_key(self) -> str:
        return f"{self.prefix}raw:clock"

    @property
    def pristine(self) -> Path:
        return self.file_dir / "pristine"

    @property
    def work(self) -> Path:
        return self.file_dir / "work"

    @property
    def filename(self) -> str:
        return str(self.work / "worker.state")


def build(url: str, n: int) -> Dataset:
    data = Dataset(n, url, c.new_prefix(f"boot{n}"))
    now = time.time()
    data.ids = [str(uuid.uuid4()) for _ in range(n)]
    stamped = [(task_id, now - 3600 + i * 3000 / n) for i, task_id in enumerate(data.ids)]
    repository = SyncStateRepository.open(data.config, WORKER)
    try:
        repository.add_revoked_at(stamped)  # this library's write path
    finally:
        repository.close()
    raw = redis.Redis.from_url(url)
    pipe = raw.pipeline(transaction=False)
    for i in range(0, n, CHUNK):
        pipe.zadd(data.raw_key, dict(stamped[i : i + CHUNK]))
    pipe.execute()
    raw.close()
    # Celery's file, as a worker holding these ids would save it at exit.
    data.pristine.mkdir(parents=True)
    saved = LimitedSet(maxlen=n, expires=EXPIRES)
    saved.update(data.ids)
    with celery_state(saved):
        worker_state.Persistent(worker_state, str(data.pristine / "worker.state"), LamportClock()).save()
    return data


class celery_state:
    """Point ``celery.worker.state.revoked`` at a fresh set (a fresh worker process has one)."""

    def __init__(self, revoked: LimitedSet) -> None:
        self.revoked = revoked

    def __enter__(self) -> LimitedSet:
        self.saved = worker_state.revoked
        worker_state.revoked = self.revoked
        return self.revoked

    def __exit__(self, *exc: object) -> None:
        worker_state.revoked = self.saved


def restore_file(data: Dataset) -> None:
    shutil.rmtree(data.work, ignore_errors=True)
    shutil.copytree(data.pristine, data.work)


def file_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def memory_usage(client: redis.Redis, key: str) -> int:
    return int(client.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0"))


@dataclass
class Result:
    n: int
    rounds: int
    boot: dict[str, list[float]]
    save: dict[str, list[float]]
    ours_bytes: int
    raw_bytes: int
    file_bytes: int
    dbm_kind: str


def measure(url: str, n: int, rounds: int) -> Result:  # noqa: PLR0915
    data = build(url, n)
    raw = redis.Redis.from_url(url)
    boot: dict[str, list[float]] = {"celery": [], "library": [], "floor": []}
    save: dict[str, list[float]] = {"celery": [], "library": [], "floor": []}
    try:
        ours, plain = memory_usage(raw, data.our_key), memory_usage(raw, data.raw_key)
        size, kind = file_bytes(data.pristine), str(dbm.whichdb(str(data.pristine / "worker.state")))

        def run_celery() -> None:
            restore_file(data)
            with celery_state(LimitedSet(maxlen=n, expires=EXPIRES)) as revoked:
                holder: dict[str, Any] = {}

                def boot_celery() -> None:
                    holder["p"] = worker_state.Persistent(worker_state, data.filename, LamportClock())

                boot["celery"].append(c.timed(boot_celery))
                assert len(revoked) == n, (len(revoked), n)
                save["celery"].append(c.timed(holder["p"].save))

        def run_library() -> None:
            revoked = LimitedSet(maxlen=n, expires=EXPIRES)
            holder: dict[str, WorkerStatePersistence] = {}

            def boot_library() -> None:
                persistence = WorkerStatePersistence(data.config, WORKER, revoked=revoked, clock=LamportClock())
                persistence.boot()
                holder["p"] = persistence

            boot["library"].append(c.timed(boot_library))
            assert len(revoked) == n, (len(revoked), n)
            save["library"].append(c.timed(holder["p"].save))

        def run_floor() -> None:
            revoked = LimitedSet(maxlen=n, expires=EXPIRES)
            clock = LamportClock()
            holder: dict[str, redis.Redis] = {}

            def boot_floor() -> None:
                client = holder["client"] = redis.Redis.from_url(url, protocol=2, decode_responses=True)
                wall, mono = time.time(), time.monotonic()
                cutoff = wall - EXPIRES
                add = revoked.add
                maxlen = revoked.maxlen
                for start in range(-maxlen, 0, CHUNK):  # the newest maxlen ids, by rank, oldest first
                    for task_id, score in client.zrange(data.raw_key, start, min(start + CHUNK, 0) - 1,
                                                        withscores=True):
                        if score >= cutoff:
                            add(task_id, mono - (wall - score))
                clock.adjust(int(client.get(data.raw_clock_key) or 0))
                client.set(data.raw_clock_key, clock.value)

            boot["floor"].append(c.timed(boot_floor))
            assert len(revoked) == n, (len(revoked), n)

            def save_floor() -> None:
                holder["client"].set(data.raw_clock_key, clock.forward())
                holder["client"].close()

            save["floor"].append(c.timed(save_floor))

        contenders = [run_celery, run_library, run_floor]
        for i in range(rounds):
            for run in contenders[i % 3:] + contenders[: i % 3]:
                run()
                gc.collect()
    finally:
        delete_prefixed(raw, data.prefix)
        raw.close()
        shutil.rmtree(data.file_dir, ignore_errors=True)
    return Result(n, rounds, boot, save, ours, plain, size, kind)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios (both measured in the same round)."""
    return c.median([x / y for x, y in zip(a, b, strict=True)])


def tables(results: list[Result], only: set[str], quick: bool) -> list[c.Table]:
    out: list[c.Table] = []
    by_n = {r.n: r for r in results}
    if "boot" in only:
        t = c.Table("1. Boot: merge N stored revoked ids into an empty LimitedSet(maxlen=N) (medians)",
                    ["N", "rounds", "celery file ms", "library ms", "floor ms", "lib/celery", "target",
                     "lib/floor", "target"])
        targets = {50_000: 0.5, 1_000_000: 0.35}
        for n in sorted(by_n):
            if n not in targets and not (quick and n == max(by_n)):
                continue
            r = by_n[n]
            vs_celery = paired_ratio(r.boot["library"], r.boot["celery"])
            vs_floor = paired_ratio(r.boot["library"], r.boot["floor"])
            target = targets.get(n, 0.5)
            t.add(f"{n:,}", r.rounds, c.ms(c.median(r.boot["celery"])), c.ms(c.median(r.boot["library"])),
                  c.ms(c.median(r.boot["floor"])), f"{vs_celery:.3f}", c.verdict(vs_celery, target),
                  f"{vs_floor:.3f}", c.verdict(vs_floor, 1.2))
        t.notes.append("ratios = median of per-round ratios; celery file = Persistent(...) on a shelve file "
                       f"({results[0].dbm_kind}) saved with the same ids")
        t.notes.append("floor = connect (RESP2, decode_responses) + ZRANGE by rank in chunks of 10 000 + "
                       "LimitedSet.add(id, stamp) each + GET/SET clock; library = WorkerStatePersistence(...).boot() "
                       "(ping, server check, own set + fleet set, clock)")
        out.append(t)
    if "shutdown" in only:
        t = c.Table("2. Shutdown with the N booted ids in memory (medians)",
                    ["N", "celery save ms", "library save() ms", "floor ms", "lib/celery", "target"])
        for n in sorted(by_n):
            r = by_n[n]
            if n != max(by_n):
                continue
            v = paired_ratio(r.save["library"], r.save["celery"])
            t.add(f"{n:,}", c.ms(c.median(r.save["celery"])), c.ms(c.median(r.save["library"])),
                  c.ms(c.median(r.save["floor"])), f"{v:.4f}", c.verdict(v, 0.02))
        t.notes.append("celery = Persistent.save() (purge, pickle, zlib, shelve write, close); library = save() "
                       "(clock EVAL, nothing pending, close); floor = one SET of the clock")
        out.append(t)
    if "memory" in only:
        t = c.Table("6. Redis memory per stored id (MEMORY USAGE ... SAMPLES 0)",
                    ["N", "ours B/id", "raw zset B/id", "ours/raw", "target", "celery file B/id (disk)"])
        for n in sorted(by_n):
            r = by_n[n]
            v = r.ours_bytes / r.raw_bytes
            t.add(f"{n:,}", f"{r.ours_bytes / n:.1f}", f"{r.raw_bytes / n:.1f}", f"{v:.3f}", c.verdict(v, 1.1),
                  f"{r.file_bytes / n:.1f}")
        t.notes.append("ours = the library's key written by SyncStateRepository.add_revoked_at; raw = ZADD of the "
                       "same members and scores by plain redis-py; ids are 36-char uuid4 strings")
        out.append(t)
    if "scale" in only:
        t = c.Table("7. Scale: boot time and Redis memory from the smallest to the largest N (medians)",
                    ["N", "lib boot ms", "lib us/id", "floor us/id", "celery us/id", "lib B/id", "us/id vs first",
                     "B/id vs first"])
        ordered = [by_n[n] for n in sorted(by_n)]
        first = ordered[0]
        first_per_id = c.median(first.boot["library"]) / first.n
        first_bytes = first.ours_bytes / first.n
        for r in ordered:
            per_id = c.median(r.boot["library"]) / r.n
            t.add(f"{r.n:,}", c.ms(c.median(r.boot["library"])), f"{per_id * 1e6:.2f}",
                  f"{c.median(r.boot['floor']) / r.n * 1e6:.2f}", f"{c.median(r.boot['celery']) / r.n * 1e6:.2f}",
                  f"{r.ours_bytes / r.n:.1f}", f"{per_id / first_per_id:.2f}x",
                  f"{(r.ours_bytes / r.n) / first_bytes:.2f}x")
        last = ordered[-1]
        growth = (c.median(last.boot["library"]) / last.n) / first_per_id
        floor_growth = (c.median(last.boot["floor"]) / last.n) / (c.median(first.boot["floor"]) / first.n)
        linear = growth <= max(1.25, floor_growth * 1.1)
        t.notes.append(f"time/id grows {growth:.2f}x from {first.n:,} to {last.n:,} ids (the floor: "
                       f"{floor_growth:.2f}x): {'linear or better' if linear else 'WORSE than linear'}"
                       " (allowing 1.25x, or the floor's own growth +10%, for CPU caches)")
        out.append(t)
    return out


def run(url: str, args: argparse.Namespace, only: set[str] | None = None) -> list[c.Table]:
    only = set(NAMES) if only is None else only & set(NAMES)
    if not only:
        return []
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if only <= {"boot", "shutdown"}:
        sizes = {n: r for n, r in sizes.items() if n in (50_000, 1_000_000) or args.quick}
    results = []
    for n, rounds in sizes.items():
        started = time.monotonic()
        results.append(measure(url, n, rounds))
        print(f"   [boot] N={n:,}: {rounds} rounds in {time.monotonic() - started:.0f}s", flush=True)
    return tables(results, only, args.quick)


if __name__ == "__main__":
    c.standalone(run, argparse.ArgumentParser(description=__doc__.split("\n")[0]))
