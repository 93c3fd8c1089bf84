"""``celery statedb`` as an operator meets it (issue 12), through click's runner against a real server.

Regression tests for the defects of the issue: the Redis the CLI reads (1), restore for one
worker (3), dead workers (5), unknown names (6), ids with control characters (7), errors that
name their source (8); and the CLI made consistent: options anywhere, ``--json`` everywhere
with one shape per object, headers, UTC labels and plurals, purge's guard and prompt.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import redis
from celery.bin.celery import celery
from click.testing import CliRunner, Result

from celery_redis_statedb import cli as cli_module
from celery_redis_statedb.local_servers import PrivateServer, free_port
from celery_redis_statedb.settings import percent_escape
from statedb.keys import KeySchema

DAY = 86400


@pytest.fixture(autouse=True)
def no_statedb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("CELERY_", "REDIS_STATEDB_"))]:
        monkeypatch.delenv(name)


def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: str, key_prefix: str, **conf: object) -> str:
    """An app module (broker keys under the test's prefix); its name for ``-A``."""
    module = f"opapp_{tmp_path.name.replace('-', '_')}"
    lines = ["from celery import Celery", f"app = Celery('opapp', broker={broker!r}, set_as_current=False)",
             f"app.conf.redis_state_key_prefix = {key_prefix!r}",
             f"app.conf.broker_transport_options = {{'global_keyprefix': {key_prefix + 'broker:'!r}}}"]
    lines += [f"app.conf.{name} = {value!r}" for name, value in conf.items()]
    (tmp_path / f"{module}.py").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> str:
    return write_app(tmp_path, monkeypatch, redis_url, key_prefix)


def run(module: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(celery, ["-A", module, "statedb", *args], input=input, catch_exceptions=False)


def ok(module: str, *args: str) -> Result:
    result = run(module, *args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def seeded(redis_client: redis.Redis, key_prefix: str) -> int:
    schema, now = KeySchema(key_prefix), int(redis_client.time()[0])
    redis_client.zadd(schema.revoked_key("a@h"), {"old-1": now - 40 * DAY, "new-1": now - 60})
    redis_client.set(schema.clock_key("a@h"), 7)
    redis_client.hset(schema.info_key("a@h"), mapping={"last_seen": f"{now - 45 * DAY}", "scope": "worker"})
    redis_client.set(schema.clock_key("s@h"), 3)
    redis_client.hset(schema.info_key("s@h"), mapping={"last_seen": f"{now - 5}", "scope": "shared"})
    redis_client.zadd(schema.shared_revoked_key, {"fleet-1": now - 5, "new-1": now - 30})
    return now


# -- defect 1: the Redis the CLI reads is the workers' -------------------------------------------


def test_the_url_comes_from_celery_worker_statedb_as_celery_worker_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str,
) -> None:
    """CELERY_WORKER_STATEDB (the README's advice) first, before worker_state_db, as ``celery worker``
    itself reads them; never the broker when one is configured."""
    base = redis_url.rsplit("/", 1)[0]
    broker, statedb, conf_db = f"{base}/0", f"{base}/1", f"{base}/2"
    for url, worker in ((broker, "in-broker@h"), (statedb, "in-statedb@h"), (conf_db, "in-conf@h")):
        client = redis.Redis.from_url(url)
        client.zadd(KeySchema(key_prefix).revoked_key(worker), {"x": 1.0, "y": 2.0})
        client.close()
    try:
        module = write_app(tmp_path, monkeypatch, broker, key_prefix, worker_state_db=conf_db)
        monkeypatch.setenv("CELERY_WORKER_STATEDB", statedb)
        report = json.loads(ok(module, "check", "--worker", "in-statedb@h", "--json").output)
        assert report["revoked_count"] == 2 and report["url"] == statedb
        assert report["url_source"] == "environment variable CELERY_WORKER_STATEDB"
        assert json.loads(ok(module, "workers", "--json").output)[0]["worker"] == "in-statedb@h"
        monkeypatch.delenv("CELERY_WORKER_STATEDB")
        assert json.loads(ok(module, "check", "--json").output)["url_source"] == "app.conf.worker_state_db"
        assert [w["worker"] for w in json.loads(ok(module, "workers", "--json").output)] == ["in-conf@h"]
    finally:
        for url in (f"{base}/1", f"{base}/2"):
            client = redis.Redis.from_url(url)
            for key in client.scan_iter(match=f"{key_prefix}*"):
                client.delete(key)
            client.close()


def test_check_says_when_it_falls_back_to_the_broker(app_module: str, redis_url: str) -> None:
    result = ok(app_module, "check")
    assert "url_source: app.conf.broker_url (the broker: no statedb URL is configured" in result.output
    assert "note: this is the broker" in result.output


def test_a_file_statedb_is_never_replaced_by_the_broker(app_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_WORKER_STATEDB", "/var/run/celery/worker.db")
    result = run(app_module, "workers")
    assert result.exit_code == 1
    assert "CELERY_WORKER_STATEDB is '/var/run/celery/worker.db', a file path" in result.output
    assert "--url" in result.output


def test_no_url_anywhere_names_the_option_and_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           key_prefix: str) -> None:
    module = write_app(tmp_path, monkeypatch, "amqp://guest@localhost//", key_prefix)
    result = run(module, "workers")
    assert result.exit_code == 1
    assert ("no Redis URL for the statedb: set one with --url, $CELERY_WORKER_STATEDB, app.conf.worker_state_db "
            "or $REDIS_STATEDB_URL") in result.output
    assert "redis_url" not in result.output  # a Python argument means nothing at a terminal


@pytest.mark.skipif(not percent_escape(), reason="this Celery has no %% escape (5.3): the README says so")
def test_a_percent_encoded_password_written_for_celery_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             key_prefix: str) -> None:
    """The README tells to write ``p%%40ss`` in CELERY_WORKER_STATEDB: the CLI expands it as the worker does."""
    server = PrivateServer(password="p@ss").start()
    try:
        module = write_app(tmp_path, monkeypatch, "amqp://guest@localhost//", key_prefix)
        monkeypatch.setenv("CELERY_WORKER_STATEDB", f"redis://:p%%40ss@127.0.0.1:{server.port}/0")
        report = json.loads(ok(module, "check", "--worker", "w@h", "--json").output)
        assert report["url"] == f"redis://:***@127.0.0.1:{server.port}/0"
        monkeypatch.setenv("CELERY_WORKER_STATEDB", f"redis://:p%40ss@127.0.0.1:{server.port}/0")
        result = run(module, "check")
        assert result.exit_code == 1 and "cannot expand (write a literal % as %%)" in result.output
        assert "p%40ss" not in result.output and "p@ss" not in result.output
    finally:
        server.close()


# -- options anywhere, and errors that name their source (defect 8) ------------------------------


def test_url_prefix_and_scope_before_or_after_the_subcommand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str, seeded: int,
) -> None:
    module = write_app(tmp_path, monkeypatch, "amqp://guest@localhost//", "some-other-prefix:")
    before = ok(module, "--url", redis_url, "--key-prefix", key_prefix, "--scope", "worker", "workers", "--json")
    after = ok(module, "workers", "--url", redis_url, "--key-prefix", key_prefix, "--scope", "worker", "--json")
    assert before.output == after.output and len(json.loads(after.output)) == 3
    mixed = ok(module, "--url", f"redis://127.0.0.1:{free_port()}/0", "--key-prefix", "x:", "workers", "--url",
               redis_url, "--key-prefix", key_prefix, "--json")  # the subcommand's own win
    assert mixed.output == after.output
    report = json.loads(ok(module, "check", "--url", redis_url, "--scope", "shared", "--json").output)
    assert report["scope"] == "shared" and report["url_source"] == "--url"


