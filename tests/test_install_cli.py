"""Wiring into Celery: the worker_init claim, install_redis_statedb, the entry point and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from celery_redis_statedb import RedisStateDB, install_redis_statedb
from celery_redis_statedb.bootstep import CLAIMED_URL_ATTR
from celery_redis_statedb.install import claim_redis_statedb


def fake_worker(statedb: Any, **options: Any) -> SimpleNamespace:
    return SimpleNamespace(statedb=statedb, options=options, app=Celery("t", set_as_current=False))


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h/1", "unix:///tmp/r.sock", "redis+sentinel://h1,h2/svc",
                                 "rediss+sentinel://h:26379/svc/1", "sentinel://h1:26379;sentinel://h2:26379/0",
                                 "redis+cluster://h1:7000,h2:7000", "rediss+cluster://h1:7000/0"])
def test_a_redis_url_is_claimed_from_celery_file_statedb(url: str) -> None:
    worker = fake_worker(url)
    claim_redis_statedb(worker)
    assert worker.statedb is None  # Celery's own StateDB step stays disabled
    assert getattr(worker, CLAIMED_URL_ATTR) == url
    assert RedisStateDB in worker.app.steps["worker"]


@pytest.mark.parametrize("path", ["/var/run/worker.db", "worker-%n.state", None, ""])
def test_file_paths_are_left_to_celery(path: str | None) -> None:
    worker = fake_worker(path)
    claim_redis_statedb(worker)
    assert worker.statedb == path
    assert not hasattr(worker, CLAIMED_URL_ATTR)
    assert RedisStateDB not in worker.app.steps["worker"]


def test_the_0_2_option_still_works() -> None:
    worker = fake_worker(None, redis_statedb="redis://h:6379/0")
    claim_redis_statedb(worker)
    assert getattr(worker, CLAIMED_URL_ATTR) == "redis://h:6379/0"


def test_install_is_idempotent() -> None:
    app = Celery("t", set_as_current=False)
    install_redis_statedb(app)
    install_redis_statedb(app)
    assert RedisStateDB in app.steps["worker"]
    from celery.bin.worker import worker

    names = [param.name for param in worker.params]
    assert names.count("redis_state_key_prefix") == 1


def test_the_entry_point_is_registered() -> None:
    (entry,) = [e for e in entry_points(group="celery.commands") if e.name == "statedb"]
    assert entry.value == "celery_redis_statedb.cli:statedb"


@pytest.fixture
def app_dir(tmp_path: Path, redis_url: str) -> Path:
    (tmp_path / "cliapp.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('cliapp', broker={redis_url!r})\n"
    )
    return tmp_path


def run_celery(app_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cliapp", *args],
        cwd=app_dir, capture_output=True, text=True, timeout=60, env=env, check=False,
    )


def test_statedb_check_through_the_real_celery_command(
    app_dir: Path, redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    redis_client.zadd(f"{key_prefix}w@h:revoked", {"a": 1.0, "b": 2.0})
    env = {**os.environ, "CELERY_REDIS_STATE_KEY_PREFIX": key_prefix}
    done = run_celery(app_dir, "statedb", "--url", redis_url, "check", "--worker", "w@h", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["revoked_count"] == 2
    assert report["revoked_key"] == f"{key_prefix}w@h:revoked"


def test_statedb_check_errors_are_one_clear_line_without_secrets(app_dir: Path) -> None:
    done = run_celery(app_dir, "statedb", "--url", "redis://:s3cret@127.0.0.1:1/0", "check", "--worker", "w@h")
    assert done.returncode != 0
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_statedb_check_names_a_malformed_url(app_dir: Path) -> None:
    done = run_celery(app_dir, "statedb", "--url", "redis://h:6379/abc", "check")
    assert done.returncode != 0
    assert "database number 'abc'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_malformed_legacy_option_is_claimed_so_the_worker_fails_clearly() -> None:
    worker = fake_worker(None, redis_statedb="localhost:6379")
    claim_redis_statedb(worker)
    assert getattr(worker, CLAIMED_URL_ATTR) == "localhost:6379"  # the step then stops with exit 78
