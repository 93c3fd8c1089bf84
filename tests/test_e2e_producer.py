"""End to end: revokes sent by producer processes (``celery control``, Flower) while no worker is online.

Each revoke must be stored in Redis by the producer itself; a worker with a hostname
nobody revoked anything for, started afterwards (worker scope), reads the fleet set at
boot and discards the task. Both app variants: ``install_redis_statedb(app)`` (the
Redis broker is the statedb) and no code change (the ``celery.commands`` entry point,
with the URL from ``$REDIS_STATEDB_URL``). Every wait is bounded; every process started
here is killed at the end.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from celery.bin import control as celery_control_command

from celery_redis_statedb.local_servers import free_port
from tests.keys import shared_key
from tests.workers import MODULE, AppDir, WorkerHarness, assert_discarded, new_task_id, wait_until, worker_env

pytestmark = pytest.mark.e2e

CONTROL_TIMEOUT = 60.0
CELERY_CLI_CATCHES_ERRORS = "except Exception" in inspect.getsource(celery_control_command)
FLOWER_READY_TIMEOUT = 45.0


def producer_app(harness: WorkerHarness, state_prefix: str, install: bool) -> AppDir:
    return harness.app(install=install, conf={"redis_state_key_prefix": state_prefix})


def producer_env(install: bool, redis_url: str, **extra: str) -> dict[str, str]:
    """With install the Redis broker is the statedb; without, the URL must be explicit."""
    env = {} if install else {"REDIS_STATEDB_URL": redis_url}
    env.update(extra)
    return worker_env(env)


def celery(app: AppDir, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", MODULE, *args], check=False, cwd=app.path,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CONTROL_TIMEOUT)


def assert_a_new_worker_discards(harness: WorkerHarness, app: AppDir, redis_url: str, task_id: str,
                                 stored: int = 1) -> None:
    worker = harness.worker(app, redis_url).start()  # a new hostname, worker scope: reads the fleet set
    assert f"redis-statedb: restored {stored} revoked ids" in worker.log(), worker.log()
    assert_discarded(harness, worker, task_id)
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize("install", [True, False], ids=["install", "no-code-change"])
def test_celery_control_revoke_with_no_worker_online_is_stored(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, install: bool
) -> None:
    app = producer_app(harness, state_prefix, install)
    task_id = new_task_id()

    done = celery(app, "control", "revoke", task_id, "--timeout", "0.5", env=producer_env(install, redis_url))

    assert done.returncode == os.EX_UNAVAILABLE == 69, done
    assert "No nodes replied" in done.stdout + done.stderr
    assert redis_client.zscore(shared_key(state_prefix), task_id) is not None, done
    assert_a_new_worker_discards(harness, app, redis_url, task_id)


def test_celery_control_revoke_with_redis_statedb_down_fails_and_names_the_masked_url(
    harness: WorkerHarness, redis_url: str, state_prefix: str
) -> None:
    app = producer_app(harness, state_prefix, install=False)
    dead = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"

    done = celery(app, "control", "revoke", new_task_id(), "--timeout", "0.5",
                  env=producer_env(False, redis_url, CELERY_WORKER_STATEDB=dead))

    output = done.stdout + done.stderr
    # Celery 5.7's control command turns the error into one line and exit 69; 5.3's lets the traceback out.
    assert done.returncode == (69 if CELERY_CLI_CATCHES_ERRORS else 1), output
    assert "NOT made durable and NOT broadcast" in output
    assert dead.replace("hunter2-secret", "***") in output
    assert "hunter2-secret" not in output
    assert "No nodes replied" not in output  # nothing was sent


def test_celery_control_revoke_without_a_statedb_url_is_plain_celery(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    """No install, no explicit URL: the Redis broker is not taken for a statedb."""
    app = producer_app(harness, state_prefix, install=False)
    task_id = new_task_id()
    done = celery(app, "control", "revoke", task_id, "--timeout", "0.5", env=worker_env())
    assert done.returncode == 69 and "No nodes replied" in done.stdout + done.stderr, done
    assert not redis_client.exists(shared_key(state_prefix))


# -- Flower -----------------------------------------------------------------------------


class Flower:
    """``celery -A appmod flower`` on a free loopback port, in a process group of its own."""

    def __init__(self, app: AppDir, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = app.path / f"flower-{self.port}.log"
        env = dict(env, FLOWER_UNAUTHENTICATED_API="true")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", MODULE, "flower", f"--port={self.port}",
                 "--address=127.0.0.1"],
                cwd=app.path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"flower exited ({self.process.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthcheck", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        try:
            wait_until(answers, FLOWER_READY_TIMEOUT, "flower to answer /healthcheck", interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{self.log()}") from None

    def post(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(f"{self.base}{path}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(20)


@contextlib.contextmanager
def flower(app: AppDir, env: dict[str, str]) -> Iterator[Flower]:
    server = Flower(app, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("install", [True, False], ids=["install", "no-code-change"])
def test_flower_revoke_with_no_worker_online_is_stored(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, install: bool
) -> None:
    pytest.importorskip("flower")
    app = producer_app(harness, state_prefix, install)
    task_id = new_task_id()

    with flower(app, producer_env(install, redis_url)) as server:
        status, body = server.post(f"/api/task/revoke/{task_id}")
        assert status == 200, f"{status} {body}\n{server.log()}"
        assert json.loads(body) == {"message": f"Revoked '{task_id}'"}
        assert redis_client.zscore(shared_key(state_prefix), task_id) is not None, server.log()

        terminated = new_task_id()
        status, body = server.post(f"/api/task/revoke/{terminated}?terminate=true&signal=SIGKILL")
        assert status == 200, f"{status} {body}"
        assert redis_client.zscore(shared_key(state_prefix), terminated) is not None
        assert "Traceback" not in server.log(), server.log()

    assert_a_new_worker_discards(harness, app, redis_url, task_id, stored=2)


def test_flower_revoke_with_redis_statedb_down_is_an_error_and_not_broadcast(
    harness: WorkerHarness, redis_url: str, state_prefix: str
) -> None:
    pytest.importorskip("flower")
    app = producer_app(harness, state_prefix, install=False)
    dead = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    with flower(app, producer_env(False, redis_url, REDIS_STATEDB_URL=dead)) as server:
        status, _ = server.post(f"/api/task/revoke/{new_task_id()}")
        assert status == 500
        wait_until(lambda: "NOT made durable and NOT broadcast" in server.log(), 10, "the error in flower's log")
        assert "hunter2-secret" not in server.log()
