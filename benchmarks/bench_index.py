"""Stored revokes beyond the in-memory window: boot time and worker memory of the index.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_index.py [--redis-url URL] [--quick]

N task ids (uuid4 strings) are stored with revocation times a week old, far beyond
Celery's 3 h in-memory window, so a worker honours every one of them through the index
of stored revokes. Alternating the contenders (the one to go first rotates each round):

- boot: library = ``WorkerStatePersistence(...).boot()`` into Celery's default
  ``LimitedSet(maxlen=50000, expires=10800)`` (ping, server check, the newest window:
  empty; then every stored id into the index; the clock); Celery = ``Persistent(...)``
  loading a shelve file saved with the same N ids into ``LimitedSet(maxlen=N)`` (Celery
  has no index: its file is the only way it honours N ids).
- memory: a real ``celery worker -P solo`` (``hotpath_app``) booted on the N stored ids,
  and one booted with none; the difference of their resident set sizes (VmRSS, read from
  /proc once each says ready) per stored id.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common as c
import redis
from bench_boot import celery_state
from celery.utils.collections import LimitedSet
from celery.worker import state as worker_state
from kombu.clocks import LamportClock

from celery_redis_statedb import StateDBConfig, SyncStateRepository, WorkerStatePersistence
from celery_redis_statedb.local_servers import delete_prefixed, stop_process

NAMES = ("index",)
HERE = Path(__file__).resolve().parent
WORKER = "bench@host"
WEEK = 7 * 86400.0
EXPIRES = 10800.0


def store(url: str, prefix: str, worker: str, ids: list[str]) -> None:
    now = time.time()
    config = StateDBConfig(url=url, key_prefix=prefix)
    repository = SyncStateRepository.open(config, worker)
    try:
        repository.add_revoked_at([(task_id, now - WEEK - i * 1e-3) for i, task_id in enumerate(ids)])
    finally:
        repository.close()


def worker_rss(url: str, prefix: str, name: str, tmp: Path, expect_in_index: int) -> int:
    """VmRSS (bytes) of a real solo worker of hotpath_app once it is ready, then stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_STATEDB_"))}
    env.update(HOTPATH_BROKER=url, HOTPATH_PREFIX=prefix, HOTPATH_EXPECT="1000000000",
               HOTPATH_RESULT_KEY=f"{prefix}unused", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    log = tmp / f"{name}.log"
    args = [sys.executable, "-m", "celery", "-A", "hotpath_app", "worker", "-P", "solo", "-n", name,
            "-Q", f"idx-{uuid.uuid4().hex[:8]}", "--without-mingle", "--without-gossip", "--without-heartbeat",
            "-l", "INFO", f"--statedb={url}"]
    with open(log, "wb") as out:
        worker = subprocess.Popen(args, env=env, cwd=HERE, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not get ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5)
        if f" {expect_in_index} more by the index" not in log.read_text(errors="replace"):
            raise RuntimeError(f"the worker did not index {expect_in_index} ids: {log.read_text()[-2000:]}")
        for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc")
    finally:
        stop_process(worker, timeout=30)


def measure_boot(url: str, state_prefix: str, ids: list[str], rounds: int, tmp: Path
                 ) -> tuple[dict[str, list[float]], int]:
    """Alternating boots of the library (into the index) and of Celery's file with the same ids."""
    n = len(ids)
    boot: dict[str, list[float]] = {"celery": [], "library": []}
    in_index = 0
    saved = LimitedSet(maxlen=n, expires=EXPIRES)
    saved.update(ids)
    with celery_state(saved):
        worker_state.Persistent(worker_state, str(tmp / "worker.state"), LamportClock()).save()
    del saved

    def run_celery() -> None:
        with celery_state(LimitedSet(maxlen=n, expires=EXPIRES)) as revoked:
            holder: dict[str, Any] = {}

            def load() -> None:
                holder["p"] = worker_state.Persistent(worker_state, str(tmp / "worker.state"), LamportClock())

            boot["celery"].append(c.timed(load))
            assert len(revoked) == n
            holder["p"].close()

    def run_library() -> None:
        nonlocal in_index
        revoked = LimitedSet(maxlen=50_000, expires=EXPIRES)
        persistence = WorkerStatePersistence(StateDBConfig(url=url, key_prefix=state_prefix), WORKER,
                                             revoked=revoked, clock=LamportClock())
        boot["library"].append(c.timed(persistence.boot))
        in_index = persistence.merged.in_index
        assert ids[n // 2] in revoked and not revoked._data
        persistence.save()

    contenders = [run_celery, run_library]
    for i in range(rounds):
        for contender in contenders[i % 2:] + contenders[: i % 2]:
            contender()
    print(f"   [index] boot: {rounds} rounds", flush=True)
    return boot, in_index


def measure_memory(url: str, prefix: str, n: int, rounds: int, tmp: Path) -> list[float]:
    """Bytes per stored id: a worker booted on the stored ids minus one booted on none, per round."""
    memory = []
    for i in range(rounds):
        pair = [("full", WORKER, n), ("empty", f"empty-{uuid.uuid4().hex[:6]}@host", 0)]
        rss = {kind: worker_rss(url, prefix, name, tmp, count)
               for kind, name, count in (pair if i % 2 == 0 else pair[::-1])}
        memory.append((rss["full"] - rss["empty"]) / n)
    print(f"   [index] memory: {rounds} rounds", flush=True)
    return memory


def run(url: str, args: argparse.Namespace, only: set[str] | None = None) -> list[c.Table]:
    if only is not None and "index" not in only:
        return []
    n, rounds, memory_rounds = (100_000, 2, 1) if args.quick else (1_000_000, 5, 3)
    prefix = c.new_prefix("index")
    state_prefix = f"{prefix}state:"  # where hotpath_app's workers keep their state
    raw = redis.Redis.from_url(url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    try:
        store(url, state_prefix, WORKER, ids)
        with tempfile.TemporaryDirectory(prefix="statedb-bench-index-") as tmp_name:
            boot, in_index = measure_boot(url, state_prefix, ids, rounds, Path(tmp_name))
            memory = measure_memory(url, prefix, n, memory_rounds, Path(tmp_name))
    finally:
        delete_prefixed(raw, prefix)
        raw.close()

    t = c.Table(f"8. Boot honouring {n:,} stored ids older than the in-memory window (medians)",
                ["N", "rounds", "in the index", "celery file ms", "library ms", "lib/celery", "target"])
    ratio = c.median([a / b for a, b in zip(boot["library"], boot["celery"], strict=True)])
    t.add(f"{n:,}", rounds, f"{in_index:,}", c.ms(c.median(boot["celery"])), c.ms(c.median(boot["library"])),
          f"{ratio:.3f}", c.verdict(ratio, 0.5))
    t.notes.append("library = WorkerStatePersistence.boot() into Celery's default LimitedSet(50000, 3 h): every id is "
                   "a week old, so all go to the index; celery file = Persistent(...) loading a shelve file with "
                   "the same ids into LimitedSet(maxlen=N)")
    m = c.Table(f"9. Worker memory of the index: RSS of a real solo worker with {n:,} stored ids minus one with none",
                ["N", "rounds", "bytes per stored id", "all rounds", "target"])
    per_id = c.median(memory)
    m.add(f"{n:,}", memory_rounds, f"{per_id:.1f}", " ".join(f"{x:.1f}" for x in memory), c.verdict(per_id, 16))
    m.notes.append("VmRSS from /proc/<pid>/status half a second after 'ready.'; order alternates each round")
    return [t, m]


if __name__ == "__main__":
    c.standalone(run, argparse.ArgumentParser(description=__doc__.split("\n")[0]))