@pytest.mark.parametrize(
    ("env", "args", "fragment"),
    [({"CELERY_REDIS_STATE_SCOPE": "Shared"}, [],
      "environment variable CELERY_REDIS_STATE_SCOPE='Shared' is not valid: scope must be one of 'worker', 'shared'"),
     ({"CELERY_REDIS_STATE_ON_UNAVAILABLE": "retry"}, [],
      "CELERY_REDIS_STATE_ON_UNAVAILABLE='retry' is not valid: on_unavailable must be one of 'fail', 'degrade'"),
     ({}, ["--key-prefix", "a\nb"], "--key-prefix='a\\nb' is not valid: key prefix"),
     ({"REDIS_STATEDB_URL": "http://x"}, [], "environment variable REDIS_STATEDB_URL='http://x' is not valid"),
     ({}, ["--url", "redis://h:99999/0"], "--url: malformed Redis URL")],
)
def test_configuration_errors_name_the_setting_its_source_and_what_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_prefix: str, env: dict[str, str], args: list[str],
    fragment: str,
) -> None:
    module = write_app(tmp_path, monkeypatch, "amqp://guest@localhost//", key_prefix)
    monkeypatch.setenv("CELERY_WORKER_STATEDB", "redis://127.0.0.1:6379/0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "REDIS_STATEDB_URL" in env:
        monkeypatch.delenv("CELERY_WORKER_STATEDB")
    result = run(module, "workers", *args)
    assert result.exit_code == 1, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


# -- the listings: one population, headers, UTC, plurals, one JSON shape (defect 4) --------------


def test_workers_lists_shared_scope_workers_with_scope_clock_and_last_seen(app_module: str, redis_url: str,
                                                                           seeded: int) -> None:
    table = ok(app_module, "--url", redis_url, "workers").output.splitlines()
    assert table[0].split()[:3] == ["WORKER", "SCOPE", "REVOKED"] and "LAST SEEN (UTC)" in table[0]
    shared = next(line for line in table if line.startswith("s@h"))
    assert shared.split()[1:3] == ["shared", "(fleet)"] and " 3 " in shared
    assert table[-1] == "2 workers (1 in the shared scope) and the fleet set: 4 revoked ids in 2 sets"
    rows = {row["worker"]: row for row in json.loads(ok(app_module, "--url", redis_url, "workers", "--json").output)}
    assert rows["s@h"]["scope"] == "shared" and rows["s@h"]["clock"] == 3 and rows["s@h"]["last_seen"].endswith("Z")
    assert rows["fleet"]["revoked_count"] == 2


def test_one_json_shape_per_object_across_commands(app_module: str, redis_url: str, seeded: int) -> None:
    listed = json.loads(ok(app_module, "--url", redis_url, "ls", "a@h", "--json").output)
    where = json.loads(ok(app_module, "--url", redis_url, "where", "new-1", "--json").output)
    fleet = json.loads(ok(app_module, "--url", redis_url, "ls", "--fleet", "--json").output)
    for row in [*listed, *where, *fleet]:
        assert set(row) == {"task_id", "worker", "key", "revoked_at", "revoked_at_epoch"}
        assert row["revoked_at"].endswith("Z") and isinstance(row["revoked_at_epoch"], float)
    assert listed[0] == next(r for r in where if r["worker"] == "a@h")
    assert {r["worker"] for r in where} == {"a@h", "fleet"} and fleet[0]["worker"] == "fleet"
    revoked = json.loads(ok(app_module, "--url", redis_url, "revoke", "t-1", "--no-broadcast", "--json").output)
    assert (revoked["worker"], revoked["task_ids"], revoked["added"], revoked["broadcast"]) == (
        "fleet", ["t-1"], 1, False)
    restored = json.loads(ok(app_module, "--url", redis_url, "restore", "t-1", "--no-broadcast", "--json").output)
    assert restored["removed"] == 1 and restored["sets"] == [
        {"worker": "fleet", "key": revoked["key"], "count": 1}]
    purged = json.loads(ok(app_module, "--url", redis_url, "purge", "--older-than", "30d", "--yes", "--json").output)
    assert purged["removed"] == 1 and purged["cutoff"].endswith("Z") and purged["older_than"] == "30d"
    inspected = json.loads(ok(app_module, "--url", redis_url, "inspect", "a@h", "--json").output)
    assert inspected["worker"] == "a@h" and inspected["stamps"]["worker"] == "a@h"


def test_text_has_headers_utc_labels_and_plurals(app_module: str, redis_url: str, seeded: int) -> None:
    listed = ok(app_module, "--url", redis_url, "ls", "a@h").output.splitlines()
    assert listed[0].split() == ["REVOKED", "AT", "(UTC)", "TASK", "ID"] and listed[1].endswith("new-1")
    where = ok(app_module, "--url", redis_url, "where", "fleet-1").output.splitlines()
    assert where[0].split() == ["REVOKED", "AT", "(UTC)", "WORKER"] and where[1].endswith("(fleet)")
    assert "oldest (UTC)" in ok(app_module, "--url", redis_url, "inspect", "a@h").output
    assert "stored 1 id in the fleet set (1 new)" in ok(app_module, "--url", redis_url, "revoke", "t-1",
                                                       "--no-broadcast").output
    dry = ok(app_module, "--url", redis_url, "purge", "--older-than", "30d", "--dry-run").output
    assert dry.startswith("would remove 1 revoked id older than 30d from 1 of 2 sets (a@h: 1)")
    assert "would forget 1 worker (3 keys)" in ok(app_module, "--url", redis_url, "forget", "a@h",
                                                   "--dry-run").output


# -- defect 3: restore for one worker also lifts the fleet entry that binds it at boot --------


def test_restore_for_one_worker_also_removes_the_fleet_entry_and_says_so(
    app_module: str, redis_url: str, key_prefix: str, seeded: int, redis_client: redis.Redis
) -> None:
    schema = KeySchema(key_prefix)
    result = ok(app_module, "--url", redis_url, "restore", "--worker", "a@h", "new-1", "--no-broadcast")
    assert "removed 2 stored revocations (a@h: 1, (fleet): 1)" in result.output
    assert ("note: also removed from the fleet set, which binds every worker at boot: new workers will run it; "
            "workers that stored it in their own sets stay bound") in result.output
    assert redis_client.zscore(schema.revoked_key("a@h"), "new-1") is None
    assert redis_client.zscore(schema.shared_revoked_key, "new-1") is None
    assert redis_client.zscore(schema.shared_revoked_key, "fleet-1") is not None  # nothing else


# -- defect 6: unknown names; defect 7: ids with control characters ----------------------------


@pytest.mark.parametrize("args", [["inspect", "nosuch@box"], ["ls", "nosuch@box"], ["ls", "nosuch@box", "--stamps"],
                                  ["purge", "--older-than", "30d", "--worker", "nosuch@box", "--yes"],
                                  ["restore", "x", "--worker", "nosuch@box", "--no-broadcast"],
                                  ["forget", "nosuch@box", "--yes"]])
def test_unknown_names_are_an_error_naming_the_prefix(app_module: str, redis_url: str, key_prefix: str,
                                                      seeded: int, args: list[str]) -> None:
    result = run(app_module, "--url", redis_url, *args)
    assert result.exit_code == 1
    assert f"no state for worker nosuch@box under prefix {key_prefix}" in result.output


def test_purge_of_an_unknown_worker_with_missing_ok(app_module: str, redis_url: str, key_prefix: str) -> None:
    result = ok(app_module, "--url", redis_url, "purge", "--older-than", "30d", "--worker", "nosuch@box", "--yes",
                "--missing-ok")
    assert f"no state for worker nosuch@box under prefix {key_prefix}: nothing to purge" in result.output


@pytest.mark.parametrize("task_id", ["a\nb", "tab\tx", "esc\x1b[2J"])
def test_ids_with_control_characters_are_refused(app_module: str, redis_url: str, key_prefix: str,
                                                 redis_client: redis.Redis, task_id: str) -> None:
    for command in ("revoke", "restore", "where"):
        result = run(app_module, "--url", redis_url, command, task_id, *(["--no-broadcast"] if command != "where"
                                                                          else []))
        assert result.exit_code == 1 and "contains control characters" in result.output, (command, result.output)
        assert "\x1b" not in result.output
    assert not redis_client.exists(KeySchema(key_prefix).shared_revoked_key)


# -- purge: the in-memory expiry guard, and a prompt that says how much -------------------------


def test_purge_refuses_below_the_in_memory_expiry_unless_forced(app_module: str, redis_url: str,
                                                               seeded: int, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = run(app_module, "--url", redis_url, "purge", "--older-than", "1h", "--yes")
    assert refused.exit_code == 1 and "below the workers' in-memory expiry (3h)" in refused.output
    assert "--force" in refused.output
    preview = ok(app_module, "--url", redis_url, "purge", "--older-than", "1h", "--dry-run")
    assert preview.stdout.startswith("would remove")
    assert preview.stderr == ("warning: --older-than 1h is below the workers' in-memory expiry (3h): a live worker "
                              "that missed the purge broadcast keeps honouring such ids until they expire from its "
                              "memory, and may write them back; the purge itself needs --force\n")
    as_json = json.loads(ok(app_module, "--url", redis_url, "purge", "--older-than", "1h", "--dry-run",
                            "--json").stdout)
    assert as_json["warning"].startswith("--older-than 1h is below")
    assert ok(app_module, "--url", redis_url, "purge", "--older-than", "1h", "--yes", "--force").output.startswith(
        "removed 1 revoked id older than 1h")
    monkeypatch.setenv("CELERY_REDIS_STATE_TTL", "600")  # the workers' own expiry, when set
    assert ok(app_module, "--url", redis_url, "purge", "--older-than", "15m", "--yes").output.startswith("removed")
    assert ok(app_module, "--url", redis_url, "purge", "--older-than", "15m", "--dry-run").stderr == ""
    monkeypatch.setenv("CELERY_REDIS_STATE_TTL", "0")  # no expiry: the workers keep ids until their size cap
    never = run(app_module, "--url", redis_url, "purge", "--older-than", "3650d", "--yes")
    assert never.exit_code == 1 and "expiry (none: they keep ids until their size cap pushes them out)" in never.output


def test_purge_prompt_says_how_many_ids_in_how_many_sets(app_module: str, redis_url: str, seeded: int,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        redis_client: redis.Redis) -> None:
    monkeypatch.setattr(cli_module, "interactive", lambda: True)
    declined = run(app_module, "--url", redis_url, "purge", "--older-than", "30d", input="n\n")
    assert "Remove 1 revoked id older than 30d from 1 set (every set), and 0 stamped-header revokes?" in \
        declined.output
    assert declined.exit_code == 1 and "Aborted" in declined.output
    accepted = run(app_module, "--url", redis_url, "purge", "--older-than", "30d", input="y\n")
    assert accepted.exit_code == 0 and "removed 1 revoked id" in accepted.output


# -- defect 5: forget and prune dead workers -----------------------------------------------------


def test_forget_and_prune_dead_workers(app_module: str, redis_url: str, key_prefix: str, seeded: int,
                                       redis_client: redis.Redis) -> None:
    schema = KeySchema(key_prefix)
    redis_client.set(schema.clock_key("old-pod@h"), 1)  # a worker of an earlier version: last seen unknown
    refused = run(app_module, "--url", redis_url, "forget", "a@h")
    assert refused.exit_code != 0 and "--yes" in refused.output
    planned = json.loads(ok(app_module, "--url", redis_url, "prune", "--idle-for", "30d", "--dry-run",
                            "--json").output)
    assert [w["worker"] for w in planned["workers"]] == ["a@h"] and planned["kept_unknown"] == ["old-pod@h"]
    assert planned["dry_run"] and redis_client.exists(schema.clock_key("a@h"))
    text = ok(app_module, "--url", redis_url, "prune", "--idle-for", "30d", "--yes").output
    assert "forgot 1 worker (3 keys)" in text and "kept 1 worker whose last clock save is unknown" in text
    assert not redis_client.exists(schema.clock_key("a@h"), schema.revoked_key("a@h"), schema.info_key("a@h"))
    assert redis_client.zscore(schema.shared_revoked_key, "new-1") is not None  # the fleet set stays
    gone = json.loads(ok(app_module, "--url", redis_url, "forget", "old-pod@h", "--yes", "--json").output)
    assert gone["keys_removed"] == 1 and gone["workers"][0]["keys"] == [schema.clock_key("old-pod@h")]
    assert json.loads(ok(app_module, "--url", redis_url, "workers", "--json").output)[0]["worker"] == "s@h"
    with_unknown = ok(app_module, "--url", redis_url, "prune", "--idle-for", "1s", "--include-unknown",
                      "--dry-run").output
    assert "would forget 1 worker" in with_unknown and "s@h" in with_unknown


def test_prune_needs_a_positive_duration(app_module: str, redis_url: str) -> None:
    for value, message in (("0", "greater than zero"), ("soon", "not understood")):
        result = run(app_module, "--url", redis_url, "prune", "--idle-for", value, "--yes")
        assert result.exit_code == 2 and message in result.output


def test_forget_and_prune_refuse_when_workers_cannot_be_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str, seeded: int,
    redis_client: redis.Redis,
) -> None:
    """No ping, no way to tell a live worker: nothing is removed."""
    module = write_app(tmp_path, monkeypatch, f"redis://127.0.0.1:{free_port()}/0", key_prefix,
                       broker_connection_retry=False, broker_connection_max_retries=0, broker_connection_timeout=1)
    started = time.monotonic()
    result = run(module, "--url", redis_url, "prune", "--idle-for", "30d", "--yes", "--timeout", "0.5")
    assert result.exit_code == 1 and "cannot ask which workers are alive" in result.output
    assert "nothing was removed" in result.output and time.monotonic() - started < 60
    assert redis_client.exists(KeySchema(key_prefix).clock_key("a@h"))
