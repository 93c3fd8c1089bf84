"""Boot storms: many workers booting at once from one fleet set, as Redis sees them.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_bootstorm.py [--redis-url URL] [--quick] [--boots 200] [--procs 8]

A fleet set of N canonical UUIDs (50 000 revoked within the last hour: all of them fit Celery's
own set; then 1 000 000: 50 000 within the last hour and 950 000 over the 30 days before, most of
them for the index) is read by B boots at once: real ``WorkerStatePersistence(...).boot()`` calls
(worker scope, each its own name, Celery's default limits), ``--procs`` processes of B / procs
threads each, released together once every one has its clients built. Each way of reading runs
twice: once measured with INFO only (Redis CPU, bytes, wall time), once with ``CLIENT LIST``
sampled every few milliseconds (output buffers), so the sampling costs nothing to the first.

- **0.5 read**: the whole set, read ahead up to 128 windows a round trip (no trip budget): today's read.
- **bounded read**: the whole set, about 1 MiB of replies a round trip.
- **snapshot, cold**: no snapshot yet: the first worker to take the lock builds it, the others wait
  for it and read it (the storm right after an upgrade, a restore or a purge).
- **snapshot, warm**: the snapshot is there (the usual storm: a deploy, a scale-out).

Per boot: Redis CPU (``used_cpu_user + used_cpu_sys`` deltas, and the commands' own time from
``commandstats``, which also counts the time Redis waits for a core), bytes sent
(``total_net_output_bytes``), the largest reply of one round trip (measured by the boot: what Redis
can hold for it at once) and the largest output buffer one client had (``omem`` of ``CLIENT LIST``,
sampled); for the storm: wall time until the last boot, the median boot, the peak of every client's
buffers together and of ``used_memory``. Every row boots the same way otherwise (an empty own set
costs one ``ZCARD``, in every row, where 0.5 read its 101 windows). The boots run on the benchmark's
machine: with 2 cores, wall times are the Python side's (200 merges of 50 000 ids), not Redis'.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import _common as c
import redis
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import StateDBConfig, SyncStateRepository, WorkerStatePersistence
from celery_redis_statedb.boot_merge import DEFAULT_SNAPSHOT_POLICY
from celery_redis_statedb.fleet_snapshot import SnapshotPolicy
from celery_redis_statedb.local_servers import delete_prefixed
from statedb import snapshot
from statedb.cursors import TRIP_BYTES
from statedb.keys import KeySchema

VARIANTS = ("0.5 read", "bounded read", "snapshot, cold", "snapshot, warm")
EXPIRES = 10800.0
SAMPLE_EVERY = 0.005


@dataclass
class Storm:
    """What one storm cost Redis, and how long it took."""

    boots: int
    cpu: float  # seconds of used_cpu_user + used_cpu_sys
    command_usec: float  # commandstats, every command of the storm
    bytes_out: int
    wall: float
    boot_times: list[float]
    sources: list[str]
    largest_trip: int = 0  # the largest reply of one boot's round trip (client side: exact)
    trips: list[int] = field(default_factory=list)  # round trips of each boot
    peak_omem: int = 0  # the largest output buffer of one client, sampled
    peak_omem_total: int = 0  # every client's together
    peak_memory: int = 0  # used_memory above what it was before the storm
    in_memory: int = 0
    in_index: int = 0
    cpu_range: tuple[float, float] = (0.0, 0.0)  # over the rounds


@dataclass
class Result:
    n: int
    storms: dict[str, Storm] = field(default_factory=dict)
    set_memory: int = 0  # MEMORY USAGE of the fleet set
    snapshot_memory: int = 0  # ... and of its snapshot, once built


# -- the boots (in child processes) --------------------------------------------


class TripMeter:
    """Wraps a boot's client: its round trips, and the largest reply payload (members and values) of
    one, which bounds what Redis buffered for that boot at once."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.largest = self.trips = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self.client.pipeline(*args, **kwargs)
        execute = pipe.execute

        def measured(*a: Any, **k: Any) -> Any:
            replies = execute(*a, **k)
            self.trips += 1
            self.largest = max(self.largest, _payload(replies))
            return replies

        pipe.execute = measured
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def _payload(reply: Any) -> int:
    if isinstance(reply, bytes):
        return len(reply) + 7  # and its RESP framing ($<len>\r\n ... \r\n)
    if isinstance(reply, (list, tuple)):
        return sum(map(_payload, reply))
    return 8


