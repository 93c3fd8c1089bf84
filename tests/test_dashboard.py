"""The embeddable dashboard (``statedb.dashboard.make_router``): every endpoint and error through httpx
against a real Redis, the router mounted under two prefixes, the host's auth, the client's lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, HTTPException

from celery_redis_statedb.local_servers import PrivateServer
from statedb import FLEET, ConfigurationError
from statedb.admin import RestoreReport, StateAdmin
from statedb.dashboard import LiveWorkers, make_router
from statedb.keys import KeySchema
from tests.admin_contract import DAY, seed
from tests.asgi import mounted

PREFIXES = ["/statedb", "/ops/redis-state"]


@pytest.fixture(params=PREFIXES)
def prefix(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def seeded(redis_client: redis.Redis, key_prefix: str) -> int:
    """Three workers and the fleet set (tests/admin_contract.seed); the server's time they are relative to."""
    return seed(redis_client, key_prefix)


async def test_the_page_and_the_config(redis_url: str, key_prefix: str, prefix: str) -> None:
    async with mounted(make_router(redis_url, key_prefix=key_prefix), prefix) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<script>" in page.text and "http" not in page.text.replace("http-equiv", "")  # nothing fetched
        config = (await client.get("/api/config")).json()
    assert config == {"redis": redis_url, "key_prefix": key_prefix, "scope": "worker", "read_only": False,
                      "live": False, "broadcast": False}


async def test_workers_every_one_of_them_with_times_side_by_side(
    redis_url: str, key_prefix: str, seeded: int, prefix: str
) -> None:
    async with mounted(make_router(redis_url, key_prefix=key_prefix), prefix) as client:
        body = (await client.get("/api/workers")).json()
        matched = (await client.get("/api/workers", params={"match": "a@"})).json()
        none = (await client.get("/api/workers", params={"match": "*"})).json()  # literal: no name holds a '*'
    assert [w["worker"] for w in body["workers"]] == ["a@h", "gone@h", "s@h", FLEET]
    a = body["workers"][0]
    assert (a["revoked_count"], a["clock"], a["scope"], a["stamps_count"]) == (2, 49, "worker", 1)
    assert a["oldest_epoch"] == seeded - 40 * DAY and a["oldest"].endswith("Z") and a["last_seen"].endswith("Z")
    assert a["live"] is None and body["live"] is False
    assert [w["worker"] for w in matched["workers"]] == ["a@h"]
    assert none["workers"] == []


async def test_one_worker_unknown_workers_and_the_fleet(redis_url: str, key_prefix: str, seeded: int) -> None:
    async with mounted(make_router(redis_url, key_prefix=key_prefix), "/statedb") as client:
        one = await client.get("/api/workers/a@h")
        fleet = await client.get(f"/api/workers/{FLEET}")
        missing = await client.get("/api/workers/nosuch@box")
    assert one.status_code == 200 and one.json()["key"] == KeySchema(key_prefix).revoked_key("a@h")
    assert fleet.json()["revoked_count"] == 2
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"no state for worker nosuch@box under prefix {key_prefix}"}


