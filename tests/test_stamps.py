"""Stamped-header revokes against a real server: the command layer, the admin APIs and CLI,
and the worker side in process (write-through, boot merge, outages, lifting).

Corrupt stored members are a CorruptValueError naming the key in the repository and admin
reads; a worker's boot and ``celery statedb ls`` skip them instead, with an error line naming
the key, and count them (``statedb_status``): one bad member must not stop the fleet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from celery.utils.collections import LimitedSet
from celery.worker import control as celery_control
from celery.worker import state as worker_state
from celery.worker.control import Panel
from click.testing import CliRunner

from celery_redis_statedb import SyncStateRepository
from celery_redis_statedb.cli import shown
from celery_redis_statedb.local_servers import PrivateServer
from celery_redis_statedb.stamps import (
    CELERY_COMMAND,
    PURGE_COMMAND,
    RESTORE_COMMAND,
    active,
    celery_pairs,
    lift_from_memory,
    merge_into_memory,
    stamps_for,
)
from statedb import (
    FLEET,
    CorruptValueError,
    InvalidInputError,
    StateDBConfig,
    UnknownWorkerError,
    inspect_stamps,
    iter_stamps,
    purge_old_revoked,
    purge_old_stamps,
    restore_stamps,
    revoke_stamps,
)
from statedb.admin import utc
from statedb.keys import KeySchema, Scope
from statedb.names import MAX_TASK_ID_BYTES
from statedb.stamps import StampPageCursor, add_stamps, decode_stamp, encode_stamp
from tests.cli_runner import cli_app, run_cli
from tests.keys import shared_stamps_key, stamp, stamps_key
from tests.persistences import Persistences

NOW = 1_800_000_000.0
CELERY_HANDLER = Panel.data[CELERY_COMMAND]


@pytest.fixture
def repo(redis_url: str, key_prefix: str) -> Iterator[SyncStateRepository]:
    repository = SyncStateRepository.open(StateDBConfig(url=redis_url, key_prefix=key_prefix, load_chunk_size=4),
                                          "w@host")
    yield repository
    repository.close()


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.from_url(redis_url)
    yield connection
    await connection.aclose()


# -- the command layer ------------------------------------------------------------


def test_add_and_read_newest_first_earliest_time_kept(repo: SyncStateRepository, redis_client: redis.Redis,
                                                      key_prefix: str) -> None:
    key = stamps_key(key_prefix, "w@host")
    assert repo.keys.stamps == key and repo.keys.shared_stamps == shared_stamps_key(key_prefix)
    assert repo.add_stamps([("batch", "b1"), ("batch", "b2")], revoked_at=NOW - 10) == 2
    assert repo.add_stamps([("batch", "b1"), ("mtask_id", "m1")], revoked_at=NOW) == 1  # b1 keeps NOW - 10
    assert repo.add_stamps([("batch", "b2")], revoked_at=NOW - 20) == 0  # earlier: ZADD LT lowers it
    assert list(repo.iter_stamps()) == [("mtask_id", "m1", NOW), ("batch", "b1", NOW - 10),
                                        ("batch", "b2", NOW - 20)]
    assert redis_client.zscore(key, stamp("batch", "b1")) == NOW - 10
    assert repo.count_stamps() == 3 and repo.count_stamps(shared=True) == 0
    assert list(repo.iter_stamps(newer_than=NOW - 10)) == [("mtask_id", "m1", NOW), ("batch", "b1", NOW - 10)]
    assert list(repo.iter_stamps(limit=1)) == [("mtask_id", "m1", NOW)]


@pytest.mark.parametrize("value", ["héllo ✓ 日本", "", "a=b=c", " spaced ", "\x00nul\n", 42, -1.5, True, None,
                                   [1, "two", [3]], {"b": 1, "a": [2]}, "x" * 4000])
def test_odd_values_round_trip(repo: SyncStateRepository, value: Any) -> None:
    repo.add_stamps([("héader ✓", value)], revoked_at=NOW)
    assert list(repo.iter_stamps()) == [("héader ✓", value, NOW)]


@pytest.mark.parametrize(("header", "value", "message"), [
    ("h", "x" * (MAX_TASK_ID_BYTES + 1), "bytes long"),
    ("h", "é" * (MAX_TASK_ID_BYTES // 2), "bytes long"),  # the limit counts UTF-8 bytes
    ("h", {1, 2}, "cannot be stored"),
    ("h", float("nan"), "cannot be stored"),
    ("h", object(), "cannot be stored"),
    ("", "v", "non-empty string"),
    (7, "v", "non-empty string"),
])
def test_unstorable_stamps_are_rejected_before_any_io(repo: SyncStateRepository, redis_client: redis.Redis,
                                                      header: Any, value: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        repo.add_stamps([("ok", "v"), (header, value)], revoked_at=NOW)
    assert redis_client.exists(repo.keys.stamps) == 0  # nothing of the batch was written


def test_paging_with_ties_reads_each_row_once_in_order(repo: SyncStateRepository, redis_client: redis.Redis) -> None:
    times = [NOW - (i // 5) for i in range(23)]  # runs of five equal scores, pages of four
    redis_client.zadd(repo.keys.stamps, {stamp("h", i): when for i, when in enumerate(times)})
    rows = list(repo.iter_stamps())
    assert len(rows) == 23 and len({row[1] for row in rows}) == 23
    assert [row[2] for row in rows] == sorted(times, reverse=True)
    assert len(list(repo.iter_stamps(limit=9))) == 9
    assert {row[1] for row in repo.iter_stamps(newer_than=NOW - 1)} == set(range(10))


def test_cursor_stops_on_a_short_page_and_on_the_limit() -> None:
    cursor = StampPageCursor("k", newer_than=None, limit=3, chunk_size=2)
    assert cursor.next_operation() is not None
    assert cursor.feed([("h", 1, 5.0), ("h", 2, 4.0)]) and not cursor.done
    assert cursor.high == 4.0 and cursor.skip == 1
    cursor.next_operation()
    cursor.feed([("h", 3, 3.0)])
    assert cursor.done and cursor.next_operation() is None
    with pytest.raises(InvalidInputError):
        StampPageCursor("k", newer_than=None, limit=None, chunk_size=0)


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"not json", b'["", 1]', b'{"h": 1}', b'["h"]', b'[1, 2]', b"42"])
def test_corrupt_members_name_the_key(repo: SyncStateRepository, redis_client: redis.Redis, raw: bytes) -> None:
    redis_client.zadd(repo.keys.stamps, {stamp("good", 1): NOW, raw: NOW - 1})
    with pytest.raises(CorruptValueError, match="not a stamped header") as caught:
        list(repo.iter_stamps())
    assert caught.value.key == repo.keys.stamps and repr(repo.keys.stamps) in str(caught.value)


def test_a_non_finite_score_is_corrupt(repo: SyncStateRepository, redis_client: redis.Redis) -> None:
    redis_client.zadd(repo.keys.stamps, {stamp("h", "v"): float("inf")})
    with pytest.raises(CorruptValueError, match="non-finite") as caught:
        list(repo.iter_stamps())
    assert caught.value.key == repo.keys.stamps


def test_encode_is_canonical_and_decode_inverts_it() -> None:
    assert encode_stamp("h", {"b": 1, "a": 2}) == b'["h",{"a":2,"b":1}]'
    assert encode_stamp("h", "é") == '["h","é"]'.encode()
    assert decode_stamp("k", encode_stamp("h", [1, "x"])) == ("h", [1, "x"])
    operation = add_stamps("k", [("h", 1), ("h", 1)], NOW, chunk_size=10)
    assert operation.keys == ("k",)


def test_shared_scope_writes_the_fleet_key(redis_url: str, key_prefix: str) -> None:
    keys = KeySchema(key_prefix).for_worker("w@host", Scope.SHARED)
    assert keys.stamps == keys.shared_stamps == shared_stamps_key(key_prefix)


# -- the async admin API -------------------------------------------------------------


def seed(client: redis.Redis, prefix: str) -> dict[str, str]:
    keys = {"a": stamps_key(prefix, "a@h"), "b": stamps_key(prefix, "b@h"), "fleet": shared_stamps_key(prefix)}
    client.zadd(keys["a"], {stamp("batch", "old"): NOW - 7200, stamp("batch", "new"): NOW - 60,
                            stamp("n", 1): NOW - 3600})
    client.zadd(keys["b"], {stamp("batch", "old"): NOW - 7300})
    client.zadd(keys["fleet"], {stamp("batch", "old"): NOW - 7400, stamp("batch", "fleet"): NOW - 5})
    client.zadd(f"{prefix}a@h:revoked", {"id-1": NOW})  # other keys are left alone
    return keys


async def test_iter_and_inspect(aclient: aioredis.Redis, redis_client: redis.Redis, key_prefix: str) -> None:
    keys = seed(redis_client, key_prefix)
    rows = [row async for row in iter_stamps(aclient, "a@h", key_prefix=key_prefix)]
    assert rows == [("batch", "new", NOW - 60), ("n", 1, NOW - 3600), ("batch", "old", NOW - 7200)]
    fleet = [row async for row in iter_stamps(aclient, None, key_prefix=key_prefix, limit=1)]
    assert fleet == [("batch", "fleet", NOW - 5)]
    states = {s.worker: s for s in await inspect_stamps(aclient, key_prefix=key_prefix)}
    assert set(states) == {"a@h", "b@h", FLEET}
    assert states["a@h"].stamps_count == 3 and states["a@h"].key == keys["a"]
    assert (states["a@h"].oldest, states["a@h"].newest) == (utc(NOW - 7200), utc(NOW - 60))
    assert states["a@h"].as_dict()["oldest_epoch"] == NOW - 7200
    with pytest.raises(UnknownWorkerError, match="no state for worker nobody@h under prefix"):
        await inspect_stamps(aclient, ["nobody@h"], key_prefix=key_prefix)


async def test_restore_from_every_set_or_one_worker(aclient: aioredis.Redis, redis_client: redis.Redis,
                                                    key_prefix: str) -> None:
    keys = seed(redis_client, key_prefix)
    assert await restore_stamps(aclient, [("batch", "old")], worker_name="b@h", key_prefix=key_prefix) == 1
    assert redis_client.zcard(keys["b"]) == 0 and redis_client.zscore(keys["a"], stamp("batch", "old"))
    assert await restore_stamps(aclient, [("batch", "old"), ("n", 1), ("n", "1")], key_prefix=key_prefix) == 3
    assert redis_client.zrange(keys["a"], 0, -1) == [stamp("batch", "new")]
    assert redis_client.zrange(keys["fleet"], 0, -1) == [stamp("batch", "fleet")]
    assert await restore_stamps(aclient, [], key_prefix=key_prefix) == 0
    with pytest.raises(InvalidInputError):
        await restore_stamps(aclient, [("h", "x" * (MAX_TASK_ID_BYTES + 1))], key_prefix=key_prefix)


async def test_purge_by_age_bounds_and_dry_run(aclient: aioredis.Redis, redis_client: redis.Redis,
                                               key_prefix: str) -> None:
    keys = seed(redis_client, key_prefix)
    redis_client.zadd(keys["b"], {stamp("exact", 1): NOW - 3600})
    assert await purge_old_stamps(aclient, older_than=3600, key_prefix=key_prefix, now=NOW, dry_run=True) == 3
    assert redis_client.zcard(keys["a"]) == 3
    assert await purge_old_stamps(aclient, older_than="1h", worker_name="a@h", key_prefix=key_prefix, now=NOW) == 1
    assert await purge_old_stamps(aclient, older_than=3600, key_prefix=key_prefix, now=NOW) == 2
    assert redis_client.zscore(keys["b"], stamp("exact", 1)) == NOW - 3600  # exactly at the cutoff: kept
    assert redis_client.zcard(keys["fleet"]) == 1 and redis_client.zcard(keys["a"]) == 2


async def test_purge_old_revoked_also_purges_stamps(aclient: aioredis.Redis, redis_client: redis.Redis,
                                                    key_prefix: str) -> None:
    keys = seed(redis_client, key_prefix)
    assert await purge_old_revoked(aclient, older_than=3601, key_prefix=key_prefix, now=NOW, dry_run=True) == 0
    assert redis_client.zcard(keys["a"]) == 3
    assert await purge_old_revoked(aclient, older_than=3601, key_prefix=key_prefix, now=NOW) == 0
    assert redis_client.zcard(keys["a"]) == 2 and redis_client.zcard(keys["b"]) == 0
    assert redis_client.zcard(f"{key_prefix}a@h:revoked") == 1


async def test_revoke_stamps_writes_the_fleet_key(aclient: aioredis.Redis, redis_client: redis.Redis,
                                                  key_prefix: str) -> None:
    when = NOW - 100 * 86400  # NOW is the future of some test runs: a revoked_at may be ahead by a minute only
    assert await revoke_stamps(aclient, [("batch", "x"), ("batch", "x")], key_prefix=key_prefix,
                               revoked_at=when) == 1
    assert redis_client.zrange(shared_stamps_key(key_prefix), 0, -1, withscores=True) == [(stamp("batch", "x"), when)]


async def test_admin_reads_name_a_corrupt_key(aclient: aioredis.Redis, redis_client: redis.Redis,
                                              key_prefix: str) -> None:
    key = stamps_key(key_prefix, "a@h")
    redis_client.zadd(key, {b"\x80garbage": NOW})
    with pytest.raises(CorruptValueError) as caught:
        [row async for row in iter_stamps(aclient, "a@h", key_prefix=key_prefix)]
    assert caught.value.key == key


# -- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    return cli_app(tmp_path, redis_url, key_prefix, monkeypatch)


run = run_cli


def test_cli_ls_inspect_restore_purge(cli: CliRunner, redis_url: str, redis_client: redis.Redis,
                                      key_prefix: str) -> None:
    now = time.time()
    key = stamps_key(key_prefix, "a@h")
    redis_client.zadd(key, {stamp("batch", "new"): now - 5, stamp("batch", "ev\x1bil\n"): now - 10,
                            stamp("n", 42): now - 20, stamp("batch", "old"): now - 40 * 86400})
    redis_client.zadd(shared_stamps_key(key_prefix), {stamp("batch", "fleet"): now})

    rows = json.loads(run(cli, redis_url, "ls", "a@h", "--stamps", "--json").output)
    assert [(r["header"], r["value"]) for r in rows] == [("batch", "new"), ("batch", "ev\x1bil\n"), ("n", 42),
                                                          ("batch", "old")]
    table = run(cli, redis_url, "ls", "a@h", "--stamps", "--limit", "3")
    assert table.exit_code == 0, table.output
    header, *lines = table.output.splitlines()
    assert header.split() == ["REVOKED", "AT", "(UTC)", "HEADER=VALUE"]
    assert len(lines) == 3 and lines[0].endswith("  batch=new")
    assert lines[1].endswith("batch='ev\\x1bil\\n'") and "\x1b" not in table.output  # escaped
    assert lines[2].endswith("n=42")
    assert run(cli, redis_url, "ls", "--fleet", "--stamps").output.strip().endswith("batch=fleet")

    state = json.loads(run(cli, redis_url, "inspect", "a@h", "--json").output)
    assert state["stamps_count"] == 4 and state["stamps"]["key"] == key and state["stamps"]["stamps_count"] == 4
    assert "stamps: 4" in run(cli, redis_url, "inspect", "a@h").output
    assert json.loads(run(cli, redis_url, "inspect", "--fleet", "--json").output)["stamps"]["stamps_count"] == 1

    restored = run(cli, redis_url, "restore", "--stamp", "batch=new", "--stamp", "batch=fleet", "--no-broadcast")
    assert restored.exit_code == 0 and "removed 2 stored stamped-header revokes" in restored.output
    bad = run(cli, redis_url, "restore", "--stamp", "novalue")
    assert bad.exit_code != 0 and "NAME=VALUE" in bad.output
    assert run(cli, redis_url, "restore").exit_code != 0

    purged = run(cli, redis_url, "purge", "--older-than", "30d", "--yes")
    assert purged.exit_code == 0, purged.output
    assert redis_client.zscore(key, stamp("batch", "old")) is None and redis_client.zcard(key) == 2


def test_shown_escapes_what_is_not_plain_text() -> None:
    assert shown("batch-1") == "batch-1" and shown("日本") == "日本"
    assert shown("a\nb") == "'a\\nb'" and shown("") == "''" and shown(" x") == "' x'"
    assert shown(42) == "42" and shown([1, "a"]) == "[1, 'a']"


# -- the worker side, in process ------------------------------------------------------------


class FakeState:
    consumer = None


@pytest.fixture
def stamps_memory() -> Iterator[dict[Any, Any]]:
    """Celery's module-level dict, emptied for the test and put back as it was (same object)."""
    saved = dict(worker_state.revoked_stamps)
    worker_state.revoked_stamps.clear()
    yield worker_state.revoked_stamps
    worker_state.revoked_stamps.clear()
    worker_state.revoked_stamps.update(saved)
    Panel.data[CELERY_COMMAND] = CELERY_HANDLER