def _settings(variant: str) -> tuple[SnapshotPolicy | None, int | None]:
    """(snapshot policy, trip bytes) of a variant."""
    if variant == "0.5 read":
        return None, None
    return (None if variant == "bounded read" else DEFAULT_SNAPSHOT_POLICY), TRIP_BYTES


def _child(url: str, prefix: str, names: Sequence[str], variant: str, ready: Any, go: Any, results: Any,
           finish: Any) -> None:
    policy, trip_bytes = _settings(variant)
    # Generous timeouts: a storm on a small shared machine is slow to serve, and this measures Redis, not them.
    config = StateDBConfig(url=url, key_prefix=prefix, socket_timeout=120.0, socket_connect_timeout=60.0,
                           boot_timeout=600.0)
    workers = []
    for name in names:
        persistence = WorkerStatePersistence(config, name, revoked=LimitedSet(maxlen=50_000, expires=EXPIRES),
                                             clock=LamportClock())
        persistence.fleet_snapshot = policy
        persistence.repository.operations = dataclasses.replace(persistence.repository.operations,
                                                                trip_bytes=trip_bytes)
        persistence.repository.ping()  # connected before the storm
        persistence.repository.client = TripMeter(persistence.repository.client)  # type: ignore[assignment]
        workers.append(persistence)

    def boot(persistence: WorkerStatePersistence) -> None:
        go.wait()
        started = time.perf_counter()
        try:
            persistence.boot()
        except Exception as exc:  # reported by the parent, which would wait for this boot forever
            results.put((time.monotonic(), 0.0, f"failed: {type(exc).__name__}: {exc}"[:200], 0, 0, 0, 0))
            return
        took = time.perf_counter() - started
        merged = persistence.merged
        meter = persistence.repository.client
        largest, trips = (meter.largest, meter.trips) if isinstance(meter, TripMeter) else (0, 0)
        results.put((time.monotonic(), took, merged.fleet_source, merged.in_memory, merged.in_index, largest,
                     trips))
        persistence.stored.index = None  # type: ignore[assignment]  # the storm's memory, not this one's
        persistence.revoked.clear()

    threads = [threading.Thread(target=boot, args=(p,)) for p in workers]
    for thread in threads:
        thread.start()
    ready.put(len(workers))
    for thread in threads:
        thread.join()
    finish.wait()
    for persistence in workers:  # no save(): its writes are not the storm's
        persistence.repository.close()
        persistence.writer.close()


# -- one storm, seen from Redis ------------------------------------------------


def _info(client: redis.Redis) -> tuple[float, float, int, int]:
    info = client.info("everything")
    usec = sum(v["usec"] for k, v in info.items() if k.startswith("cmdstat_")
               and k not in ("cmdstat_client|list", "cmdstat_info"))
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), float(usec),
            int(info["total_net_output_bytes"]), int(info["used_memory"]))


class Sampler(threading.Thread):
    """CLIENT LIST every few milliseconds: the largest output buffer of one client, and of all together."""

    def __init__(self, url: str, baseline_memory: int) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.baseline = baseline_memory
        self.stop = threading.Event()
        self.peak_one = self.peak_total = self.peak_memory = 0

    def run(self) -> None:
        while not self.stop.is_set():
            clients = self.client.client_list()
            omem = [int(entry.get("omem", 0)) for entry in clients]
            self.peak_one = max(self.peak_one, *omem, 0)
            self.peak_total = max(self.peak_total, sum(omem))
            used = int(self.client.info("memory")["used_memory"])
            self.peak_memory = max(self.peak_memory, used - self.baseline)
            time.sleep(SAMPLE_EVERY)
        self.client.close()


