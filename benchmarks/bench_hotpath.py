"""The task hot path: tasks/s of a real ``celery worker -P solo`` with this library vs without a statedb.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_hotpath.py [--redis-url URL] [--quick]

Per round (7) and contender: N no-op tasks are published to a fresh queue first, then a worker of
``hotpath_app`` starts on it (broker = the same Redis, ``--without-mingle --without-gossip
--without-heartbeat``, log level WARNING) and times itself from the first task received to the
N-th task done; it is then stopped with SIGTERM (a warm shutdown, which runs the statedb's
``save()``). Contenders alternate: no statedb, then ``--statedb=redis://...`` (this library), and
the order flips every round. Celery's file statedb is measured too (``--statedb=<file>``): like
this library, it does nothing per task. So is this library with its index of stored revokes full
(``index``: 1 000 000 ids, a week old, in the fleet set the worker reads at boot; 100 000 with
``--quick``): every task is then looked up in the index too, and none of them is in it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _common as c
import redis

from celery_redis_statedb.local_servers import delete_prefixed, stop_process

NAMES = ("hotpath",)
HERE = Path(__file__).resolve().parent
TIMEOUT = 180.0


def _env(url: str, prefix: str, expect: int, result_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_STATEDB_"))}
    env.update(HOTPATH_BROKER=url, HOTPATH_PREFIX=prefix, HOTPATH_EXPECT=str(expect),
               HOTPATH_RESULT_KEY=result_key, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


INDEX_SEED = "statedb-bench:hotpath-index-seed"


def seed_index(url: str, count: int) -> None:
    """A fleet set of ``count`` week-old ids, copied into each ``index`` run's prefix (COPY: server-side)."""
    raw = redis.Redis.from_url(url)
    try:
        raw.delete(INDEX_SEED)
        old = time.time() - 7 * 86400
        pipe = raw.pipeline(transaction=False)
        for start in range(0, count, 10_000):
            pipe.zadd(INDEX_SEED, {str(uuid.uuid4()): old - i for i in range(start, min(count, start + 10_000))})
        pipe.execute()
    finally:
        raw.close()


def one_run(url: str, contender: str, n: int, tmp: Path) -> dict[str, float]:
    prefix = c.new_prefix("hotpath")
    queue, name = f"hotpath-{uuid.uuid4().hex[:8]}", f"hotpath-{uuid.uuid4().hex[:8]}@bench"
    result_key = f"{prefix}result"
    env = _env(url, prefix, n, result_key)
    raw = redis.Redis.from_url(url)
    # Publish first, from a child process with the same app (so the broker prefix matches).
    publish = ("import hotpath_app as m\n"
               "with m.app.producer_or_acquire() as producer:\n"
               f"    for _ in range({n}):\n"
               f"        m.noop.apply_async(queue={queue!r}, producer=producer)\n")
    subprocess.run([sys.executable, "-c", publish], env=env, cwd=HERE, check=True, timeout=TIMEOUT)
    args = [sys.executable, "-m", "celery", "-A", "hotpath_app", "worker", "-P", "solo", "-Q", queue, "-n", name,
            "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING"]
    if contender in ("library", "index"):
        args.append(f"--statedb={url}")
    if contender == "index":
        raw.copy(INDEX_SEED, f"{prefix}state:shared:fleet-revoked")
    elif contender == "celery":
        args.append(f"--statedb={tmp / (name + '.state')}")
    log = tmp / f"{name}.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        worker = subprocess.Popen(args, env=env, cwd=HERE, stdout=out, stderr=subprocess.STDOUT)
    try:
        while (raw_result := raw.get(result_key)) is None:
            if worker.poll() is not None:
                raise RuntimeError(f"{contender} worker exited with {worker.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() - started > TIMEOUT:
                raise TimeoutError(f"{contender} worker did not finish {n} tasks: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        result = json.loads(raw_result)
    finally:
        stop_process(worker, timeout=30)
        delete_prefixed(raw, prefix)
        raw.close()
    return {"rate": result["tasks"] / result["seconds"],
            "cpu_ms_per_1000": 1e6 * result["cpu_seconds"] / result["tasks"]}


def run(url: str, args: argparse.Namespace, only: set[str] | None = None) -> list[c.Table]:
    if only is not None and "hotpath" not in only:
        return []
    n, rounds = (1000, 1) if args.quick else (5000, 7)
    contenders = ["none", "library", "index", "celery"]
    seed_index(url, 100_000 if args.quick else 1_000_000)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
    with tempfile.TemporaryDirectory(prefix="statedb-bench-hotpath-") as tmp:
        for i in range(rounds):
            order = contenders if i % 2 == 0 else contenders[::-1]
            for contender in order:
                runs[contender].append(one_run(url, contender, n, Path(tmp)))
            print(f"   [hotpath] round {i + 1}/{rounds}: "
                  + ", ".join(f"{k} {v[-1]['rate']:.0f}/s" for k, v in runs.items()), flush=True)
    t = c.Table(f"4. Task hot path: {n:,} no-op tasks on a real solo worker (first received -> last done)",
                ["contender", "runs", "median tasks/s", "all runs", "vs no statedb", "target",
                 "worker CPU ms/1000 tasks", "CPU vs no statedb"])
    rate = {k: [r["rate"] for r in v] for k, v in runs.items()}
    cpu = {k: [r["cpu_ms_per_1000"] for r in v] for k, v in runs.items()}
    base_cpu = c.median(cpu["none"])
    indexed = "100 000" if args.quick else "1 000 000"
    for contender, label in (("none", "no statedb"), ("library", "this library (--statedb=redis://)"),
                             ("index", f"this library, {indexed} stored ids in the index"),
                             ("celery", "celery file statedb (--statedb=file)")):
        m = c.median(rate[contender])
        paired = c.median([a / b for a, b in zip(rate[contender], rate["none"], strict=True)])
        target = c.verdict(paired, 0.97, at_least=True) if contender in ("library", "index") else ""
        t.add(label, len(rate[contender]), f"{m:,.0f}", " ".join(f"{r:,.0f}" for r in rate[contender]),
              f"{paired:.3f}", target, f"{c.median(cpu[contender]):.0f}", f"{c.median(cpu[contender]) / base_cpu:.3f}")
    t.notes.append("broker = the same server; contenders alternate (order reversed every round); each run is a fresh "
                   "worker process and a fresh queue; 'vs no statedb' = median of the per-round ratios")
    redis.Redis.from_url(url).delete(INDEX_SEED)
    t.notes.append("worker CPU = process time of the worker over the same window (less sensitive than tasks/s to "
                   "other load on a shared machine)")
    return [t]


if __name__ == "__main__":
    c.standalone(run, argparse.ArgumentParser(description=__doc__.split("\n")[0]))
