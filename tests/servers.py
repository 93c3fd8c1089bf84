"""Test-only server helpers: TLS certificates for a test server, and a server binary's version.

Servers themselves (``PrivateServer``, ``free_port``, ``wait_ready``...) live in
``celery_redis_statedb.local_servers``, shared with the demo and the benchmarks.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from celery_redis_statedb.local_servers import ServerKind, TLSFiles, server_binary


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
def server_version(kind: ServerKind) -> tuple[int, ...]:
    """(major, minor, patch) of the server binary of ``kind``."""
    out = subprocess.run([server_binary(kind), "--version"], check=False, capture_output=True, text=True,
                         timeout=30).stdout
    for word in out.split():
        if word.startswith("v="):
            return tuple(int(part) for part in word[2:].split(".")[:3] if part.isdigit())
    return (0,)