def storm(url: str, prefix: str, variant: str, boots: int, procs: int, *, sample: bool) -> Storm:
    context = mp.get_context("fork")
    ready, results = context.Queue(), context.Queue()
    go, finish = context.Event(), context.Event()
    names = [f"storm-{uuid.uuid4().hex[:8]}-{i}@host" for i in range(boots)]
    children = [context.Process(target=_child, args=(url, prefix, names[i::procs], variant, ready, go, results,
                                                     finish)) for i in range(procs)]
    for child in children:
        child.start()
    for _ in children:
        ready.get(timeout=300)
    client = redis.Redis.from_url(url)
    cpu0, usec0, out0, memory0 = _info(client)
    sampler = Sampler(url, memory0) if sample else None
    if sampler:
        sampler.start()
    started = time.monotonic()
    go.set()
    rows = [results.get(timeout=1800) for _ in range(boots)]
    failed = [row[2] for row in rows if row[2].startswith("failed")]
    if failed:
        print(f"   [bootstorm] {len(failed)} boots failed, the first: {failed[0]}", flush=True)
    ended = max(row[0] for row in rows)
    if sampler:
        sampler.stop.set()
        sampler.join()
    cpu1, usec1, out1, _ = _info(client)
    finish.set()
    for child in children:
        child.join(120)
    client.close()
    return Storm(boots, cpu1 - cpu0, usec1 - usec0, out1 - out0, ended - started, [row[1] for row in rows],
                 [row[2] for row in rows], max(row[5] for row in rows),
                 [row[6] for row in rows], sampler.peak_one if sampler else 0,
                 sampler.peak_total if sampler else 0, sampler.peak_memory if sampler else 0, rows[0][3], rows[0][4])


def seed(url: str, prefix: str, n: int) -> None:
    """N canonical UUIDs in the fleet set: up to 50 000 within the last hour, the rest over 30 days before."""
    now = time.time()
    recent = min(n, 50_000)
    stamped = [(str(uuid.uuid4()), now - 3600 + i * 3500 / recent) for i in range(recent)]
    older = n - recent
    stamped += [(str(uuid.uuid4()), now - 3600 - 30 * 86400 + i * 30 * 86400 / older) for i in range(older)]
    repository = SyncStateRepository.open(StateDBConfig(url=url, key_prefix=prefix), "seed@host")
    try:
        for i in range(0, len(stamped), 100_000):
            repository.add_fleet_revoked_at(stamped[i: i + 100_000])
    finally:
        repository.close()