@pytest.fixture
def make(key_prefix: str, redis_url: str, stamps_memory: dict[Any, Any]) -> Iterator[Persistences]:
    with Persistences(key_prefix, redis_url, revoked=lambda: LimitedSet(maxlen=100, expires=3600),
                      clock=False) as persistences:
        yield persistences


def handler() -> Callable[..., Any]:
    return Panel.data[CELERY_COMMAND]  # type: ignore[no-any-return]


def test_celery_pairs_split_exactly_as_celery_does() -> None:
    assert celery_pairs({"a": ["1", "2"], "b": "x", "c": (1, 2)}) == [("a", "1"), ("a", "2"), ("b", "x"),
                                                                      ("c", 1), ("c", 2)]
    assert celery_pairs(["a=1", "b=2=3", "a=4"]) == [("a", "4"), ("b", "2")]  # Celery: a dict, split("=")[1]
    with pytest.raises(IndexError):
        celery_pairs(["novalue"])


def test_memory_merge_and_lift_in_place() -> None:
    memory: dict[Any, Any] = {"a": "scalar", "b": ["1"]}
    same = memory
    assert merge_into_memory(memory, [("a", "scalar"), ("a", "x"), ("b", "1"), ("c", [1])]) == 2
    assert memory is same and memory == {"a": ["scalar", "x"], "b": ["1"], "c": [[1]]}
    memory["b"] = ["1", "2", "1"]  # Celery appends duplicates when revoked twice
    assert lift_from_memory(memory, [("b", "1"), ("a", "scalar"), ("a", "x"), ("zz", 1)]) == 3
    assert memory is same and memory == {"b": ["2"], "c": [[1]]}


