"""The async admin API as an admin backend meets it (issue 12), against a real server.

The whole contract on clients made with either ``decode_responses`` and RESP2 or RESP3
(defect 2); one object bound to a client or URL; JSON-ready results; the request/service
error split (defect 9); unknown workers (defect 6); every listing showing the same
population (defect 4); forget and prune (defect 5); ids with control characters (defect 7).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

import statedb
from celery_redis_statedb.local_servers import free_port
from statedb import (
    FLEET,
    ConfigurationError,
    InvalidInputError,
    RedisUnavailableError,
    RequestError,
    ServiceError,
    StateAdmin,
    StateDataError,
    UnknownWorkerError,
)
from statedb.admin import utc
from statedb.keys import KeySchema
from tests.admin_contract import run_contract, seed


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decode_responses"])
@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
async def test_the_whole_contract_on_any_client(redis_url: str, key_prefix: str, redis_client: redis.Redis,
                                                decode: bool, protocol: int) -> None:
    client = aioredis.from_url(redis_url, decode_responses=decode, protocol=protocol)
    try:
        await run_contract(StateAdmin(client, key_prefix=key_prefix), redis_client)
        assert await client.ping()  # a client passed in is left open
    finally:
        await client.aclose()


async def test_a_clock_read_through_decode_responses_is_not_corrupt(redis_url: str, key_prefix: str,
                                                                    redis_client: redis.Redis) -> None:
    """The report: inspect_worker said CorruptValueError for the clock '49' on such a client."""
    seed(redis_client, key_prefix)
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        state = await statedb.inspect_worker(client, "a@h", key_prefix=key_prefix)
        assert state.clock == 49
        rows = [row async for row in statedb.iter_revoked(client, "a@h", key_prefix=key_prefix, limit=1)]
        assert [task_id for task_id, _ in rows] == ["new-a"]
    finally:
        await client.aclose()


async def test_a_url_is_opened_once_and_closed_by_the_block(redis_url: str, key_prefix: str,
                                                           redis_client: redis.Redis) -> None:
    seed(redis_client, key_prefix)
    async with StateAdmin(redis_url, key_prefix=key_prefix) as admin:
        await admin.list_workers()
        opened = admin.client
        await admin.inspect_workers()
        assert admin.client is opened  # one client for every call
    assert admin._client is None  # closed by the block (and opened again if used after)


async def test_results_are_json_ready_with_utc_times_and_epochs(redis_url: str, key_prefix: str,
                                                               redis_client: redis.Redis) -> None:
    now = seed(redis_client, key_prefix)
    async with StateAdmin(redis_url, key_prefix=key_prefix) as admin:
        (place,) = [p for p in await admin.where_revoked("fleet-1")]
        as_dict = place.as_dict()
        assert as_dict == {"task_id": "fleet-1", "worker": "fleet", "key": f"{key_prefix}shared:fleet-revoked",
                           "revoked_at": utc(now - 5).isoformat().replace("+00:00", "Z"),  # type: ignore[union-attr]
                           "revoked_at_epoch": now - 5}
        assert place.revoked_at.tzinfo is not None and place.revoked_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        for result in (await admin.purge_old_revoked(older_than="30d", dry_run=True),
                       await admin.restore(["nothing"]), await admin.revoke(["x"]),
                       await admin.prune(idle_for="1d", dry_run=True), await admin.forget(["s@h"], dry_run=True),
                       *(await admin.stamps.inspect_stamps())):
            json.dumps(result.as_dict())
        assert "worker" in (await admin.revoke(["y"])).as_dict() and FLEET == "fleet"


async def test_every_listing_shows_the_same_population(redis_url: str, key_prefix: str,
                                                      redis_client: redis.Redis) -> None:
    """Defect 4: shared-scope workers own only a clock (and an info hash): listed everywhere all the same."""
    schema = KeySchema(key_prefix)
    for i in range(30):
        redis_client.set(schema.clock_key(f"pod-{i}@h"), i)
        redis_client.hset(schema.info_key(f"pod-{i}@h"), mapping={"last_seen": "1.0", "scope": "shared"})
    redis_client.hset(schema.info_key("info-only@h"), mapping={"last_seen": "2.5"})
    redis_client.zadd(schema.stamps_key("stamps-only@h"), {'["a","b"]': 1.0})
    listed = await statedb.list_workers(redis_url, key_prefix=key_prefix)
    states = await statedb.inspect_workers(redis_url, key_prefix=key_prefix)
    assert len(listed) == 32 and [s.worker for s in states] == listed  # no fleet set here
    assert {s.scope for s in states if s.worker.startswith("pod-")} == {"shared"}
    by_name = {s.worker: s for s in states}
    assert by_name["info-only@h"].last_seen == utc(2.5) and by_name["info-only@h"].scope is None
    assert by_name["stamps-only@h"].stamps_count == 1 and by_name["stamps-only@h"].scope == "worker"


async def test_unknown_workers_are_request_errors_naming_the_prefix(redis_url: str, key_prefix: str,
                                                                   redis_client: redis.Redis) -> None:
    """Defect 6: an unknown name used to look like an empty worker."""
    seed(redis_client, key_prefix)
    async with StateAdmin(redis_url, key_prefix=key_prefix) as admin:
        for call in (lambda: admin.inspect_worker("nosuch@box"), lambda: admin.restore(["x"], worker="nosuch@box"),
                     lambda: admin.purge_old_revoked(older_than="1d", worker="nosuch@box"),
                     lambda: admin.forget(["nosuch@box"]), lambda: admin.stamps.inspect_stamps(["nosuch@box"]),
                     lambda: admin.stamps.restore_stamps([("a", "b")], worker="nosuch@box")):
            with pytest.raises(UnknownWorkerError) as caught:
                await call()
            assert str(caught.value) == f"no state for worker nosuch@box under prefix {key_prefix}"
            assert isinstance(caught.value, RequestError) and caught.value.worker == "nosuch@box"
    with pytest.raises(UnknownWorkerError):
        await statedb.purge_old_revoked(redis_url, older_than="1d", worker_name="nosuch@box", key_prefix=key_prefix)
    with pytest.raises(UnknownWorkerError):
        await statedb.restore(redis_url, ["x"], worker_name="nosuch@box", key_prefix=key_prefix)


async def test_the_error_split_tells_a_backend_4xx_from_5xx(redis_url: str, key_prefix: str,
                                                           redis_client: redis.Redis) -> None:
    """Defect 9: scope='Shared' raised a bare ValueError; input errors and outages shared one base."""
    with pytest.raises(ConfigurationError, match="scope must be one of 'worker', 'shared', got 'Shared'") as bad:
        StateAdmin(redis_url, key_prefix=key_prefix, scope="Shared")
    assert isinstance(bad.value, RequestError) and not isinstance(bad.value, ServiceError)
    with pytest.raises(ConfigurationError):
        await statedb.inspect_workers(redis_url, key_prefix=key_prefix, scope="everyone")
    with pytest.raises(RequestError):
        await statedb.purge_old_revoked(redis_url, older_than="soon", key_prefix=key_prefix)
    with pytest.raises(RedisUnavailableError) as down:
        await statedb.list_workers(f"redis://127.0.0.1:{free_port()}/0", key_prefix=key_prefix)
    assert isinstance(down.value, ServiceError) and not isinstance(down.value, RequestError)
    redis_client.set(KeySchema(key_prefix).revoked_key("broken@h"), "a string")
    with pytest.raises(StateDataError) as data:
        await statedb.inspect_workers(redis_url, key_prefix=key_prefix)
    assert isinstance(data.value, ServiceError)
    for request in (ConfigurationError, InvalidInputError, UnknownWorkerError):
        assert issubclass(request, RequestError) and issubclass(request, ValueError)


@pytest.mark.parametrize("task_id", ["a\nb", "tab\there", "esc\x1b[31m", "del\x7f", "nel\x85", "ls\u2028x", "\r"])
async def test_ids_with_control_characters_are_refused_everywhere(redis_url: str, key_prefix: str,
                                                                  redis_client: redis.Redis, task_id: str) -> None:
    """Defect 7: such ids were accepted, then broke every line-oriented output."""
    seed(redis_client, key_prefix)
    async with StateAdmin(redis_url, key_prefix=key_prefix) as admin:
        for call in (lambda: admin.revoke([task_id]), lambda: admin.restore([task_id]),
                     lambda: admin.where_revoked(task_id), lambda: admin.revoke(["fine", task_id])):
            with pytest.raises(InvalidInputError, match="control characters"):
                await call()
    assert redis_client.zscore(KeySchema(key_prefix).shared_revoked_key, "fine") is None  # nothing half-done
    with pytest.raises(InvalidInputError):
        statedb.commands.encode_task_ids([task_id])  # the worker's fast path too


async def test_prune_never_touches_a_live_worker_nor_an_unknown_one(redis_url: str, key_prefix: str,
                                                                   redis_client: redis.Redis) -> None:
    seed(redis_client, key_prefix)
    schema = KeySchema(key_prefix)
    async with StateAdmin(redis_url, key_prefix=key_prefix) as admin:
        report = await admin.prune(idle_for="30d", live=["a@h"])
        assert report.workers == () and report.kept_live == ("a@h",) and report.kept_unknown == ("gone@h",)
        assert redis_client.exists(schema.clock_key("a@h"), schema.clock_key("gone@h")) == 2
        report = await admin.prune(idle_for="30d")
        assert [w.worker for w in report.workers] == ["a@h"] and report.keys_removed == 4
        assert not redis_client.exists(schema.clock_key("a@h"), schema.info_key("a@h"), schema.stamps_key("a@h"))
        assert redis_client.zcard(schema.shared_revoked_key) == 2
        with pytest.raises(InvalidInputError, match="greater than zero"):
            await admin.prune(idle_for=0)


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_shortcuts_keep_their_0_5_shapes(aclient: aioredis.Redis, key_prefix: str,
                                               redis_client: redis.Redis) -> None:
    now = seed(redis_client, key_prefix)
    rows = [row async for row in statedb.iter_revoked(aclient, "a@h", key_prefix=key_prefix)]
    assert rows == [("new-a", now - 60), ("old-a", now - 40 * 86400)]
    assert await statedb.revoke(aclient, ["k"], key_prefix=key_prefix, revoked_at=1.5) == 1
    assert redis_client.zscore(KeySchema(key_prefix).shared_revoked_key, "k") == 1.5
    assert await statedb.restore(aclient, ["k"], key_prefix=key_prefix) == 1
    assert await statedb.purge_old_revoked(aclient, older_than="30d", key_prefix=key_prefix, dry_run=True) == 2
    report = await statedb.forget(aclient, ["gone@h"], key_prefix=key_prefix, dry_run=True)
    assert [w.worker for w in report.workers] == ["gone@h"]
    report = await statedb.prune(aclient, idle_for="30d", key_prefix=key_prefix, dry_run=True)
    assert [w.worker for w in report.workers] == ["a@h"]


async def test_in_the_shared_scope_a_workers_set_is_the_fleet_set(redis_url: str, key_prefix: str,
                                                                  redis_client: redis.Redis) -> None:
    seed(redis_client, key_prefix)
    async with StateAdmin(redis_url, key_prefix=key_prefix, scope="shared") as admin:
        rows = [row async for row in admin.iter_revoked("s@h")]
        assert {(row.worker, row.key) for row in rows} == {(FLEET, f"{key_prefix}shared:fleet-revoked")}
        report = await admin.restore(["fleet-1"], worker="s@h")
        assert (report.removed, report.fleet_removed, [c.worker for c in report.sets]) == (1, 1, [FLEET])
        assert report.note is not None and report.note.startswith("s@h's set in the shared scope is the fleet set")
        purged = await admin.purge_old_revoked(older_than="1d", worker="s@h", dry_run=True)
        assert purged.sets_scanned == 1 and purged.removed == 0
