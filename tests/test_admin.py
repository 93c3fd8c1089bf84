"""The async admin API against a real server."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis
import redis.asyncio as aioredis

from celery_redis_statedb.local_servers import free_port
from statedb import (
    InvalidInputError,
    RedisUnavailableError,
    UnknownWorkerError,
    WrongKeyTypeError,
    inspect_worker,
    inspect_workers,
    iter_revoked,
    list_workers,
    purge_old_revoked,
    restore,
    revoke,
    where_revoked,
)
from statedb.admin import FLEET, utc
from statedb.keys import KeySchema

NOW = 1_800_000_000.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.from_url(redis_url)
    yield connection
    await connection.aclose()


def seed(redis_client: redis.Redis, prefix: str, worker: str | None, rows: dict[str, float]) -> str:
    schema = KeySchema(prefix)
    key = schema.shared_revoked_key if worker is None else schema.revoked_key(worker)
    redis_client.zadd(key, rows)
    return key


async def test_purge_bounds_just_older_goes_just_newer_and_exact_stay(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    cut = NOW - 3600
    key = seed(redis_client, key_prefix, "w@h", {"older": cut - 0.001, "exact": cut, "newer": cut + 0.001})
    removed = await purge_old_revoked(redis_url, older_than=timedelta(hours=1), key_prefix=key_prefix, now=NOW)
    assert removed == 1
    assert sorted(m.decode() for m in redis_client.zrange(key, 0, -1)) == ["exact", "newer"]


async def test_purge_dry_run_counts_and_keeps(redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    key = seed(redis_client, key_prefix, "w@h", {"a": NOW - 100, "b": NOW - 10})
    assert await purge_old_revoked(redis_url, older_than=50, key_prefix=key_prefix, now=NOW, dry_run=True) == 1
    assert redis_client.zcard(key) == 2


async def test_purge_one_worker_or_all_including_the_fleet_set(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    old = {"x": NOW - 1000}
    a, b = seed(redis_client, key_prefix, "a@h", old), seed(redis_client, key_prefix, "b@h", old)
    shared = seed(redis_client, key_prefix, None, old)
    assert await purge_old_revoked(redis_url, older_than="5m", worker_name="a@h", key_prefix=key_prefix,
                                   now=NOW) == 1
    assert (redis_client.zcard(a), redis_client.zcard(b), redis_client.zcard(shared)) == (0, 1, 1)
    assert await purge_old_revoked(redis_url, older_than="5m", key_prefix=key_prefix, now=NOW) == 2
    assert redis_client.zcard(b) == redis_client.zcard(shared) == 0


@pytest.mark.parametrize("odd", ["w*", "w?", "w[x]", "w\\x", "wörker@höst", "w x"])
async def test_glob_and_unicode_names_only_ever_match_themselves(
    redis_url: str, key_prefix: str, redis_client: redis.Redis, odd: str
) -> None:
    neighbour = "wx"
    mine = seed(redis_client, key_prefix, odd, {"t1": NOW - 1000, "t2": NOW - 1000})
    theirs = seed(redis_client, key_prefix, neighbour, {"t1": NOW - 1000})
    redis_client.set(KeySchema(key_prefix).clock_key(odd), 1)  # listed even once its set is empty
    assert await purge_old_revoked(redis_url, older_than=60, worker_name=odd, key_prefix=key_prefix,
                                   now=NOW) == 2
    assert redis_client.zcard(mine) == 0
    assert redis_client.zcard(theirs) == 1
    assert await restore(redis_url, ["t1"], worker_name=odd, key_prefix=key_prefix) == 0
    assert redis_client.zcard(theirs) == 1
    state = await inspect_worker(redis_url, odd, key_prefix=key_prefix)
    assert state.revoked_count == 0
    assert set(await list_workers(redis_url, key_prefix=key_prefix)) == {odd, neighbour}


async def test_a_thousand_workers(redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    schema = KeySchema(key_prefix)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(1000):
        pipe.zadd(schema.revoked_key(f"w{i}@h"), {"old": NOW - 7200, "new": NOW - 10})
        pipe.set(schema.clock_key(f"w{i}@h"), i)
    pipe.execute()
    seen: list[tuple[int, int]] = []
    assert len(await list_workers(redis_url, key_prefix=key_prefix)) == 1000
    states = await inspect_workers(redis_url, key_prefix=key_prefix, progress=lambda d, t: seen.append((d, t)))
    assert len(states) == 1000
    assert all(s.revoked_count == 2 and s.oldest == utc(NOW - 7200) and s.newest == utc(NOW - 10) for s in states)
    assert {s.clock for s in states} == set(range(1000))
    assert seen[-1] == (1000, 1000)
    seen.clear()
    assert await purge_old_revoked(redis_url, older_than="1h", key_prefix=key_prefix, now=NOW,
                                   progress=lambda d, t: seen.append((d, t))) == 1000
    assert seen[0] == (0, 1000) and seen[-1] == (1000, 1000)
    assert all(d1 <= d2 for (d1, _), (d2, _) in itertools.pairwise(seen))


async def test_a_client_passed_in_is_left_open(
    client: aioredis.Redis, key_prefix: str, redis_client: redis.Redis
) -> None:
    seed(redis_client, key_prefix, "w@h", {"a": NOW - 1000})
    await purge_old_revoked(client, older_than=1, key_prefix=key_prefix, now=NOW)
    await list_workers(client, key_prefix=key_prefix)
    await inspect_workers(client, key_prefix=key_prefix)
    await revoke(client, ["x"], key_prefix=key_prefix)
    assert await client.ping() is True


async def test_inspect_reports_clock_memory_and_the_fleet_set(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    seed(redis_client, key_prefix, "w@h", {"a": NOW - 5, "b": NOW - 50})
    redis_client.set(KeySchema(key_prefix).clock_key("w@h"), 42)
    seed(redis_client, key_prefix, None, {"c": NOW})
    states = {s.worker: s for s in await inspect_workers(redis_url, key_prefix=key_prefix)}
    assert set(states) == {"w@h", FLEET}
    worker = states["w@h"]
    assert (worker.revoked_count, worker.oldest, worker.newest, worker.clock) == (2, utc(NOW - 50), utc(NOW - 5), 42)
    assert worker.memory_bytes is not None and worker.memory_bytes > 0
    assert states[FLEET].revoked_count == 1 and states[FLEET].clock is None
    assert worker.as_dict()["worker"] == "w@h" and states[FLEET].as_dict()["worker"] == "fleet"
    assert worker.as_dict()["oldest_epoch"] == NOW - 50


async def test_producer_revoke_where_and_restore(redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    seed(redis_client, key_prefix, "w@h", {"t": NOW - 5})
    assert await revoke(redis_url, ["t", "u"], key_prefix=key_prefix) == 2
    assert await revoke(redis_url, ["t"], key_prefix=key_prefix) == 0
    places = await where_revoked(redis_url, "t", key_prefix=key_prefix)
    assert sorted(p.worker for p in places) == ["fleet", "w@h"]
    assert [row[0] for row in [r async for r in iter_revoked(redis_url, None, key_prefix=key_prefix)]] in (
        ["t", "u"], ["u", "t"])
    assert await restore(redis_url, ["t"], key_prefix=key_prefix) == 2
    assert await where_revoked(redis_url, "t", key_prefix=key_prefix) == []
    with pytest.raises(UnknownWorkerError):  # its only key, the set, is gone: no state left for w@h
        [r async for r in iter_revoked(redis_url, "w@h", key_prefix=key_prefix)]


async def test_errors_name_the_problem(redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    with pytest.raises(InvalidInputError, match="older_than"):
        await purge_old_revoked(redis_url, older_than=-1, key_prefix=key_prefix)
    with pytest.raises(InvalidInputError, match="not understood"):
        await purge_old_revoked(redis_url, older_than="soon", key_prefix=key_prefix)
    bad = KeySchema(key_prefix).revoked_key("broken@h")
    redis_client.set(bad, "not a set")
    with pytest.raises(WrongKeyTypeError, match="broken@h"):
        await purge_old_revoked(redis_url, older_than=1, key_prefix=key_prefix)
    with pytest.raises(RedisUnavailableError, match=r":\*\*\*@127.0.0.1"):
        await list_workers(f"redis://:pw@127.0.0.1:{free_port()}/0", key_prefix=key_prefix)
