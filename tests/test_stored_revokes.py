"""Stored revokes bind beyond Celery's in-memory window: the index, its confirmation, lifting.

Against a real server, through WorkerStatePersistence and the very LimitedSet a worker uses.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery.utils.collections import LimitedSet

from celery_redis_statedb.control import statedb_purge, statedb_restore
from celery_redis_statedb.local_servers import PrivateServer
from celery_redis_statedb.stored_index import StoredIdIndex
from tests.keys import revoked_key, shared_key
from tests.persistences import Persistences

WORKER = "w@host"


@pytest.fixture
def make(key_prefix: str, redis_url: str) -> Iterator[Persistences]:
    with Persistences(key_prefix, redis_url, hostname=WORKER) as persistences:
        yield persistences


def own_key(prefix: str) -> str:
    return revoked_key(prefix, WORKER)


def ids(n: int, tag: str = "id") -> list[str]:
    return [f"{tag}-{uuid.uuid4()}" for _ in range(n)]


# -- the index itself ------------------------------------------------------


def test_index_holds_what_it_was_given_and_nothing_else() -> None:
    index = StoredIdIndex()
    stored = ids(1000)
    assert index.bulk_load(task_id.encode() for task_id in stored) == 1000
    later = ids(10, "later")
    for task_id in later:
        index.add(task_id)
    assert all(index.may_hold(task_id) for task_id in stored + later)
    assert not any(index.may_hold(task_id) for task_id in ids(1000, "other"))
    assert not index.may_hold(42) and not index.may_hold(None) and not index.may_hold(b"x")
    assert not index.may_hold("\ud800")  # a lone surrogate is no stored id
    index.lift([stored[0], later[0]])
    assert not index.may_hold(stored[0]) and not index.may_hold(later[0])
    index.add(stored[0])  # revoked again
    assert index.may_hold(stored[0])
    assert len(index) == 1000 + 10 - 2 + 1


def test_index_grows_and_reuses_deleted_slots_keeping_membership() -> None:
    index = StoredIdIndex()
    base = ids(500)
    index.bulk_load((task_id.encode() for task_id in base), expected=500)
    assert len(index) == 500
    extra = ids(20_000, "extra")  # far past the first table: it grows, rebuilt aside
    for task_id in extra:
        index.add(task_id)
    index.lift(base[:50])
    assert len(index) == 450 + 20_000
    assert all(index.may_hold(task_id) for task_id in base[50:] + extra)
    assert not any(index.may_hold(task_id) for task_id in base[:50])
    for round_ in range(5):  # churn: lift and add back, the deleted slots are reused
        index.lift(extra[:5000])
        assert not any(index.may_hold(task_id) for task_id in extra[:5000])
        for task_id in extra[:5000]:
            index.add(task_id)
        assert len(index) == 20_450, round_
    assert index.memory_bytes() <= 16 * len(index) * 2  # no runaway growth from the churn
    index.add(base[60])  # already there: counted once
    assert len(index) == 20_450


def test_an_empty_hash_key_is_still_an_id() -> None:
    index = StoredIdIndex()
    index.bulk_load([b""])  # hash(b"") == 0, the empty-slot marker: stored under another key
    assert len(index) == 1 and index.may_hold("")


def test_unicode_ids_are_found_as_stored() -> None:
    index = StoredIdIndex()
    odd = ["tâche-é", "任务-1", "emoji-\U0001f600", "glob*?[]\\"]
    index.bulk_load(task_id.encode("utf-8") for task_id in odd)
    assert all(index.may_hold(task_id) for task_id in odd)


# -- older than Celery's in-memory expiry -----------------------------------


def test_ids_older_than_the_memory_window_bind_through_the_index(
    make: Persistences, redis_client: redis.Redis, key_prefix: str
) -> None:
    now = time.time()
    recent, old, fleet_old = ids(5, "recent"), ids(20, "old"), ids(7, "fleet")
    redis_client.zadd(own_key(key_prefix), {**{t: now - 10 for t in recent}, **{t: now - 7200 for t in old}})
    redis_client.zadd(shared_key(key_prefix), {t: now - 86400 * 400 for t in fleet_old})
    revoked = LimitedSet(maxlen=50000, expires=3600)
    persistence = make(revoked=revoked)
    persistence.boot()
    assert set(revoked._data) == set(recent)
    assert (persistence.merged.in_memory, persistence.merged.in_index) == (5, 27)
    assert all(task_id in revoked for task_id in old + fleet_old)
    confirmations = persistence.stored.confirmations
    assert not any(task_id in revoked for task_id in ids(200, "never"))
    assert persistence.stored.confirmations == confirmations  # the hot path: no Redis call


def test_expired_from_memory_after_boot_still_binds(make: Persistences, redis_client: redis.Redis,
                                                    key_prefix: str) -> None:
    revoked = LimitedSet(maxlen=50000, expires=1)
    persistence = make(revoked=revoked)
    persistence.boot()
    (task_id,) = ids(1)
    revoked.add(task_id)  # the revoke command: written through
    time.sleep(1.1)
    revoked.purge()  # Celery's own expiry, as at mingle or the next add
    assert task_id not in revoked._data
    assert task_id in revoked
    assert redis_client.zscore(own_key(key_prefix), task_id) is not None


# -- pushed out by the size cap ---------------------------------------------


def test_ids_pushed_out_by_the_size_cap_still_bind(make: Persistences, key_prefix: str) -> None:
    revoked = LimitedSet(maxlen=5, expires=10800)
    persistence = make(revoked=revoked)
    persistence.boot()
    first, *more = ids(16)
    revoked.update([first])
    revoked.update(more)
    assert first not in revoked._data and len(revoked._data) <= 5
    assert first in revoked
    assert all(task_id in revoked for task_id in more)


def test_boot_over_the_size_cap_keeps_the_newest_in_memory_and_the_rest_in_the_index(
    make: Persistences, redis_client: redis.Redis, key_prefix: str
) -> None:
    now = time.time()
    stored = ids(300)
    redis_client.zadd(own_key(key_prefix), {t: now - i for i, t in enumerate(stored)})
    redis_client.zadd(shared_key(key_prefix), {t: now - 0.5 - i for i, t in enumerate(stored[:50])})
    revoked = LimitedSet(maxlen=40, expires=10800)
    persistence = make(revoked=revoked, load_chunk_size=7)
    persistence.boot()
    assert len(revoked._data) <= 40
    assert all(task_id in revoked for task_id in stored)
    assert persistence.merged.total >= 300


def test_an_evicted_id_still_pending_binds_while_redis_is_away(private_server: PrivateServer,
                                                               make: Persistences) -> None:
    revoked = LimitedSet(maxlen=3, expires=10800)
    persistence = make(url=private_server.url, revoked=revoked, socket_timeout=0.5, socket_connect_timeout=0.5)
    persistence.boot()
    private_server.stop()
    first, *more = ids(10)
    revoked.update([first])
    revoked.update(more)
    assert first in persistence.pending and first not in revoked._data
    assert first in revoked


# -- the horizon -------------------------------------------------------------


def test_the_horizon_bounds_what_binds(make: Persistences, redis_client: redis.Redis, key_prefix: str) -> None:
    now = time.time()
    within, beyond = ids(3, "within"), ids(3, "beyond")
    redis_client.zadd(own_key(key_prefix), {**{t: now - 5000 for t in within}, **{t: now - 90000 for t in beyond}})
    revoked = LimitedSet(maxlen=50000, expires=3600)
    persistence = make(revoked=revoked, horizon=86400)
    persistence.boot()
    assert persistence.merged.in_index == 3
    assert all(task_id in revoked for task_id in within)
    assert not any(task_id in revoked for task_id in beyond)
    # An id that ages out of the horizon after boot is let go on its next check.
    persistence.stored.horizon = 4000
    assert within[0] not in revoked
    assert not persistence.stored.index.may_hold(within[0])
    assert redis_client.zscore(own_key(key_prefix), within[0]) is not None  # workers never delete


def test_a_horizon_shorter_than_the_expiry_bounds_memory_too(make: Persistences, redis_client: redis.Redis,
                                                             key_prefix: str) -> None:
    now = time.time()
    fresh, stale = ids(2, "fresh"), ids(2, "stale")
    redis_client.zadd(own_key(key_prefix), {**{t: now - 10 for t in fresh}, **{t: now - 600 for t in stale}})
    revoked = LimitedSet(maxlen=50000, expires=10800)
    make(revoked=revoked, horizon=60).boot()
    assert set(revoked._data) == set(fresh)
    assert not any(task_id in revoked for task_id in stale)


# -- restore and purge lift the revoke ---------------------------------------


def test_a_restore_in_redis_alone_is_honoured_on_the_next_check(make: Persistences, redis_client: redis.Redis,
                                                                key_prefix: str) -> None:
    now = time.time()
    (old,) = ids(1)
    redis_client.zadd(own_key(key_prefix), {old: now - 7200})
    revoked = LimitedSet(maxlen=50000, expires=3600)
    persistence = make(revoked=revoked)
    persistence.boot()
    assert old in revoked
    redis_client.zrem(own_key(key_prefix), old)
    assert old in revoked  # a confirmed hit is remembered...
    persistence.lift([old])  # ...until the restore broadcast says otherwise
    assert old not in revoked
    confirmations = persistence.stored.confirmations
    assert old not in revoked
    assert persistence.stored.confirmations == confirmations


def test_an_unconfirmed_hit_leaves_the_index(make: Persistences, redis_client: redis.Redis, key_prefix: str) -> None:
    now = time.time()
    (old,) = ids(1)
    redis_client.zadd(shared_key(key_prefix), {old: now - 7200})
    revoked = LimitedSet(maxlen=50000, expires=3600)
    persistence = make(revoked=revoked)
    persistence.boot()
    redis_client.zrem(shared_key(key_prefix), old)  # restored while this worker did not listen
    assert old not in revoked
    assert not persistence.stored.index.may_hold(old)


def test_the_restore_control_command_lifts_memory_index_and_pending(make: Persistences, redis_client: redis.Redis,
                                                                    key_prefix: str) -> None:
    from celery.worker import state as worker_state

    now = time.time()
    (old,) = ids(1)
    redis_client.zadd(own_key(key_prefix), {old: now - 7200})
    persistence = make(revoked=worker_state.revoked, revoke_expires=3600)
    persistence.boot()
    (recent,) = ids(1)
    worker_state.revoked.add(recent)
    persistence.pending["waiting"] = now
    try:
        assert old in worker_state.revoked and recent in worker_state.revoked
        redis_client.zrem(own_key(key_prefix), old, recent)
        reply = statedb_restore(None, [old, recent, "waiting"])
        assert reply == {"ok": "1 of 3 ids restored"}
        assert old not in worker_state.revoked and recent not in worker_state.revoked
        assert "waiting" not in persistence.pending
    finally:
        persistence.save()
        worker_state.revoked.clear()


def test_the_purge_control_command_drops_only_what_redis_no_longer_holds(
    make: Persistences, redis_client: redis.Redis, key_prefix: str
) -> None:
    from celery.worker import state as worker_state

    now = time.time()
    purged, kept = ids(4, "purged"), ids(4, "kept")
    redis_client.zadd(own_key(key_prefix), {**{t: now - 600 for t in purged}, **{t: now - 500 for t in kept}})
    persistence = make(revoked=worker_state.revoked, revoke_expires=3600)
    persistence.boot()
    try:
        assert set(worker_state.revoked._data) == set(purged + kept)
        unstorable = 12345
        worker_state.revoked.add(unstorable)
        redis_client.zremrangebyscore(own_key(key_prefix), "-inf", f"({now - 550}")  # the purge
        reply = statedb_purge(None, before=now - 550)
        assert reply == {"ok": "4 purged ids dropped from memory"}
        assert not any(task_id in worker_state.revoked for task_id in purged)
        assert all(task_id in worker_state.revoked for task_id in kept)
        assert unstorable in worker_state.revoked
        assert "error" in statedb_purge(None, before="soon")
    finally:
        persistence.save()
        worker_state.revoked.clear()


# -- Redis down on a hit -----------------------------------------------------


def test_a_hit_redis_cannot_confirm_is_honoured_with_a_warning(
    private_server: PrivateServer, make: Persistences, caplog: pytest.LogCaptureFixture
) -> None:
    client = private_server.client()
    (old,) = ids(1)
    revoked = LimitedSet(maxlen=50000, expires=3600)
    persistence = make(url=private_server.url, revoked=revoked, socket_timeout=0.5, socket_connect_timeout=0.5)
    client.zadd(persistence.repository.keys.revoked, {old: time.time() - 7200})
    client.close()
    persistence.boot()
    private_server.stop()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        assert old in revoked
        assert old in revoked
    assert time.monotonic() - started < 5
    assert "cannot confirm now" in caplog.text and "discarded as revoked" in caplog.text
    assert caplog.text.count("cannot confirm now") == 1  # rate-limited
    assert "never" not in revoked  # not in the index: no Redis needed to say no


def test_boot_warns_once_above_a_million_stored_ids(make: Persistences, redis_client: redis.Redis, key_prefix: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from celery_redis_statedb import persistence as module

    monkeypatch.setattr(module, "MANY_STORED_IDS", 10)
    now = time.time()
    redis_client.zadd(own_key(key_prefix), {t: now - 7200 for t in ids(11)})
    with caplog.at_level(logging.INFO, logger="celery_redis_statedb"):
        make(revoked=LimitedSet(maxlen=50000, expires=3600)).boot()
    assert "0 honoured in memory, 11 more by the index of stored revokes (horizon: no limit)" in caplog.text
    assert caplog.text.count("celery statedb purge") == 1


def test_a_bad_member_read_ahead_past_the_size_cap_hides_no_stored_id(
    make: Persistences, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Boot reads windows ahead of the size cap; a bad member in a window read ahead but never
    handed out was counted as a rank read, so the index started one rank too low and the
    stored id just past the newest ones was in neither memory nor the index."""
    now = time.time()
    newest, older = ids(2, "newest"), ids(3, "older")
    redis_client.zadd(own_key(key_prefix), {newest[0]: now - 10, newest[1]: now - 11,  # window of the cap
                                            older[0]: now - 500,  # the next window: read ahead
                                            b"\xff\xfe": now - 700,  # a bad member, read ahead too
                                            older[1]: now - 900, older[2]: now - 5000})
    revoked = LimitedSet(maxlen=2, expires=10800)
    persistence = make(revoked=revoked)
    persistence.boot()
    assert persistence.bad.count >= 1
    assert all(task_id in revoked for task_id in newest + older)


def test_a_confirmed_hit_is_asked_again_after_a_moment(make: Persistences, redis_client: redis.Redis, key_prefix: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore this worker did not hear (no broadcast, a ZREM by hand) lifts the revoke all the same."""
    from celery_redis_statedb import stored_revokes

    monkeypatch.setattr(stored_revokes, "CONFIRMED_FOR", 0.05)
    (old,) = ids(1)
    redis_client.zadd(own_key(key_prefix), {old: time.time() - 7200})
    revoked = LimitedSet(maxlen=50000, expires=3600)
    make(revoked=revoked).boot()
    assert old in revoked
    redis_client.zrem(own_key(key_prefix), old)
    time.sleep(0.1)
    assert old not in revoked
