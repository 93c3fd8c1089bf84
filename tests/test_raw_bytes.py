"""Keys and members holding any bytes, against a real server: through the CLI and the APIs.

A key name that is not UTF-8, or holds a newline, is still listed, inspected, purged and
restored (its bytes are used as they are); data read from Redis is escaped on a terminal
(repr) and JSON-safe in ``--json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
import redis
from click.testing import CliRunner, Result

import statedb
from statedb.stamps_admin import inspect_stamps
from tests.cli_runner import cli_app, run_cli

ESC_ID = "\x1b[31mRED\x1b[0m\x1b]0;title\x07"


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    return cli_app(tmp_path, redis_url, key_prefix, monkeypatch)


def run(cli: CliRunner, redis_url: str, *args: str) -> Result:
    result = run_cli(cli, redis_url, *args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def seeded(redis_client: redis.Redis, key_prefix: str) -> dict[str, bytes]:
    prefix, now = key_prefix.encode(), time.time()
    keys = {
        "newline": prefix + b"nl\nname@h:revoked",
        "newline-clock": prefix + b"nl\nname@h:clock",
        "binary": prefix + b"bad\xff\xfe@h:revoked",
        "binary-stamps": prefix + b"bad\xff@h:stamps",
        "esc": prefix + b"esc@h:revoked",
    }
    redis_client.zadd(keys["newline"], {"t-nl": now - 60})
    redis_client.set(keys["newline-clock"], 5)
    redis_client.zadd(keys["binary"], {"t-old": now - 40 * 86400, "t-new": now - 5})
    redis_client.zadd(keys["binary-stamps"], {'["batch","b-1"]': now - 40 * 86400})
    redis_client.zadd(keys["esc"], {ESC_ID: now - 1})
    return keys


def no_raw_control(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text)


def test_workers_table_and_json_with_odd_key_names(cli: CliRunner, redis_url: str, seeded: dict[str, bytes]) -> None:
    table = run(cli, redis_url, "workers").output
    no_raw_control(table)
    lines = table.splitlines()
    # header, one row per worker (the newline escaped; the stamps-only one too), summary
    assert len(lines) == 1 + 4 + 1, table
    assert any(line.startswith("'nl\\nname@h'") and " 5 " in line for line in lines), table
    assert any("bad\\xff\\xfe@h" in line for line in lines), table
    assert "4 workers: 4 revoked ids in 3 sets" in table
    rows = json.loads(run(cli, redis_url, "workers", "--json").output)
    by_worker = {row["worker"]: row for row in rows}
    assert by_worker["nl\nname@h"]["clock"] == 5
    assert by_worker["bad\\xff\\xfe@h"]["revoked_count"] == 2
    assert by_worker["bad\\xff\\xfe@h"]["key"].endswith("bad\\xff\\xfe@h:revoked")


def test_ls_and_where_escape_what_redis_holds(cli: CliRunner, redis_url: str, seeded: dict[str, bytes]) -> None:
    table = run(cli, redis_url, "ls", "esc@h").output
    no_raw_control(table)
    assert repr(ESC_ID) in table
    as_json = run(cli, redis_url, "ls", "esc@h", "--json").output
    no_raw_control(as_json)
    assert [row["task_id"] for row in json.loads(as_json)] == [ESC_ID]  # exactly, once decoded
    where = run(cli, redis_url, "where", "t-nl").output
    assert "'nl\\nname@h'" in where and len(where.splitlines()) == 1 + 1, where  # a header, one row
    inspect = run(cli, redis_url, "inspect", "esc@h").output
    no_raw_control(inspect)


def test_purge_and_restore_reach_keys_that_are_not_utf8(
    cli: CliRunner, redis_url: str, seeded: dict[str, bytes], redis_client: redis.Redis
) -> None:
    dry = run(cli, redis_url, "purge", "--older-than", "30d", "--dry-run").output
    assert "would remove 1 revoked id older than 30d from 1 of 3 sets" in dry, dry
    run(cli, redis_url, "purge", "--older-than", "30d", "--yes")
    assert redis_client.zscore(seeded["binary"], "t-old") is None
    assert redis_client.zscore(seeded["binary"], "t-new") is not None
    assert not redis_client.exists(seeded["binary-stamps"])  # stamps purged by the same age
    restored = run(cli, redis_url, "restore", "t-new", "t-nl", "--no-broadcast").output
    assert "removed 2 stored revocations" in restored
    assert not redis_client.exists(seeded["binary"]) and not redis_client.exists(seeded["newline"])


def test_the_async_apis_on_odd_keys(redis_url: str, key_prefix: str, seeded: dict[str, bytes],
                                    redis_client: redis.Redis) -> None:
    async def scenario() -> None:
        states = {s.worker: s for s in await statedb.inspect_workers(redis_url, key_prefix=key_prefix)}
        assert states["nl\nname@h"].clock == 5 and states["nl\nname@h"].revoked_count == 1
        assert states["bad\\xff\\xfe@h"].revoked_count == 2
        json.dumps([state.as_dict() for state in states.values()])  # JSON-safe
        assert "nl\nname@h" in await statedb.list_workers(redis_url, key_prefix=key_prefix)
        places = await statedb.where_revoked(redis_url, "t-new", key_prefix=key_prefix)
        assert [p.worker for p in places] == ["bad\\xff\\xfe@h"]
        stamps = await inspect_stamps(redis_url, key_prefix=key_prefix)
        assert [(s.worker, s.stamps_count) for s in stamps] == [("bad\\xff@h", 1)]
        assert await statedb.restore_stamps(redis_url, [("batch", "b-1")], key_prefix=key_prefix) == 1
        assert await statedb.purge_old_revoked(redis_url, older_than="30d", key_prefix=key_prefix) == 1
        assert await statedb.restore(redis_url, ["t-new"], key_prefix=key_prefix) == 1

    anyio.run(scenario)
    assert not redis_client.exists(seeded["binary"]) and not redis_client.exists(seeded["binary-stamps"])
    assert redis_client.zscore(seeded["esc"], ESC_ID) is not None
