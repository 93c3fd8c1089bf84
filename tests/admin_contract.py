"""The whole async admin contract in one scenario, run by several tests: on clients of every
``decode_responses`` and protocol, with every command recorded, and as the README's admin ACL user."""

from __future__ import annotations

import json

import pytest
import redis

from statedb import FLEET, InvalidInputError, StateAdmin, UnknownWorkerError
from statedb.admin import utc
from statedb.keys import KeySchema

DAY = 86400


def seed(client: redis.Redis, prefix: str) -> int:
    """Three workers and the fleet set, as workers that write an info hash leave them (and one of an
    earlier version: none); returns the server's time the scores are relative to."""
    schema, now = KeySchema(prefix), int(client.time()[0])
    client.zadd(schema.revoked_key("a@h"), {"old-a": now - 40 * DAY, "new-a": now - 60})
    client.set(schema.clock_key("a@h"), 49)
    client.hset(schema.info_key("a@h"), mapping={"last_seen": f"{now - 50 * DAY:.6f}", "scope": "worker",
                                                  "version": "0.6.0"})
    client.zadd(schema.stamps_key("a@h"), {'["batch","b-1"]': now - 40 * DAY})
    client.set(schema.clock_key("s@h"), 7)  # a shared-scope worker owns only its clock and info
    client.hset(schema.info_key("s@h"), mapping={"last_seen": f"{now - 10:.6f}", "scope": "shared",
                                                  "version": "0.6.0"})
    client.zadd(schema.revoked_key("gone@h"), {"g": now - 90 * DAY})  # 0.5: no info hash, last seen unknown
    client.set(schema.clock_key("gone@h"), 1)
    client.zadd(schema.shared_revoked_key, {"fleet-1": now - 5, "new-a": now - 30})
    return now


async def run_contract(admin: StateAdmin, client: redis.Redis) -> None:
    """Every method of StateAdmin and its stamps, with the results checked. ``client`` (full rights)
    seeds the data and checks what Redis holds."""
    now = seed(client, admin.key_prefix)
    await _reads(admin, now)
    await _changes(admin, client, now)
    await _forgetting(admin, client)


async def _reads(admin: StateAdmin, now: int) -> None:
    schema = KeySchema(admin.key_prefix)
    assert await admin.list_workers() == ["a@h", "gone@h", "s@h"]
    states = {state.worker: state for state in await admin.inspect_workers()}
    assert list(states) == ["a@h", "gone@h", "s@h", FLEET]
    a = states["a@h"]
    assert (a.revoked_count, a.clock, a.scope, a.version) == (2, 49, "worker", "0.6.0")
    assert (a.oldest, a.newest, a.last_seen) == (utc(now - 40 * DAY), utc(now - 60), utc(now - 50 * DAY))
    assert a.stamps_count == 1 and a.key == schema.revoked_key("a@h")
    assert (states["s@h"].scope, states["s@h"].revoked_count, states["s@h"].clock) == ("shared", 0, 7)
    assert states["gone@h"].last_seen is None and states["gone@h"].scope == "worker"
    assert states[FLEET].revoked_count == 2 and states[FLEET].key == schema.shared_revoked_key
    rows = json.loads(json.dumps([state.as_dict() for state in states.values()]))
    assert rows[0]["last_seen_epoch"] == now - 50 * DAY and rows[0]["oldest"].endswith("Z")
    assert (await admin.inspect_worker("s@h")).clock == 7
    assert [s.worker for s in await admin.inspect_workers(["gone@h", None])] == ["gone@h", FLEET]
    with pytest.raises(UnknownWorkerError, match="no state for worker nosuch@box under prefix"):
        await admin.inspect_worker("nosuch@box")

    revocations = [row async for row in admin.iter_revoked("a@h")]
    assert [(r.task_id, r.worker, r.revoked_at) for r in revocations] == [
        ("new-a", "a@h", utc(now - 60)), ("old-a", "a@h", utc(now - 40 * DAY))]
    assert [row.task_id async for row in admin.iter_revoked(FLEET, limit=1)] == ["fleet-1"]
    assert [(row, when) async for row, when in admin.revoked_rows("a@h", limit=1)] == [("new-a", now - 60)]
    with pytest.raises(UnknownWorkerError):
        [row async for row in admin.iter_revoked("nosuch@box")]
    assert sorted(p.worker for p in await admin.where_revoked("new-a")) == ["a@h", FLEET]

    (stamps,) = await admin.stamps.inspect_stamps(["a@h"])
    assert (stamps.worker, stamps.stamps_count, stamps.oldest) == ("a@h", 1, utc(now - 40 * DAY))
    assert [row[:2] async for row in admin.stamps.iter_stamps("a@h")] == [("batch", "b-1")]


async def _changes(admin: StateAdmin, client: redis.Redis, now: int) -> None:
    schema = KeySchema(admin.key_prefix)
    assert await admin.stamps.revoke_stamps([("batch", "b-2")]) == 1
    assert await admin.stamps.restore_stamps([("batch", "b-2")]) == 1

    revoked = await admin.revoke(["r-1", "r-1", "r-2"])
    assert (revoked.task_ids, revoked.added, revoked.worker) == (("r-1", "r-2"), 2, FLEET)
    restored = await admin.restore(["new-a"], worker="a@h")
    assert (restored.removed, restored.fleet_removed) == (2, 1) and "also removed from the fleet set" in (
        restored.note or "")
    assert client.zscore(schema.shared_revoked_key, "new-a") is None
    assert (await admin.restore(["r-2"])).sets[0].worker == FLEET

    planned = await admin.purge_old_revoked(older_than="30d", dry_run=True)
    assert (planned.removed, planned.stamps_removed, planned.dry_run) == (2, 1, True)
    assert client.zcard(schema.revoked_key("a@h")) == 1
    purged = await admin.purge_old_revoked(older_than="30d")
    assert (purged.removed, purged.stamps_removed) == (2, 1)
    assert sorted(change.worker for change in purged.sets) == ["a@h", "gone@h"]
    assert await admin.purge_old_revoked(older_than="30d", worker="s@h") is not None  # its set: the fleet's


async def _forgetting(admin: StateAdmin, client: redis.Redis) -> None:
    schema = KeySchema(admin.key_prefix)
    pruned = await admin.prune(idle_for="30d", live=["a@h"], dry_run=True)
    assert (pruned.workers, pruned.kept_live, pruned.kept_unknown) == ((), ("a@h",), ("gone@h",))
    pruned = await admin.prune(idle_for="30d", live=["a@h"], include_unknown=True)
    assert [w.worker for w in pruned.workers] == ["gone@h"] and pruned.keys_removed == 1  # its set was purged
    with pytest.raises(InvalidInputError, match="alive"):
        await admin.forget(["a@h"], live=["a@h"])
    with pytest.raises(UnknownWorkerError):
        await admin.forget(["a@h", "nosuch@box"])
    with pytest.raises(InvalidInputError, match="fleet"):
        await admin.forget([FLEET])
    forgotten = await admin.forget(["a@h"], dry_run=True)
    assert forgotten.keys_removed == 0 and client.exists(schema.clock_key("a@h"))
    forgotten = await admin.forget(["a@h"])
    # its clock and info (its set went with the restore and the purge, its stamps with the purge)
    assert [w.worker for w in forgotten.workers] == ["a@h"] and forgotten.keys_removed == 2
    assert await admin.list_workers() == ["s@h"]
    assert client.zcard(schema.shared_revoked_key) == 2  # the fleet set is nobody's to forget