def test_without_persistence_the_handler_is_celerys(stamps_memory: dict[Any, Any]) -> None:
    assert handler() is CELERY_HANDLER is celery_control.revoke_by_stamped_headers
    assert active() is None


def test_write_through_before_the_reply_and_replies_unchanged(
    make: Persistences, redis_client: redis.Redis, key_prefix: str, stamps_memory: dict[Any, Any]
) -> None:
    persistence = make()
    persistence.boot()
    assert handler() is not CELERY_HANDLER and active() is stamps_for(persistence)
    key = stamps_key(key_prefix, "w@host")
    before = time.time()

    reply = handler()(FakeState(), {"batch": ["b1", "b2"], "n": 7})
    expected = CELERY_HANDLER(FakeState(), {"batch": ["b1", "b2"], "n": 7})  # what Celery alone answers
    assert reply == expected == {"ok": "headers {'batch': ['b1', 'b2'], 'n': 7} flagged as revoked, but not "
                                       "terminated"}
    scores = {m: s for m, s in redis_client.zrange(key, 0, -1, withscores=True)}
    assert set(scores) == {stamp("batch", "b1"), stamp("batch", "b2"), stamp("n", 7)}
    assert all(before - 1 <= s <= time.time() + 1 for s in scores.values())
    assert stamps_memory["batch"] == ["b1", "b2", "b1", "b2"] and stamps_memory["n"] == [7, 7]  # Celery's own

    assert handler()(FakeState(), ["mtask=m1"]) == {"ok": "headers {'mtask': 'm1'} flagged as revoked, but not "
                                                           "terminated"}
    assert redis_client.zscore(key, stamp("mtask", "m1")) is not None
    with pytest.raises(IndexError):  # as Celery's own handler fails on it (the pidbox replies an error)
        handler()(FakeState(), ["novalue"])
    assert handler()(FakeState(), {"t": "x"}, terminate=True) == {"ok": "headers {'t': 'x'} were not terminated"}

    persistence.save()
    assert handler() is CELERY_HANDLER and active() is None