async def test_revoked_ids_newest_first_by_keyset_pages(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    """250 ids, many sharing a time (ties across page boundaries): every id once, newest first."""
    key = KeySchema(key_prefix).revoked_key("w@h")
    scores = {f"id-{i:03d}": 1_700_000_000.0 + i // 7 for i in range(250)}
    redis_client.zadd(key, scores)
    seen: list[str] = []
    async with mounted(make_router(redis_url, key_prefix=key_prefix), "/statedb") as client:
        page = (await client.get("/api/workers/w@h/revoked", params={"limit": 40})).json()
        while True:
            seen += [item["task_id"] for item in page["items"]]
            assert all(item["revoked_at"].endswith("Z") for item in page["items"])
            if page["next_before"] is None:
                break
            page = (await client.get("/api/workers/w@h/revoked",
                                     params={"limit": 40, "before": page["next_before"]})).json()
        older = (await client.get("/api/workers/w@h/revoked", params={"before": 1_700_000_010.0})).json()
        bad = await client.get("/api/workers/w@h/revoked", params={"before": "yesterday"})
        too_many = await client.get("/api/workers/w@h/revoked", params={"limit": 100_000})
    assert len(seen) == len(set(seen)) == 250
    assert [scores[task_id] for task_id in seen] == sorted(scores.values(), reverse=True)
    assert {scores[item["task_id"]] for item in older["items"]} == {1_700_000_000.0 + d for d in range(10)}
    assert bad.status_code == 422 and "before" in bad.text
    assert too_many.status_code == 422 and "limit" in too_many.text


async def test_a_shared_scope_workers_revoked_ids_are_the_fleet_sets(
    redis_url: str, key_prefix: str, seeded: int
) -> None:
    """As ``celery statedb ls`` says: in the shared scope a worker reads and writes the fleet set."""
    async with mounted(make_router(redis_url, key_prefix=key_prefix, scope="shared"), "/statedb") as client:
        page = (await client.get("/api/workers/s@h/revoked")).json()
    assert page["key"] == KeySchema(key_prefix).shared_revoked_key
    assert [item["task_id"] for item in page["items"]] == ["fleet-1", "new-a"]


async def test_where_a_task_is_revoked(redis_url: str, key_prefix: str, seeded: int) -> None:
    async with mounted(make_router(redis_url, key_prefix=key_prefix), "/statedb") as client:
        found = (await client.get("/api/tasks/new-a")).json()
        nowhere = (await client.get("/api/tasks/never-revoked")).json()
        bad = await client.get("/api/tasks/a%0Ab")  # a newline: never a Celery id
    assert found["revoked"] is True
    assert sorted(p["worker"] for p in found["places"]) == ["a@h", FLEET]
    assert {p["revoked_at_epoch"] for p in found["places"]} == {seeded - 60, seeded - 30}
    assert nowhere == {"task_id": "never-revoked", "revoked": False, "places": []}
    assert bad.status_code == 422 and "control characters" in bad.text


async def test_purge_previews_then_removes(
    redis_client: redis.Redis, redis_url: str, key_prefix: str, seeded: int
) -> None:
    schema = KeySchema(key_prefix)
    async with mounted(make_router(redis_url, key_prefix=key_prefix), "/statedb") as client:
        preview = (await client.post("/api/purge", json={"older_than": "30d"})).json()
        assert redis_client.zcard(schema.revoked_key("a@h")) == 2  # a dry run by default
        done = (await client.post("/api/purge", json={"older_than": "30d", "dry_run": False})).json()
        bad = await client.post("/api/purge", json={"older_than": "a while"})
        unknown = await client.post("/api/purge", json={"older_than": "1d", "worker": "nosuch@box"})
        missing = await client.post("/api/purge", json={})
    assert (preview["dry_run"], preview["removed"]) == (True, 2)  # old-a and g
    assert preview["message"].startswith("would remove 2 revoked ids older than 30d from 2 sets")
    assert (done["dry_run"], done["removed"]) == (False, 2)
    assert done["cutoff"].endswith("Z") and abs(done["cutoff_epoch"] - (seeded - 30 * DAY)) < 60
    assert redis_client.zrange(schema.revoked_key("a@h"), 0, -1) == [b"new-a"]
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "older_than"]
    assert unknown.status_code == 404
    assert missing.status_code == 422 and "older_than" in missing.text


async def test_a_purge_below_the_in_memory_expiry_needs_force(
    redis_client: redis.Redis, redis_url: str, key_prefix: str, seeded: int
) -> None:
    """As ``celery statedb purge`` needs --force: a live worker that missed the broadcast still holds
    such ids in memory and may write them back. The preview warns; the purge itself is refused."""
    schema = KeySchema(key_prefix)
    async with mounted(make_router(redis_url, key_prefix=key_prefix), "/statedb") as client:
        preview = (await client.post("/api/purge", json={"older_than": "45s"})).json()
        refused = await client.post("/api/purge", json={"older_than": "45s", "dry_run": False})
        assert redis_client.zcard(schema.revoked_key("a@h")) == 2
        forced = (await client.post("/api/purge", json={"older_than": "45s", "dry_run": False, "force": True})).json()
        old_enough = (await client.post("/api/purge", json={"older_than": "30d"})).json()
    assert (preview["removed"], preview["warning"]) == (3, "older_than 45s is below the workers' in-memory expiry "
                                                           "(3h): a live worker that missed the purge broadcast keeps "
                                                           "honouring such ids until they expire from its memory, and "
                                                           "may write them back")
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "older_than"]
    assert refused.json()["detail"][0]["msg"].endswith("(3h): a live worker that missed the purge broadcast keeps "
                                                       "honouring such ids until they expire from its memory, and may "
                                                       "write them back; purge older ids, or send force: true")
    assert forced["removed"] == 3 and forced["warning"] == preview["warning"]  # forced, and still said
    assert redis_client.zcard(schema.revoked_key("a@h")) == 0 and redis_client.zcard(schema.shared_revoked_key) == 2
    assert old_enough["warning"] is None
    async with mounted(make_router(redis_url, key_prefix=key_prefix, in_memory_expiry=20), "/statedb") as client:
        shorter = (await client.post("/api/purge", json={"older_than": "25s"})).json()  # the workers' own expiry
    assert shorter["warning"] is None
    async with mounted(make_router(redis_url, key_prefix=key_prefix, in_memory_expiry=0), "/statedb") as client:
        never = await client.post("/api/purge", json={"older_than": "3650d", "dry_run": False})  # 0: no expiry
    assert never.status_code == 422 and "(none: they keep ids until their size cap" in never.text
    for bad in (-1.0, float("nan"), "3h", True):
        with pytest.raises(ConfigurationError, match="in_memory_expiry must be seconds"):
            make_router(redis_url, key_prefix=key_prefix, in_memory_expiry=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ttl", "warned"), [(None, True), ("30", False)])
async def test_the_celery_dashboard_guards_purges_with_the_apps_own_expiry(
    redis_url: str, key_prefix: str, seeded: int, monkeypatch: pytest.MonkeyPatch, ttl: str | None, warned: bool
) -> None:
    from celery import Celery

    from celery_redis_statedb.dashboard import make_router as make_celery_router

    if ttl is not None:
        monkeypatch.setenv("CELERY_REDIS_STATE_TTL", ttl)  # the workers' in-memory expiry, as they read it
    app = Celery("dashboard-host", broker="memory://", set_as_current=False)
    app.conf.update(worker_state_db=redis_url, redis_state_key_prefix=key_prefix)
    async with mounted(make_celery_router(app), "/statedb") as client:
        preview = (await client.post("/api/purge", json={"older_than": "45s"})).json()
    assert (preview["warning"] is not None) is warned


async def test_revoke_and_restore(redis_client: redis.Redis, redis_url: str, key_prefix: str, seeded: int) -> None:
    schema = KeySchema(key_prefix)
    async with mounted(make_router(redis_url, key_prefix=key_prefix), "/statedb") as client:
        stored = (await client.post("/api/revoke", json={"task_ids": ["t-1", "t-2"], "broadcast": False})).json()
        needs_celery = await client.post("/api/revoke", json={"task_ids": ["t-3"]})
        newline = await client.post("/api/revoke", json={"task_ids": ["ok", "bad\nid"], "broadcast": False})
        empty = await client.post("/api/revoke", json={"task_ids": [], "broadcast": False})
        restored = (await client.post("/api/restore", json={"task_ids": ["new-a"], "worker": "a@h"})).json()
        everywhere = (await client.post("/api/restore", json={"task_ids": ["t-1"]})).json()
    assert (stored["added"], stored["task_ids"], stored["broadcast"]) == (2, ["t-1", "t-2"], False)
    assert needs_celery.status_code == 422 and needs_celery.json()["detail"][0]["loc"] == ["body", "broadcast"]
    assert newline.status_code == 422 and newline.json()["detail"][0]["loc"] == ["body", "task_ids"]
    assert empty.status_code == 422
    assert redis_client.zscore(schema.shared_revoked_key, "t-3") is None  # refused before anything is stored
    assert redis_client.zscore(schema.shared_revoked_key, "ok") is None
    assert restored["removed"] == 2 and restored["fleet_removed"] == 1  # its set, and the fleet set binding it
    assert "also removed from the fleet set" in restored["message"] and restored["note"]
    assert everywhere["removed"] == 1 and everywhere["note"] is None
    assert redis_client.zscore(schema.shared_revoked_key, "t-2") is not None


async def test_read_only_has_no_write_endpoints(redis_url: str, key_prefix: str, seeded: int) -> None:
    async with mounted(make_router(redis_url, key_prefix=key_prefix, read_only=True), "/statedb") as client:
        assert (await client.get("/api/config")).json()["read_only"] is True
        for path in ("/api/purge", "/api/revoke", "/api/restore"):
            assert (await client.post(path, json={})).status_code in (404, 405)
        assert (await client.get("/api/workers")).status_code == 200


async def test_openapi_shows_the_models(redis_url: str, key_prefix: str) -> None:
    host = FastAPI()
    host.include_router(make_router(redis_url, key_prefix=key_prefix), prefix="/statedb")
    schema = host.openapi()
    assert {"Worker", "Workers", "RevokedPage", "PurgeRequest", "PurgeResult", "RestoreRequest"} <= set(
        schema["components"]["schemas"])
    assert "/statedb/api/workers/{name}/revoked" in schema["paths"]


async def test_the_hosts_auth_guards_every_route(redis_url: str, key_prefix: str) -> None:
    def admin_only(x_token: str | None = Header(None)) -> None:
        if x_token != "let-me-in":
            raise HTTPException(401, detail="who are you?")

    router = make_router(redis_url, key_prefix=key_prefix, dependencies=[Depends(admin_only)])
    async with mounted(router, "/statedb") as client:
        for method, path in (("GET", "/"), ("GET", "/api/workers"), ("POST", "/api/purge")):
            assert (await client.request(method, path, json={"older_than": "1d"})).status_code == 401
        assert (await client.get("/api/workers", headers={"x-token": "let-me-in"})).status_code == 200


async def test_redis_down_is_a_503_naming_the_masked_url(key_prefix: str) -> None:
    server = PrivateServer(password="s3cret-dashboard-pw").start()
    url = server.url
    server.kill()
    try:
        async with mounted(make_router(url, key_prefix=key_prefix), "/statedb") as client:
            answers = [await client.get("/api/workers"), await client.get("/api/tasks/x"),
                       await client.post("/api/purge", json={"older_than": "1d"})]
    finally:
        server.close()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert "redis://:***@127.0.0.1" in answer.json()["detail"]
        assert "s3cret" not in answer.text and "Traceback" not in answer.text


async def test_a_client_passed_in_is_never_closed(redis_url: str, key_prefix: str, seeded: int) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with mounted(make_router(client, key_prefix=key_prefix), "/statedb") as http:
            assert (await http.get("/api/workers")).status_code == 200
            assert (await http.get("/api/config")).json()["redis"] == "the Redis client passed in"
        assert await client.ping()  # the router's lifespan ended: the host's client is still open
    finally:
        await client.aclose()


async def test_a_url_opens_one_client_that_the_routers_lifespan_closes(key_prefix: str) -> None:
    with PrivateServer() as server:
        probe = server.client()
        try:
            def clients() -> int:
                return len([c for c in probe.client_list() if c.get("cmd") != "client|list"])

            router = make_router(server.url, key_prefix=key_prefix)
            async with mounted(router, "/statedb") as http:
                for _ in range(5):
                    assert (await http.get("/api/workers")).status_code == 200
                assert clients() == 1  # one pooled connection for the router's life
            await asyncio.sleep(0.1)
            assert clients() == 0
        finally:
            probe.close()


async def test_live_workers_and_their_hooks(redis_url: str, key_prefix: str, seeded: int) -> None:
    told: list[Any] = []

    async def status() -> dict[str, dict[str, Any]]:
        return {"a@h": {"pending": 3, "failing": True, "failing_since": 1_700_000_000.5, "in_memory": 9,
                        "index_size": 0, "last_clock_save": 1_700_000_000.0, "version": "0.6.0"},
                "s@h": {"error": "no Redis statedb on this worker"}}

    async def revoked(task_ids: Sequence[str]) -> None:
        told.append(("revoked", list(task_ids)))

    async def restored(report: RestoreReport, worker: str | None) -> None:
        told.append(("restored", list(report.task_ids), worker))

    async def purged(cut: float, worker: str | None) -> None:
        told.append(("purged", worker))

    async def metrics(admin: StateAdmin) -> str:
        return f"celery_statedb_revoked_ids {len(await admin.list_workers())}\n"

    live = LiveWorkers(status=status, revoked=revoked, restored=restored, purged=purged, metrics=metrics)
    async with mounted(make_router(redis_url, key_prefix=key_prefix, live=live), "/statedb") as client:
        body = (await client.get("/api/workers")).json()
        await client.post("/api/revoke", json={"task_ids": ["t-9"]})
        await client.post("/api/restore", json={"task_ids": ["t-9"], "worker": "a@h"})
        await client.post("/api/purge", json={"older_than": "30d", "dry_run": False})
        await client.post("/api/purge", json={"older_than": "30d", "dry_run": True})  # a preview tells nobody
        exposition = await client.get("/metrics")
    by_name = {w["worker"]: w for w in body["workers"]}
    assert body["live"] is True
    assert by_name["a@h"]["live"]["pending"] == 3 and by_name["a@h"]["live"]["failing"] is True
    assert by_name["a@h"]["live"]["failing_since"] == "2023-11-14T22:13:20.500000Z"
    assert by_name["s@h"]["live"]["error"] == "no Redis statedb on this worker"
    assert by_name["gone@h"]["live"] is None and by_name[FLEET]["live"] is None
    assert told == [("revoked", ["t-9"]), ("restored", ["t-9"], "a@h"), ("purged", None)]
    assert exposition.status_code == 200 and exposition.text == "celery_statedb_revoked_ids 3\n"


async def test_metrics_need_the_celery_dashboard(redis_url: str, key_prefix: str) -> None:
    async with mounted(make_router(redis_url, key_prefix=key_prefix), "/statedb") as client:
        answer = await client.get("/metrics")
    assert answer.status_code == 404 and "celery_redis_statedb.dashboard" in answer.json()["detail"]


def test_bad_settings_are_refused_when_the_router_is_made(redis_url: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        make_router(redis_url, scope="Shared")
    with pytest.raises(ValueError, match="unsupported Redis URL scheme"):
        make_router("http://example.com")
