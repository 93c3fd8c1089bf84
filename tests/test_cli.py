"""``celery -A app statedb ...`` through click's runner, against a real server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from statedb.keys import KeySchema
from tests.cli_runner import cli_app, run_cli
from tests.file_statedb import write_celery_statedb


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    return cli_app(tmp_path, redis_url, key_prefix, monkeypatch)


run = run_cli


@pytest.fixture
def seeded(redis_client: redis.Redis, key_prefix: str) -> dict[str, str]:
    schema, now = KeySchema(key_prefix), time.time()
    keys = {"a": schema.revoked_key("a@h"), "b": schema.revoked_key("b@h"), "fleet": schema.shared_revoked_key}
    redis_client.zadd(keys["a"], {"old-1": now - 40 * 86400, "new-1": now - 60})
    redis_client.zadd(keys["b"], {"old-2": now - 31 * 86400})
    redis_client.zadd(keys["fleet"], {"new-2": now - 5})
    redis_client.set(schema.clock_key("a@h"), 7)
    return keys


def test_workers_table_and_json(cli: CliRunner, redis_url: str, seeded: dict[str, str]) -> None:
    table = run(cli, redis_url, "workers")
    assert table.exit_code == 0, table.output
    assert "a@h" in table.output and "b@h" in table.output and "(fleet)" in table.output
    assert table.output.splitlines()[0].split() == ["WORKER", "SCOPE", "REVOKED", "OLDEST", "(UTC)", "NEWEST",
                                                    "(UTC)", "CLOCK", "LAST", "SEEN", "(UTC)", "MEMORY"]
    assert "2 workers and the fleet set: 4 revoked ids in 3 sets" in table.output
    data = json.loads(run(cli, redis_url, "workers", "--json").output)
    by_worker = {row["worker"]: row for row in data}
    assert by_worker["a@h"]["revoked_count"] == 2 and by_worker["a@h"]["clock"] == 7
    assert by_worker["fleet"]["revoked_count"] == 1


def test_inspect_ls_and_where(cli: CliRunner, redis_url: str, seeded: dict[str, str]) -> None:
    state = json.loads(run(cli, redis_url, "inspect", "a@h", "--json").output)
    assert state["revoked_count"] == 2 and state["key"] == seeded["a"]
    rows = json.loads(run(cli, redis_url, "ls", "a@h", "--json").output)
    assert [row["task_id"] for row in rows] == ["new-1", "old-1"]
    assert json.loads(run(cli, redis_url, "ls", "--fleet", "--json").output)[0]["task_id"] == "new-2"
    assert run(cli, redis_url, "ls", "a@h", "--limit", "1").output.strip().endswith("new-1")
    places = json.loads(run(cli, redis_url, "where", "old-2", "--json").output)
    assert [p["worker"] for p in places] == ["b@h"]
    assert "not revoked anywhere" in run(cli, redis_url, "where", "nope").output


def test_purge_dry_run_then_yes(cli: CliRunner, redis_url: str, seeded: dict[str, str],
                                redis_client: redis.Redis) -> None:
    dry = run(cli, redis_url, "purge", "--older-than", "30d", "--dry-run")
    assert dry.exit_code == 0 and "would remove 2 revoked ids" in dry.output
    assert redis_client.zcard(seeded["a"]) == 2
    refused = run(cli, redis_url, "purge", "--older-than", "30d")
    assert refused.exit_code != 0 and "--yes" in refused.output
    done = run(cli, redis_url, "purge", "--older-than", "30d", "--yes", "--json")
    assert json.loads(done.output)["removed"] == 2
    assert redis_client.zcard(seeded["a"]) == 1 and not redis_client.exists(seeded["b"])


def test_purge_one_worker(cli: CliRunner, redis_url: str, seeded: dict[str, str], redis_client: redis.Redis) -> None:
    result = run(cli, redis_url, "purge", "--older-than", "30d", "--worker", "b@h", "--yes")
    assert "removed 1 revoked id older than 30d from b@h's set, and 0 stamped-header revokes as old" in result.output
    assert redis_client.zcard(seeded["a"]) == 2


def test_revoke_and_restore_without_live_workers(cli: CliRunner, redis_url: str, seeded: dict[str, str],
                                                 redis_client: redis.Redis) -> None:
    stored = run(cli, redis_url, "revoke", "t-1", "t-2", "--no-broadcast")
    assert stored.exit_code == 0 and "(2 new)" in stored.output
    assert redis_client.zscore(seeded["fleet"], "t-1") is not None
    restored = run(cli, redis_url, "restore", "t-1", "old-1", "--no-broadcast")
    assert "removed 2 stored revocations" in restored.output
    assert redis_client.zscore(seeded["a"], "old-1") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [(["purge", "--older-than", "soon", "--yes"], "not understood"),
     (["inspect"], "name a WORKER, or pass --fleet"),
     (["ls", "a@h", "--fleet"], "name a WORKER, or pass --fleet")],
)
def test_bad_input_is_one_clear_line(cli: CliRunner, redis_url: str, args: list[str], message: str) -> None:
    result = run(cli, redis_url, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_unreachable_redis_is_one_line_without_password(cli: CliRunner) -> None:
    result = run(cli, "redis://:hunter2@127.0.0.1:1/0", "workers")
    assert result.exit_code == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in result.output
    assert "hunter2" not in result.output


def test_migrate_a_celery_file_statedb_twice(cli: CliRunner, redis_url: str, key_prefix: str, tmp_path: Path,
                                             redis_client: redis.Redis) -> None:
    db = tmp_path / "worker.db"
    write_celery_statedb(db, ["m-1", "m-2"], 41)
    before = sorted(p.name for p in tmp_path.iterdir())
    dry = run(cli, redis_url, "migrate", str(db), "--worker", "w@h", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would add 2" in dry.output
    assert not redis_client.exists(KeySchema(key_prefix).revoked_key("w@h"))
    first = json.loads(run(cli, redis_url, "migrate", str(db), "--worker", "w@h", "--json").output)
    assert first["ids_added"] == 2 and first["clock_after"] >= 42
    again = json.loads(run(cli, redis_url, "migrate", str(db), "--worker", "w@h", "--json").output)
    assert again["ids_added"] == 0 and again["clock_after"] == first["clock_after"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the source is never renamed or removed


def test_migrate_needs_a_path_or_legacy_blob(cli: CliRunner, redis_url: str) -> None:
    result = run(cli, redis_url, "migrate", "--worker", "w@h")
    assert result.exit_code != 0 and "give the PATH" in result.output


def test_migrate_a_missing_file_is_one_line(cli: CliRunner, redis_url: str, tmp_path: Path) -> None:
    result = run(cli, redis_url, "migrate", str(tmp_path / "nope.db"), "--worker", "w@h")
    assert result.exit_code == 1
    assert "nope.db" in result.output and "Traceback" not in result.output


def test_check_shows_the_horizon(cli: CliRunner, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    report = json.loads(run(cli, redis_url, "check", "--worker", "a@h", "--json").output)
    assert report["horizon"] == "no limit"
    monkeypatch.setenv("CELERY_REDIS_STATE_HORIZON", "30d")
    report = json.loads(run(cli, redis_url, "check", "--worker", "a@h", "--json").output)
    assert report["horizon"] == "30d"