def test_unstorable_stamps_are_honoured_in_memory(make: Persistences, redis_client: redis.Redis, key_prefix: str,
                                                  stamps_memory: dict[Any, Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    persistence = make()
    persistence.boot()
    with caplog.at_level(logging.ERROR, "celery_redis_statedb"):
        handler()(FakeState(), {"big": "x" * (MAX_TASK_ID_BYTES + 1), "ok": "v"})
    assert stamps_memory["big"] == ["x" * (MAX_TASK_ID_BYTES + 1)]
    assert redis_client.zrange(stamps_key(key_prefix, "w@host"), 0, -1) == [stamp("ok", "v")]
    assert "honoured in memory only" in caplog.text
    status = persistence.status()
    assert status["unstorable"] == 1 and "bytes long" in status["last_unstorable"]


def test_boot_merges_own_and_fleet_within_the_horizon(
    make: Persistences, redis_client: redis.Redis, key_prefix: str, stamps_memory: dict[Any, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = time.time()
    redis_client.zadd(stamps_key(key_prefix, "w@host"), {stamp("batch", "own"): now - 10,
                                                         stamp("batch", "dup"): now - 20,
                                                         stamp("batch", "too-old"): now - 7200})
    redis_client.zadd(shared_stamps_key(key_prefix), {stamp("batch", "dup"): now - 30, stamp("fleet", [1, 2]): now - 5})
    stamps_memory["batch"] = "dup"  # already in memory (a scalar, as a user may set it): not duplicated
    same = stamps_memory
    with caplog.at_level(logging.INFO, "celery_redis_statedb"):
        persistence = make(horizon=3600)
        persistence.boot()
    assert worker_state.revoked_stamps is same
    assert stamps_memory == {"batch": ["dup", "own"], "fleet": [[1, 2]]}
    assert "restored 2 stamped-header revokes" in caplog.text and "revoked in the last 3600s" in caplog.text
    companion = stamps_for(persistence)
    assert companion.times[stamp("batch", "dup")] == pytest.approx(now - 30)  # the earliest of both keys
    persistence.reload()  # a second merge adds nothing
    assert stamps_memory == {"batch": ["dup", "own"], "fleet": [[1, 2]]}

    # Without a horizon, everything stored binds.
    stamps_memory.clear()
    make().boot()
    assert stamps_memory["batch"] == ["own", "dup", "too-old"]


def test_a_corrupt_member_is_skipped_at_boot_naming_the_key(make: Persistences, redis_client: redis.Redis,
                                                             key_prefix: str, stamps_memory: dict[Any, Any],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    redis_client.zadd(shared_stamps_key(key_prefix), {b"not json": time.time(), stamp("batch", "ok"): time.time(),
                                                      stamp("batch", "inf"): float("inf")})
    redis_client.set(stamps_key(key_prefix, "w@host"), "a string")
    persistence = make()
    with caplog.at_level(logging.ERROR, "celery_redis_statedb"):
        persistence.boot()
    assert stamps_memory == {"batch": ["ok"]}
    assert persistence.status()["bad_members"] == 2
    assert persistence.status()["unreadable_keys"] == [stamps_key(key_prefix, "w@host")]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(repr(shared_stamps_key(key_prefix)) in e and "not a stamped header" in e for e in errors), errors
    assert any(repr(stamps_key(key_prefix, "w@host")) in e and "another type" in e for e in errors), errors


def test_reset_state_in_children_never_touches_redis(make: Persistences, redis_client: redis.Redis, key_prefix: str,
                                                     stamps_memory: dict[Any, Any]) -> None:
    persistence = make()
    persistence.boot()
    handler()(FakeState(), {"batch": "b1"})
    worker_state.reset_state()  # what every prefork child runs
    assert stamps_memory == {}
    persistence.tick()
    assert redis_client.zcard(stamps_key(key_prefix, "w@host")) == 1


def test_outage_honours_in_memory_and_writes_back_later(
    private_server: PrivateServer, key_prefix: str, stamps_memory: dict[Any, Any], make: Persistences,
) -> None:
    persistence = make(url=private_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    persistence.boot()
    handler()(FakeState(), {"batch": "before"})
    private_server.kill()
    started = time.monotonic()
    reply = handler()(FakeState(), {"batch": "during"})
    assert reply["ok"].startswith("headers") and time.monotonic() - started < 5
    assert stamps_memory["batch"] == ["before", "during"]
    companion = stamps_for(persistence)
    assert persistence.failing and list(companion.pending) == [stamp("batch", "during")]
    handler()(FakeState(), {"batch": "during-2"})  # no I/O while failing
    assert len(companion.pending) == 2

    private_server.start()  # back empty
    client = redis.Redis.from_url(private_server.url)
    try:
        def written() -> bool:
            persistence._next_attempt = 0.0
            persistence.tick()
            return client.zcard(stamps_key(key_prefix, "w@host")) == 3

        deadline = time.monotonic() + 15
        while not written():
            assert time.monotonic() < deadline, "stamps were not written back"
            time.sleep(0.2)
        assert not companion.pending and not persistence.failing
    finally:
        client.close()


def test_fleet_stamps_go_back_to_the_fleet_key_after_data_loss(
    private_server: PrivateServer, key_prefix: str, stamps_memory: dict[Any, Any], make: Persistences,
) -> None:
    client = redis.Redis.from_url(private_server.url)
    try:
        client.zadd(shared_stamps_key(key_prefix), {stamp("batch", "from-producer"): time.time() - 60})
        persistence = make(url=private_server.url)
        persistence.boot()
        handler()(FakeState(), {"batch": "own"})
        persistence.revoked.add("an-id")  # what the loss check watches (this worker has no clock)
        client.flushall()  # Redis lost its data under the worker (a private server: ours to flush)

        def repaired() -> bool:
            persistence.tick()
            return bool(client.zscore(shared_stamps_key(key_prefix), stamp("batch", "from-producer")))

        deadline = time.monotonic() + 15
        while not repaired():
            assert time.monotonic() < deadline, "the fleet stamp was not written back"
            time.sleep(0.2)
        assert client.zscore(stamps_key(key_prefix, "w@host"), stamp("batch", "own")) is not None
        assert client.zscore(stamps_key(key_prefix, "w@host"), stamp("batch", "from-producer")) is None
    finally:
        client.close()


def test_control_commands_lift_in_memory(make: Persistences, redis_client: redis.Redis, key_prefix: str,
                                         stamps_memory: dict[Any, Any]) -> None:
    now = time.time()
    redis_client.zadd(shared_stamps_key(key_prefix), {stamp("batch", "fleet-old"): now - 500})
    redis_client.zadd(stamps_key(key_prefix, "w@host"), {stamp("batch", "own-old"): now - 400})
    persistence = make()
    persistence.boot()
    handler()(FakeState(), {"batch": ["new", "gone"], "n": 1})
    same = stamps_memory

    restore = Panel.data[RESTORE_COMMAND]
    assert restore(FakeState(), stamps=[["batch", "gone"], ["nope", 1]]) == {"ok": "1 of 2 stamped headers restored"}
    assert "gone" not in stamps_memory["batch"]
    companion = stamps_for(persistence)
    assert stamp("batch", "gone") not in companion.times

    purge = Panel.data[PURGE_COMMAND]
    assert purge(FakeState(), cutoff=now - 100, fleet=False) == {"ok": "1 stamped headers purged"}
    assert stamps_memory["batch"] == ["fleet-old", "new"]  # from the fleet key: kept on a one-worker purge
    assert purge(FakeState(), cutoff=now - 100) == {"ok": "1 stamped headers purged"}
    assert stamps_memory == {"batch": ["new"], "n": [1]} and stamps_memory is same
    assert redis_client.zcard(stamps_key(key_prefix, "w@host")) == 4  # workers never delete in Redis


def test_purge_command_without_persistence_answers(stamps_memory: dict[Any, Any]) -> None:
    stamps_memory["batch"] = ["x"]
    reply = Panel.data[PURGE_COMMAND](FakeState(), cutoff=time.time())
    assert "not a Redis statedb worker" in reply["ok"] and stamps_memory == {"batch": ["x"]}
    assert Panel.data[RESTORE_COMMAND](FakeState(), stamps=[["batch", "x"]]) == {"ok": "1 of 1 stamped headers "
                                                                                      "restored"}


def test_the_horizon_lifts_live_stamps_too(make: Persistences, stamps_memory: dict[Any, Any]) -> None:
    persistence = make(horizon=60)
    persistence.boot()
    handler()(FakeState(), {"batch": ["old", "new"]})
    companion = stamps_for(persistence)
    companion.times[stamp("batch", "old")] = time.time() - 61
    persistence.tick()
    assert stamps_memory == {"batch": ["new"]}
