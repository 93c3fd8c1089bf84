"""Every ``celery statedb`` command once as a real subprocess (``python -m celery -A app statedb ...``),
as an operator or a cron job runs it: the entry point loads, output and exit codes are the runner's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from statedb.keys import KeySchema
from tests.file_statedb import write_celery_statedb

DAY = 86400


@pytest.fixture
def app_dir(tmp_path: Path, redis_url: str, key_prefix: str, redis_client: redis.Redis) -> Path:
    (tmp_path / "subapp.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('subapp', broker={redis_url!r})\n"
        f"app.conf.redis_state_key_prefix = {key_prefix!r}\n"
        f"app.conf.broker_transport_options = {{'global_keyprefix': {key_prefix + 'broker:'!r}}}\n")
    schema, now = KeySchema(key_prefix), int(redis_client.time()[0])
    redis_client.zadd(schema.revoked_key("a@h"), {"old-1": now - 40 * DAY, "new-1": now - 60})
    redis_client.set(schema.clock_key("a@h"), 7)
    redis_client.hset(schema.info_key("a@h"), mapping={"last_seen": f"{now - 45 * DAY}", "scope": "worker"})
    write_celery_statedb(tmp_path / "old.db", ["m-1"], 3)
    return tmp_path


COMMANDS: list[tuple[list[str], int, str]] = [
    (["check", "--worker", "a@h"], 0, "url_source: --url"),
    (["workers"], 0, "1 worker: 2 revoked ids in 1 set"),
    (["inspect", "a@h"], 0, "revoked: 2"),
    (["inspect", "nosuch@box"], 1, "no state for worker nosuch@box under prefix"),
    (["ls", "a@h", "--limit", "1"], 0, "new-1"),
    (["where", "new-1"], 0, "a@h"),
    (["purge", "--older-than", "30d", "--dry-run"], 0, "would remove 1 revoked id"),
    (["revoke", "t-1", "--no-broadcast"], 0, "stored 1 id in the fleet set (1 new)"),
    (["restore", "new-1", "--no-broadcast"], 0, "removed 1 stored revocation (a@h: 1)"),
    (["migrate", "old.db", "--worker", "m@h", "--dry-run"], 0, "would add 1"),
    (["forget", "a@h", "--dry-run", "--timeout", "0.5"], 0, "would forget 1 worker (3 keys)"),
    (["prune", "--idle-for", "30d", "--dry-run", "--timeout", "0.5"], 0, "would forget 1 worker"),
    (["health", "--timeout", "0.5"], 0, "no live worker answered"),
    (["metrics", "--timeout", "0.5"], 0, 'celery_statedb_revoked_ids{hostname="a@h"} 2.0'),
]


@pytest.mark.parametrize(("args", "code", "fragment"), COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_each_command_as_a_subprocess(app_dir: Path, redis_url: str, args: list[str], code: int,
                                      fragment: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_STATEDB_"))}
    env["PYTHONPATH"] = str(app_dir)
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "subapp", "statedb", "--url", redis_url, *args],
                          cwd=app_dir, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert fragment in output, output
    assert "Traceback" not in output
