"""Real ``celery worker`` subprocesses for the end-to-end tests.

A :class:`WorkerHarness` writes a tiny Celery app module into a directory of its
own, starts workers of it as subprocesses (each in its own process group, so a
SIGKILL takes the prefork children too), and talks to them from the test
process: control commands (revoke, ping) and tasks go through the broker.

Isolation on a shared server: every worker has a unique name and queue, and the
broker keys (queues, bindings, pub/sub channels) carry a ``global_keyprefix``
under the test's key prefix, so the ``key_prefix`` fixture deletes them too.
Every wait is bounded; :meth:`WorkerHarness.close` kills whatever is left.

Also what the end-to-end tests check on workers and start them with: :func:`assert_discarded`,
:func:`one_critical_line`, :func:`refused_boot`, :data:`FAST_ENV` and :func:`fast_env`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery

import celery_redis_statedb.control  # noqa: F401  (adds Inspect.statedb_status)

T = TypeVar("T")

MODULE = "appmod"
TASK_NAME = f"{MODULE}.record"
CANNOT_START = "redis-statedb: cannot start worker"
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0
# Short Redis timeouts, so a worker notices a dead or stalled statedb server within a second. Only these:
# a test that wants a short boot timeout too (a boot meant to fail fast) or a frequent clock save says so.
SOCKET_TIMEOUT = 0.5
FAST_ENV = {
    "CELERY_REDIS_STATE_SOCKET_TIMEOUT": str(SOCKET_TIMEOUT),
    "CELERY_REDIS_STATE_CONNECT_TIMEOUT": str(SOCKET_TIMEOUT),
}

APP_TEMPLATE = '''\
"""Celery app written by tests/workers.py for one end-to-end test."""

from pathlib import Path

from celery import Celery

MARKERS = Path(__file__).resolve().parent / "markers"

app = Celery({module!r}, broker={broker!r}, set_as_current=True)
app.conf.update(
    broker_transport_options={transport!r},
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
)
app.conf.update({conf!r})


@app.task(name={task!r})
def record(marker: str) -> str:
    MARKERS.mkdir(exist_ok=True)
    (MARKERS / marker).write_text(marker)
    return marker
{install}'''

INSTALL_SNIPPET = '''
from celery_redis_statedb import install_redis_statedb  # noqa: E402

install_redis_statedb(app)
'''

# Variables of the test process that would change what a worker does.
DROPPED_ENV_PREFIXES = ("CELERY_", "REDIS_STATEDB_")


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something other than None/False; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class AppDir:
    """A directory holding one generated app module (run workers with it as cwd)."""

    path: Path
    install: bool

    @property
    def markers(self) -> Path:
        return self.path / "markers"

    def ran(self, marker: str) -> bool:
        return (self.markers / marker).exists()


def write_app(
    directory: Path,
    broker_url: str,
    *,
    install: bool,
    broker_prefix: str = "",
    conf: Mapping[str, object] | None = None,
) -> AppDir:
    """Write ``appmod.py`` (task ``appmod.record``) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    transport = {"global_keyprefix": broker_prefix} if broker_prefix else {}
    source = APP_TEMPLATE.format(
        module=MODULE, broker=broker_url, transport=transport, conf=dict(conf or {}), task=TASK_NAME,
        install=INSTALL_SNIPPET if install else "",
    )
    (directory / f"{MODULE}.py").write_text(source)
    return AppDir(directory, install)


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class WorkerProcess:
    """One worker (a hostname and a queue) that may be started, killed and started again."""

    app: AppDir
    name: str
    queue: str
    statedb: str | None  # None: no --statedb on the command line (e.g. CELERY_WORKER_STATEDB in env)
    pool: str = "solo"
    concurrency: int = 1
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    # Run the ``celery`` console script instead of ``python -m celery``: Celery's SIGHUP restart
    # re-executes ``sys.argv``, which only works for the script.
    script: bool = False
    # Gossip on (no --without-gossip): the worker follows other workers' events, and their clocks.
    gossip: bool = False

    @property
    def launcher(self) -> list[str]:
        if self.script:
            return [str(Path(sys.executable).with_name("celery"))]
        return [sys.executable, "-m", "celery"]

    @property
    def argv(self) -> list[str]:
        return [
            *self.launcher, "-A", MODULE, "worker",
            "-n", self.name, "-P", self.pool, "-c", str(self.concurrency),
            *(["--statedb", self.statedb] if self.statedb is not None else []), "-Q", self.queue,
            "--without-mingle", *([] if self.gossip else ["--without-gossip"]), "--without-heartbeat", "-l", "info",
            *self.extra_args,
        ]

    @property
    def log_path(self) -> Path:
        """The log of the current (or last) run."""
        if not self.logs:
            raise RuntimeError(f"worker {self.name} was never started")
        return self.logs[-1]

    def start(self, *, wait_ready: bool = True, timeout: float = READY_TIMEOUT) -> WorkerProcess:
        if self.running:
            raise RuntimeError(f"worker {self.name} is already running")
        log_path = self.app.path / f"{self.name.partition('@')[0]}-{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.app.path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=worker_env(self.env), start_new_session=True,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log(self) -> str:
        """Output of the current (or last) run."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def all_logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait for ``text`` in this run's output and return the first line holding it."""

        def line() -> str | None:
            found = next((ln for ln in self.log().splitlines() if text in ln), None)
            if found is None and not self.running:
                raise AssertionError(
                    f"worker {self.name} exited ({self.returncode}) before logging {text!r}:\n{self.log()}"
                )
            return found

        try:
            return wait_until(line, timeout, f"{text!r} in the log of {self.name}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; log so far:\n{self.log()}") from None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        self.wait_for_log(f"{self.name} ready.", timeout)

    def log_count(self, text: str) -> int:
        """How many lines of this run's output hold ``text``."""
        return sum(text in line for line in self.log().splitlines())

    def wait_for_log_count(self, text: str, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` lines of this run's output hold ``text`` (e.g. a second ``ready.``)."""

        def enough() -> bool:
            if self.log_count(text) >= count:
                return True
            if not self.running:
                raise AssertionError(f"worker {self.name} exited ({self.returncode}) before logging "
                                     f"{text!r} {count} times:\n{self.log()}")
            return False

        try:
            wait_until(enough, timeout, f"{count} x {text!r} in the log of {self.name}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; log so far:\n{self.log()}") from None

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the worker's main process only (as a process supervisor would)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def _signal_group(self, signum: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL the worker and its children (the whole process group), then reap it."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait(EXIT_TIMEOUT)

    def terminate(self, timeout: float = EXIT_TIMEOUT) -> int:
        """SIGTERM the main process (a warm shutdown) and wait for it to exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """The exit code; the worker is killed (and the test fails) if it has not exited in time."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker {self.name} did not exit within {timeout}s:\n{self.log()}") from None
        # Children of a prefork worker that its exit left behind.
        self._signal_group(signal.SIGKILL)
        return code

    def close(self) -> None:
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(EXIT_TIMEOUT)


class WorkerHarness:
    """Apps, workers and a control client for one test; :meth:`close` cleans up everything."""

    def __init__(self, root: Path, broker_url: str, *, broker_prefix: str = "") -> None:
        self.root, self.broker_url, self.broker_prefix = root, broker_url, broker_prefix
        self.workers: list[WorkerProcess] = []
        self._apps = 0
        self._control: Celery | None = None

    # -- apps and workers --------------------------------------------------

    def app(self, *, install: bool, conf: Mapping[str, object] | None = None) -> AppDir:
        self._apps += 1
        return write_app(self.root / f"app{self._apps}", self.broker_url, install=install,
                         broker_prefix=self.broker_prefix, conf=conf)

    def worker(
        self,
        app: AppDir,
        statedb: str | None,
        *,
        name: str | None = None,
        pool: str = "solo",
        concurrency: int = 1,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        script: bool = False,
        gossip: bool = False,
    ) -> WorkerProcess:
        """A worker (not started yet) with a unique hostname and queue unless told."""
        token = uuid.uuid4().hex[:12]
        worker = WorkerProcess(
            app=app, name=name or f"e2e-{token}@statedb-test", queue=f"statedb-e2e-{token}",
            statedb=statedb, pool=pool, concurrency=concurrency, extra_args=tuple(extra_args),
            env=dict(env or {}), script=script, gossip=gossip,
        )
        self.workers.append(worker)
        return worker

    # -- talking to workers through the broker ----------------------------

    @property
    def control_app(self) -> Celery:
        if self._control is None:
            app = Celery("statedb-e2e-control", broker=self.broker_url, set_as_current=False)
            app.conf.update(
                broker_transport_options={"global_keyprefix": self.broker_prefix} if self.broker_prefix else {},
                broker_connection_retry_on_startup=True,
                broker_connection_timeout=5,
            )
            self._control = app
        return self._control

    def wait_reachable(self, worker: WorkerProcess, timeout: float = 10.0) -> None:
        """Ping until the worker answers control commands (its pidbox may subscribe after ``ready.``)."""

        def answered() -> bool:
            if not worker.running:
                raise AssertionError(f"worker {worker.name} is not running:\n{worker.log()}")
            replies = self.control_app.control.ping(destination=[worker.name], timeout=0.5)
            return any(worker.name in reply for reply in replies or [])

        wait_until(answered, timeout, f"{worker.name} to answer a ping", interval=0.05)

    def revoke(self, worker: WorkerProcess, task_ids: Iterable[str], timeout: float = 5.0) -> list[dict[str, Any]]:
        """Revoke ``task_ids`` on ``worker`` and return its replies (fails when there is none)."""
        ids = list(task_ids)
        self.wait_reachable(worker)
        replies: list[dict[str, Any]] = self.control_app.control.revoke(
            ids, destination=[worker.name], reply=True, timeout=timeout
        ) or []
        assert any(worker.name in reply for reply in replies), f"no reply to revoke from {worker.name}: {replies}"
        return replies

    def try_revoke(self, worker: WorkerProcess, task_ids: Iterable[object], timeout: float = 1.0,
                   app: Celery | None = None) -> bool:
        """Revoke without waiting for the worker first; True when its reply came (the revoke was acked).

        ``app`` is a control app of the caller's own (one per thread: kombu connections are not
        thread-safe); by default the harness's.
        """
        control = (app or self.control_app).control
        replies = control.revoke(list(task_ids), destination=[worker.name], reply=True, timeout=timeout) or []
        return any(worker.name in reply for reply in replies)

    def new_control_app(self) -> Celery:
        """Another control app on the same broker (for a second thread); the caller closes it."""
        app = Celery("statedb-e2e-control-extra", broker=self.broker_url, set_as_current=False)
        app.conf.update(
            broker_transport_options={"global_keyprefix": self.broker_prefix} if self.broker_prefix else {},
            broker_connection_retry_on_startup=True,
            broker_connection_timeout=5,
        )
        return app

    def statedb_status(self, worker: WorkerProcess, timeout: float = 5.0) -> dict[str, Any]:
        """The worker's ``statedb_status`` inspect reply (``app.control.inspect().statedb_status()``)."""
        self.wait_reachable(worker)
        replies = self.control_app.control.inspect(destination=[worker.name], timeout=timeout).statedb_status()
        if not replies or worker.name not in replies:
            raise AssertionError(f"no reply to statedb_status from {worker.name}: {replies}")
        status: dict[str, Any] = replies[worker.name]
        return status

    def revoked_in_memory(self, worker: WorkerProcess, timeout: float = 5.0) -> set[str]:
        """The ids in the worker's ``state.revoked`` (Celery's ``inspect revoked``)."""
        self.wait_reachable(worker)
        replies = self.control_app.control.inspect(destination=[worker.name], timeout=timeout).revoked() or {}
        if worker.name not in replies:
            raise AssertionError(f"no reply to inspect revoked from {worker.name}: {replies}")
        return set(replies[worker.name])

    def send(self, worker: WorkerProcess, task_id: str, marker: str | None = None) -> None:
        """Send ``appmod.record(marker)`` with ``task_id`` to the worker's queue (marker = task id)."""
        self.control_app.send_task(TASK_NAME, args=[marker or task_id], task_id=task_id, queue=worker.queue)

    def wait_ran(self, worker: WorkerProcess, marker: str, timeout: float = 10.0) -> None:
        try:
            wait_until(lambda: worker.app.ran(marker), timeout, f"task marker {marker!r}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; worker log:\n{worker.log()}") from None

    # -- cleanup -----------------------------------------------------------

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        if self._control is not None:
            self._control.close()
            self._control = None


def new_task_id() -> str:
    return str(uuid.uuid4())


def fast_env(key_prefix: str | None = None, **settings: object) -> dict[str, str]:
    """A worker's environment: :data:`FAST_ENV`, the key prefix if given, and ``CELERY_REDIS_STATE_<NAME>``
    for each keyword (``boot_timeout=1`` is ``CELERY_REDIS_STATE_BOOT_TIMEOUT=1``)."""
    env = dict(FAST_ENV)
    if key_prefix is not None:
        env["CELERY_REDIS_STATE_KEY_PREFIX"] = key_prefix
    env.update({f"CELERY_REDIS_STATE_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def assert_discarded(harness: WorkerHarness, worker: WorkerProcess, revoked: str | Sequence[str],
                     timeout: float = 20.0) -> None:
    """Send the revoked id(s) as tasks, then a control task: the control runs, none of the others does.

    Each revoked task gets a short marker of its own: an id may be too long, or too odd, for a file name.
    """
    task_ids = [revoked] if isinstance(revoked, str) else list(revoked)
    markers = [f"revoked-{uuid.uuid4().hex}" for _ in task_ids]
    control = new_task_id()
    for task_id, marker in zip(task_ids, markers, strict=True):
        harness.send(worker, task_id, marker)
    harness.send(worker, control)
    harness.wait_ran(worker, control, timeout)
    for task_id in task_ids:
        worker.wait_for_log(f"Discarding revoked task: {TASK_NAME}[{task_id}]", timeout)
    log = worker.log()
    ran = [task_id[:60] for task_id, marker in zip(task_ids, markers, strict=True) if worker.app.ran(marker)]
    assert not ran, f"revoked tasks ran: {ran}\n{log[-5000:]}"
    succeeded = [task_id[:60] for task_id in task_ids if f"{TASK_NAME}[{task_id}] succeeded" in log]
    assert not succeeded, f"revoked tasks succeeded: {succeeded}\n{log[-5000:]}"


def one_critical_line(worker: WorkerProcess) -> str:
    """The worker's single CRITICAL ``cannot start worker`` line; no traceback, never ready."""
    log = worker.log()
    lines = [line for line in log.splitlines() if CANNOT_START in line]
    assert len(lines) == 1, log
    assert "CRITICAL" in lines[0], log
    assert "Traceback" not in log, log
    assert " ready." not in log, log
    return lines[0]


def refused_boot(worker: WorkerProcess, timeout: float = 30.0) -> tuple[int, str]:
    """Start a worker that must not boot: (its exit code, its :func:`one_critical_line`)."""
    worker.start(wait_ready=False)
    code = worker.wait_exit(timeout)
    return code, one_critical_line(worker)