def measure(url: str, n: int, boots: int, procs: int, rounds: int) -> Result:
    """Each read ``rounds`` times (the reads in turn: the machine's load drifts), the storm of the median
    Redis CPU kept; then once more sampled, for the buffers."""
    prefix = c.new_prefix(f"bootstorm{n}")
    result = Result(n)
    client = redis.Redis.from_url(url)
    fleet = KeySchema(prefix).shared_revoked_key
    key = snapshot.snapshot_key(fleet)

    def run(variant: str, *, sample: bool) -> Storm:
        if variant == "snapshot, cold":
            client.delete(key)
        done = storm(url, prefix, variant, boots, procs, sample=sample)
        if variant == "snapshot, cold":
            result.snapshot_memory = int(client.memory_usage(key, samples=0) or 0)
        print(f"   [bootstorm] N={n} {variant}{' (sampled)' if sample else ''}: {done.wall:.1f}s, "
              f"{done.cpu * 1000 / boots:.2f} ms of Redis CPU a boot", flush=True)
        return done

    try:
        seed(url, prefix, n)
        result.set_memory = int(client.memory_usage(fleet, samples=0) or 0)
        runs: dict[str, list[Storm]] = {variant: [] for variant in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:  # "warm" after "cold": its snapshot is there
                runs[variant].append(run(variant, sample=False))
        for variant in VARIANTS:
            kept = sorted(runs[variant], key=lambda done: done.cpu)[len(runs[variant]) // 2]
            kept.cpu_range = (min(done.cpu for done in runs[variant]), max(done.cpu for done in runs[variant]))
            sampled = run(variant, sample=True)
            kept.peak_omem, kept.peak_omem_total, kept.peak_memory = (
                sampled.peak_omem, sampled.peak_omem_total, sampled.peak_memory)
            result.storms[variant] = kept
            # the keys each storm's workers wrote (clocks) are left: they do not change the fleet set's reads
    finally:
        delete_prefixed(client, prefix)
        client.close()
    return result


# -- tables --------------------------------------------------------------------


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f}"


def table(result: Result, number: int, note: str) -> c.Table:
    base = result.storms["0.5 read"]
    size = f"{result.n:,}".replace(",", " ")
    t = c.Table(f"{number}. Boot storm: {size} ids in the fleet set, {base.boots} boots at once "
                f"(per boot unless said; the storm of the median Redis CPU of each read)",
                ["read", "Redis CPU ms", "x 0.5", "cmd ms", "MB out", "x 0.5", "largest trip MB", "peak buffer MB",
                 "all buffers MB", "used_memory +MB", "wall s", "median boot ms", "trips (median boot)", "sources"])
    for variant, s in result.storms.items():
        per = s.boots
        sources = ", ".join(f"{k} {v}" for k, v in sorted(_count(s.sources).items()) if k)
        t.add(variant, f"{s.cpu * 1000 / per:.2f}", c.ratio(s.cpu, base.cpu), f"{s.command_usec / 1000 / per:.2f}",
              _mb(s.bytes_out / per), c.ratio(s.bytes_out, base.bytes_out), _mb(s.largest_trip), _mb(s.peak_omem),
              _mb(s.peak_omem_total), _mb(s.peak_memory), f"{s.wall:.2f}",
              f"{statistics.median(s.boot_times) * 1000:.0f}", f"{statistics.median(s.trips):.0f}", sources or "-")
    warm, cold = result.storms["snapshot, warm"], result.storms["snapshot, cold"]
    t.notes.append(f"targets, snapshot warm / cold: CPU {c.verdict(warm.cpu / base.cpu, 0.25)} / "
                   f"{c.verdict(cold.cpu / base.cpu, 0.25)}; bytes {c.verdict(warm.bytes_out / base.bytes_out, 0.5)}"
                   f" / {c.verdict(cold.bytes_out / base.bytes_out, 0.5)}; largest trip (what Redis holds for "
                   f"one boot at most) {c.verdict(max(warm.largest_trip, cold.largest_trip) / 1e6, 4)} MB")
    extra = max(0.0, cold.cpu - warm.cpu * cold.boots / warm.boots)  # the build, and the waits, in all
    spread = ", ".join(f"{boots} boots {(warm.cpu / warm.boots + extra / boots) / (base.cpu / base.boots):.3f}"
                       for boots in (200, 1000))
    t.notes.append(f"a cold storm's build and waits cost Redis {extra * 1000:.0f} ms in all: spread over more "
                   f"boots, CPU x 0.5 is {spread}")
    t.notes.append("Redis CPU a boot over the rounds (the median shown): " + "; ".join(
        f"{variant} {low * 1000 / s.boots:.2f}-{high * 1000 / s.boots:.2f} ms"
        for variant, s in result.storms.items() for low, high in [s.cpu_range]))
    t.notes.append(f"per fleet id: the 0.5 read sends {base.bytes_out / base.boots / result.n:.1f} bytes a boot (what "
                   f"an id newer than the snapshot costs), the snapshot {warm.bytes_out / warm.boots / result.n:.1f}; "
                   f"Redis memory: the set {result.set_memory / result.n:.1f} bytes, its snapshot "
                   f"{result.snapshot_memory / result.n:.1f}")
    t.notes.append(f"every boot: {warm.in_memory} ids in Celery's set, {warm.in_index} in the index. {note}")
    return t


def _count(items: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def run(url: str, args: argparse.Namespace, only: set[str] | None = None) -> list[c.Table]:
    if only is not None and "bootstorm" not in only:
        return []
    boots = getattr(args, "boots", None) or (40 if args.quick else 200)
    big_boots = getattr(args, "big_boots", None) or (10 if args.quick else 50)
    procs = getattr(args, "procs", None) or 8
    rounds = getattr(args, "rounds", None) or (1 if args.quick else 3)
    sizes = ((20_000, boots), (100_000, big_boots)) if args.quick else ((50_000, boots), (1_000_000, big_boots))
    tables = []
    for number, (n, count) in zip((11, 12), sizes, strict=True):
        result = measure(url, n, count, min(procs, count), rounds)
        note = "" if count == 200 else f"{count} boots at once (each one's figures are per boot: the same at 200)."
        tables.append(table(result, number, note))
    return tables


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--boots", type=int, help="boots at once from the first fleet set (default 200)")
    parser.add_argument("--big-boots", type=int, help="boots at once from 1 000 000 ids (default 50)")
    parser.add_argument("--procs", type=int, help="processes the boots run in (threads in each; default 8)")
    parser.add_argument("--rounds", type=int, help="storms of each read, the median kept (default 3)")
    return parser


if __name__ == "__main__":
    c.standalone(run, add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])))
