"""The fleet set's snapshot: sound (no stored id missed, removals honoured), robust, and bounded reads.

The encoding is checked pure; everything else against a real server, through the boot a worker
runs (WorkerStatePersistence with the LimitedSet Celery uses), with a policy that builds a snapshot
for any fleet set (the default waits for 4096 ids).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio
import pytest
import redis
from celery.utils.collections import LimitedSet
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.clocks import LamportClock

from celery_redis_statedb import WorkerStatePersistence, fleet_snapshot
from celery_redis_statedb.boot_merge import merge_stored
from celery_redis_statedb.fleet_snapshot import SnapshotPolicy
from celery_redis_statedb.local_servers import PrivateServer
from statedb import StateDBConfig, SyncStateRepository, admin, cursors, snapshot, uuid_pack
from statedb.errors import CorruptValueError, InvalidInputError
from statedb.keys import KeySchema
from tests.keys import shared_key
from tests.round_trips import round_trips

EAGER = SnapshotPolicy(min_ids=1, min_stale=10**9, wait_base=5.0)  # a snapshot for any set, never outgrown
PURE = settings(max_examples=200, deadline=None)

Factory = Callable[..., WorkerStatePersistence]


def ids(n: int, tag: str | None = None) -> list[str]:
    """Canonical UUIDs (packed), or tagged ids (kept as text)."""
    return [str(uuid.uuid4()) if tag is None else f"{tag}-{uuid.uuid4()}" for _ in range(n)]


def snap(prefix: str) -> str:
    return snapshot.snapshot_key(shared_key(prefix))


@pytest.fixture
def make(key_prefix: str, redis_url: str) -> Iterator[Factory]:
    made: list[WorkerStatePersistence] = []

    def factory(name: str = "w@host", *, policy: SnapshotPolicy | None = EAGER, url: str = redis_url,
                revoked: LimitedSet | None = None, **settings_: Any) -> WorkerStatePersistence:
        config = StateDBConfig(url=url, key_prefix=key_prefix, **settings_)
        persistence = WorkerStatePersistence(
            config, name, revoked=revoked if revoked is not None else LimitedSet(maxlen=50000, expires=10800),
            clock=LamportClock())
        persistence.fleet_snapshot = policy
        made.append(persistence)
        return persistence

    yield factory
    for persistence in made:
        persistence.save()


def booted(make: Factory, name: str = "w@host", **kwargs: Any) -> WorkerStatePersistence:
    persistence = make(name, **kwargs)
    persistence.boot()
    return persistence


def binds(persistence: WorkerStatePersistence, task_ids: Sequence[str]) -> list[str]:
    """The ids of ``task_ids`` that the worker does NOT honour."""
    return [task_id for task_id in task_ids if task_id not in persistence.revoked]


def seed(redis_client: redis.Redis, key: str, task_ids: Sequence[str], newest: float, step: float = 2.0) -> None:
    """Ids with distinct scores ``step`` apart, the first the newest."""
    redis_client.zadd(key, {task_id: newest - i * step for i, task_id in enumerate(task_ids)})


def snapshot_built(make: Factory, redis_client: redis.Redis, key_prefix: str, n: int = 500
                   ) -> tuple[float, list[str]]:
    """(now, ids): ``n`` ids stored in the fleet set 100 s ago and more, and a boot that built its snapshot."""
    now = time.time()
    stored = ids(n)
    seed(redis_client, shared_key(key_prefix), stored, now - 100)
    assert booted(make, "a@h").merged.fleet_source == "built"
    return now, stored


# -- the encoding, pure ------------------------------------------------------------


def test_canonical_uuids_pack_to_16_bytes_and_back() -> None:
    members = [task_id.encode() for task_id in ids(1000)]
    packed = uuid_pack.pack_all(members)
    assert packed is not None and len(packed) == 16 * 1000
    assert uuid_pack.unpack_all(packed) == members
    assert uuid_pack.pack_all([]) == b"" and uuid_pack.unpack_all(b"") == []
    canonical = members[0]
    for other in (canonical.upper(), canonical[:-1], canonical + b"0", b"{" + canonical[1:-1] + b"}",
                  canonical.replace(b"-", b"_"), canonical[:10] + b"\n" + canonical[11:], b"x" * 36):
        assert not uuid_pack.is_canonical(other)
        assert uuid_pack.pack_all([canonical, other]) is None, other
    with pytest.raises(ValueError, match="multiple of 16"):
        uuid_pack.unpack_all(b"x" * 17)


def _write(rows: list[tuple[bytes, float]], key: str = "k") -> bytes:
    writer = snapshot.SnapshotWriter(key, now=1e9 + 200)
    rows = sorted(rows, key=lambda row: row[1])
    for i in range(0, len(rows), 7):
        writer.add(rows[i: i + 7])
    return writer.value(max_score=max((s for _, s in rows if math.isfinite(s)), default=0.0), built_at=1.0)


def _read(value: bytes, key: str = "k") -> tuple[snapshot.Head, snapshot.SnapshotBody]:
    head = snapshot.decode_head(key, value)
    assert head is not None
    return head, snapshot.decode_body(key, head, value[snapshot.HEAD_SIZE:])


member_kinds = st.one_of(st.builds(lambda: str(uuid.uuid4()).encode()),
                         st.text(min_size=1, max_size=8).map(str.encode))


@PURE
@given(rows=st.dictionaries(member_kinds, st.floats(1e9, 1e9 + 200), max_size=60),
       room=st.one_of(st.none(), st.integers(0, 70)), memory_from=st.one_of(st.none(), st.floats(1e9, 1e9 + 200)),
       horizon_from=st.one_of(st.none(), st.floats(1e9, 1e9 + 200)))
def test_a_snapshot_partitions_as_the_set_would(rows: dict[bytes, float], room: int | None,
                                                memory_from: float | None, horizon_from: float | None) -> None:
    """Within the horizon every id is once in memory or the index; memory holds the newest, within
    its floor and room; every stamp is at least the id's score and less than a second more."""
    head, body = _read(_write(list(rows.items())))
    assert (head.count, head.bad, len(body)) == (len(rows), 0, len(rows))
    part = body.partition(room=room, memory_from=memory_from, horizon_from=horizon_from)
    scores = {member.decode(): score for member, score in rows.items()}
    within = {task_id for task_id, score in scores.items() if horizon_from is None or math.ceil(score) >= horizon_from}
    in_memory, index = part.in_memory, [member for page in part.index for member in page]
    assert len(set(in_memory)) == len(in_memory) and len(index) == part.index_count
    assert set(in_memory) | {member.decode() for member in index} == within
    assert len(in_memory) + len(index) == len(within)
    candidates = [task_id for task_id in within if memory_from is None or math.ceil(scores[task_id]) >= memory_from]
    assert len(in_memory) == (len(candidates) if room is None else min(room, len(candidates)))
    if in_memory:
        oldest_kept = min(math.ceil(scores[task_id]) for task_id in in_memory)
        assert all(math.ceil(scores[task_id]) <= oldest_kept for task_id in set(candidates) - set(in_memory))
    stamps = [stamp for stamp, _ in part.memory]
    assert stamps == sorted(stamps)
    for stamp, page in part.memory:
        assert all(0 <= stamp - scores[task_id] < 1 for task_id in page)


@PURE
@given(scores=st.lists(st.floats(-1e12, 1e12), min_size=1, max_size=50), now=st.floats(0, 2e9))
def test_stamps_are_never_older_than_the_ids_and_finer_the_younger_they_are(scores: list[float], now: float) -> None:
    """To the second within 2 000 s of the build, then within 0.1% of their age; never below the
    stamp of an older id (rows come oldest first); a million ids over 30 days make ~10 000 groups."""
    scores.sort()
    writer = snapshot.SnapshotWriter("k", now=now)
    writer.add([(f"id-{i}".encode(), score) for i, score in enumerate(scores)])
    _, body = _read(writer.value(max_score=scores[-1], built_at=now))
    stamps = [stamp for stamp, count in zip(body.stamps, body.other_counts, strict=True) for _ in range(count)]
    assert len(stamps) == len(scores)
    for score, stamp in zip(scores, stamps, strict=True):
        assert stamp >= score
        assert stamp - score <= max(1.0, (now - score) / 1000) or stamp == max(
            snapshot.stamp_of(older, now) for older in scores if older <= score)


def test_a_month_of_ids_makes_few_groups() -> None:
    now = 1.8e9
    writer = snapshot.SnapshotWriter("k", now=now)
    writer.add([(str(uuid.uuid4()).encode(), now - 30 * 86400 + i * 26.0) for i in range(100_000)])
    _, body = _read(writer.value(max_score=now, built_at=now))
    assert len(body) == 100_000 and len(body.stamps) < 12_000


def test_bad_members_are_left_out_counted_and_their_reports_kept() -> None:
    good = [(task_id.encode(), 1e9 + i) for i, task_id in enumerate(ids(5) + ids(5, "t"))]
    bad = [(b"\xff\xfe", 1e9 + 3.5), (b"neg-inf", -math.inf)]
    head, body = _read(_write(good + bad))
    assert (head.count, head.bad, len(body)) == (12, 2, 10)
    assert any("not UTF-8 text" in report for report in body.bad_reports)
    assert any("non-finite score" in report for report in body.bad_reports)


def test_corrupt_values_are_named_never_trusted() -> None:
    value = _write([(task_id.encode(), 1e9 + i) for i, task_id in enumerate(ids(50) + ids(3, "x"))])
    assert snapshot.decode_head("k", b"") is None  # a missing key
    for raw in (b"garbage", b"CRSS" + b"\x00" * 10, b"XXXX" + value[4:], value[:4] + b"\x09" + value[5:]):
        with pytest.raises(CorruptValueError, match="'k'"):
            snapshot.decode_head("k", raw)
    head = snapshot.decode_head("k", value)
    assert head is not None
    body = value[snapshot.HEAD_SIZE:]
    flipped = body[:40] + bytes([body[40] ^ 1]) + body[41:]
    for broken, why in ((body[:-1], "bytes"), (flipped, "digest")):
        with pytest.raises(CorruptValueError, match=why):
            snapshot.decode_body("k", head, broken)
    marker = snapshot.decode_head("k", snapshot.marker_value())
    assert marker is not None and marker.kind == snapshot.MARKER
    assert snapshot.marker_value()[:snapshot.PREFIX_SIZE] != snapshot.marker_value()[:snapshot.PREFIX_SIZE]


def test_the_snapshot_keys_sit_beside_the_fleet_set_and_belong_to_no_worker() -> None:
    schema = KeySchema("p:")
    assert schema.shared_snapshot_key == snapshot.snapshot_key(schema.shared_revoked_key) == \
        "p:shared:fleet-revoked:snapshot"
    assert schema.shared_snapshot_lock_key == "p:shared:fleet-revoked:snapshot-lock"
    for key in (schema.shared_snapshot_key, schema.shared_snapshot_lock_key):
        assert schema.parse(key) is None  # no worker's, and no SCAN of the admin lists it as a set


def test_the_build_cursor_gives_each_member_once_when_ties_shift() -> None:
    """A row added meanwhile at the score a page ended at shifts the offset: the row read again is
    not given twice (and the one skipped shows in the final count, checked by the builder)."""
    cursor = snapshot.BuildCursor("k", max_score=10.0, chunk_size=3, trip_bytes=None)
    rows = [(b"a", 1.0), (b"b", 1.0), (b"c", 1.0)]
    assert cursor.next_operation() is not None
    assert cursor.feed(rows) == [rows]
    assert (cursor.low, cursor.skip) == (1.0, 3)
    assert cursor.next_operation() is not None
    # "0" was added at score 1.0, sorting first: the offset of 3 now lands on "c" again
    assert cursor.feed([(b"c", 1.0), (b"d", 2.0), (b"e", 3.0)]) == [[(b"d", 2.0), (b"e", 3.0)]]


# -- the read-ahead bound ------------------------------------------------------------


class Recording:
    """Wraps a client: the reply bytes (members, values) and rows of every round trip."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.trips: list[tuple[int, int]] = []  # (bytes, rows)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self.client.pipeline(*args, **kwargs)
        execute, trips = pipe.execute, self.trips

        def recorded(*a: Any, **k: Any) -> Any:
            replies = execute(*a, **k)
            rows = sum(len(reply) for reply in replies if isinstance(reply, list))
            trips.append((_payload(replies), rows))
            return replies

        pipe.execute = recorded
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def _payload(reply: Any) -> int:
    """Bytes of the members and values in a reply (scores and counts aside)."""
    if isinstance(reply, bytes):
        return len(reply)
    if isinstance(reply, (list, tuple)):
        return sum(_payload(part) for part in reply)
    return 0


def test_the_budget_follows_the_size_of_the_rows_read() -> None:
    budget = cursors.TripBudget(1000)
    assert budget.rows() == cursors.FIRST_TRIP_ROWS
    budget.saw(10, 420)  # 42 bytes a row, and the framing
    assert budget.rows() == 1000 * 10 // (420 + 10 * cursors.ROW_OVERHEAD)
    assert cursors.TripBudget(None).rows() is None
    with pytest.raises(InvalidInputError):
        cursors.TripBudget(0)


@pytest.mark.parametrize("policy", [None, EAGER], ids=["whole-set", "snapshot"])
def test_no_round_trip_of_a_boot_asks_for_more_than_the_budget(
    make: Factory, redis_client: redis.Redis, key_prefix: str, policy: SnapshotPolicy | None
) -> None:
    """Every read of a boot (windows of the newest ids, ranks for the index, the snapshot, its build)
    stays within the trip budget: 64 KiB here, with 60 000 stored ids (2.6 MB as replies)."""
    now, budget = time.time(), 64 * 1024
    recent, old = ids(30_000), ids(30_000)
    seed(redis_client, shared_key(key_prefix), recent, now - 5, step=0.1)  # within the hour: into memory
    seed(redis_client, shared_key(key_prefix), old, now - 7200, step=0.1)  # beyond the memory window: index
    for _ in range(2 if policy else 1):  # the first boot builds the snapshot, the second reads it
        persistence = make(policy=policy, revoked=LimitedSet(maxlen=50000, expires=3600))
        recording = Recording(persistence.repository.client)
        persistence.repository.client = recording  # type: ignore[assignment]
        persistence.repository.operations = dataclasses.replace(persistence.repository.operations,
                                                                trip_bytes=budget)
        persistence.boot()
        assert (persistence.merged.in_memory, persistence.merged.in_index) == (30_000, 30_000)
        assert max(size for size, _ in recording.trips) <= budget
        assert sum(size for size, _ in recording.trips) >= 16 * 60_000
    assert persistence.merged.fleet_source == ("snapshot" if policy else "")
    if policy:  # a snapshot boot reads about 16 bytes an id; the set's ids are 36 bytes long
        assert sum(size for size, _ in recording.trips) < 20 * 60_000


def _model_windows(rows: dict[bytes, float]) -> Callable[[str, str, int, int], list[Any]]:
    ordered = sorted(rows.items(), key=lambda row: (row[1], row[0]))
    scores = [score for _, score in ordered]

    def page(high: str, low: str, start: int, num: int) -> list[Any]:
        top = math.inf if high == "+inf" else float(high)
        strict = low.startswith("(")
        bottom = float(low[1:] if strict else low)
        lo = (bisect.bisect_right if strict else bisect.bisect_left)(scores, bottom)
        hi = bisect.bisect_right(scores, top)
        found = list(reversed(ordered[lo:hi]))  # newest first (ties: reverse lexical, as ZREVRANGE)
        rows_ = found[start: start + num]
        return rows_ if high == "+inf" else [member for member, _ in rows_]

    return page


def test_the_window_cursor_asks_for_no_more_ids_a_trip_than_its_budget() -> None:
    rows = {f"{i:08d}".encode(): 10_000.0 - i / 0.7 for i in range(6000)}  # 70 ids a window
    model = _model_windows(rows)
    cursor = cursors.WindowCursor("k", now=10_000.0, newer_than=0.0, width=100.0, limit=None, chunk_size=10_000,
                                  trip_bytes=2048)
    asked: list[int] = []
    read: list[str] = []

    class Pipe:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, int, int]] = []

        def zrevrangebyscore(self, key: str, high: str, low: str, *, start: int, num: int, withscores: bool) -> None:
            self.calls.append((high, low, start, num))

    while (operation := cursor.next_operation()) is not None:
        pipe = Pipe()
        operation.stage(pipe)  # type: ignore[arg-type]
        asked.append(sum(num for *_, num in pipe.calls))
        for _, page_ids in cursor.feed(operation.result([model(*call) for call in pipe.calls])):
            read.extend(page_ids)
        assert len(asked) < 500
    assert read == [m.decode() for m, _ in sorted(rows.items(), key=lambda row: -row[1])]
    assert asked[0] <= cursors.FIRST_TRIP_ROWS
    assert max(asked[1:]) <= 2048 // (8 + cursors.ROW_OVERHEAD)  # 8-byte ids: 128 a trip
    assert len(asked) < 6000 // 128 * 2  # and yet no more trips than about twice the fewest


# -- boots from the snapshot ---------------------------------------------------------


def test_a_boot_builds_the_snapshot_and_later_boots_read_it_with_the_same_result(
    make: Factory, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Celery's set gets the same newest ids (within its size cap and expiry) and the index the
    same others (within the horizon) as with the whole set read; stamps differ by a window at most."""
    now = time.time()
    recent, old, ancient = ids(300) + ids(50, "custom"), ids(200) + ids(9, "custom-old"), ids(40, "ancient")
    seed(redis_client, shared_key(key_prefix), recent, now - 1, step=5)
    seed(redis_client, shared_key(key_prefix), old, now - 3 * 86400, step=5)
    seed(redis_client, shared_key(key_prefix), ancient, now - 90 * 86400, step=5)

    def boot(policy: SnapshotPolicy | None) -> WorkerStatePersistence:
        return booted(make, policy=policy, horizon=30 * 86400.0, revoked=LimitedSet(maxlen=200, expires=7200))

    plain, first, second = boot(None), boot(EAGER), boot(EAGER)
    assert [p.merged.fleet_source for p in (plain, first, second)] == ["", "built", "snapshot"]
    assert redis_client.type(snap(key_prefix)) == b"string"
    assert redis_client.exists(snapshot.lock_key(shared_key(key_prefix))) == 0  # released
    assert len(plain.revoked._data) == 200
    for persistence in (first, second):
        assert set(persistence.revoked._data) == set(plain.revoked._data)
        assert persistence.merged.fleet_ids == plain.merged.fleet_ids
        assert (persistence.merged.in_memory, persistence.merged.in_index) == (200, 359)
        assert not binds(persistence, recent + old)
        assert binds(persistence, ancient) == ancient  # beyond the horizon
        for task_id, entry in persistence.revoked._data.items():  # window stamps vs one-second ones
            assert abs(entry[0] - plain.revoked._data[task_id][0]) <= 72 + 1


def test_ids_revoked_after_the_snapshot_are_read_from_the_set(make: Factory, redis_client: redis.Redis,
                                                              key_prefix: str) -> None:
    now = time.time()
    seed(redis_client, shared_key(key_prefix), ids(500), now - 100)
    booted(make, "a@h")
    newer = ids(30)
    seed(redis_client, shared_key(key_prefix), newer, time.time() + 1, step=0.01)
    later = booted(make, "b@h")
    assert later.merged.fleet_source == "snapshot"
    assert not binds(later, newer)
    assert set(newer) <= set(later.revoked._data)


# -- soundness: late writes, lowered scores, removals -------------------------------


def test_a_late_write_with_an_old_score_is_never_missed(make: Factory, redis_client: redis.Redis,
                                                        key_prefix: str) -> None:
    """Ids flushed after an outage keep their revocation time, below the snapshot's max score: the
    count no longer matches, the snapshot is not used (rebuilt), and they bind."""
    now = time.time()
    seed(redis_client, shared_key(key_prefix), ids(500), now - 100)
    assert booted(make, "a@h").merged.fleet_source == "built"
    late = ids(3)
    repository = SyncStateRepository.open(StateDBConfig(url=make().config.url, key_prefix=key_prefix), "p@h")
    try:
        repository.add_fleet_revoked_at([(task_id, now - 5000) for task_id in late])
    finally:
        repository.close()
    after = booted(make, "b@h")
    assert after.merged.fleet_source == "built"
    assert not binds(after, late)


def test_a_lowered_score_keeps_the_snapshot_and_the_id(make: Factory, redis_client: redis.Redis,
                                                       key_prefix: str) -> None:
    now, stored = snapshot_built(make, redis_client, key_prefix)
    redis_client.zadd(shared_key(key_prefix), {stored[0]: now - 9000, stored[-1]: 1.0}, lt=True)  # ZADD LT
    after = booted(make, "b@h")
    assert after.merged.fleet_source == "snapshot"
    assert not binds(after, stored)
    newer = ids(1)  # an id of the delta lowered below the max score: read again, in full
    seed(redis_client, shared_key(key_prefix), newer, time.time() + 5)
    assert booted(make, "c@h").merged.fleet_source == "snapshot"
    redis_client.zadd(shared_key(key_prefix), {newer[0]: now - 50000}, lt=True)
    last = booted(make, "d@h")
    assert last.merged.fleet_source == "built" and not binds(last, newer + stored)


def test_a_restore_after_the_snapshot_is_honoured_and_a_late_write_still_binds(
    make: Factory, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    """The worst case for a count: one id restored and one written late with an old score. The
    restore marks the snapshot stale, so neither is taken from it."""
    now, stored = snapshot_built(make, redis_client, key_prefix)
    restored, late = stored[7], ids(1)
    assert anyio.run(lambda: admin.restore(redis_url, [restored], key_prefix=key_prefix)) == 1
    redis_client.zadd(shared_key(key_prefix), {late[0]: now - 4000}, lt=True)
    assert redis_client.zcard(shared_key(key_prefix)) == 500
    after = booted(make, "b@h")
    assert after.merged.fleet_source == "built"
    assert restored not in after.revoked and not binds(after, late)
    assert not binds(after, [t for t in stored if t != restored])


def test_a_removal_by_hand_alone_is_seen_by_the_count(make: Factory, redis_client: redis.Redis,
                                                      key_prefix: str) -> None:
    _now, stored = snapshot_built(make, redis_client, key_prefix)
    redis_client.zrem(shared_key(key_prefix), stored[3])  # no marker: ZCOUNT is one short
    after = booted(make, "b@h")
    assert after.merged.fleet_source == "built"
    assert stored[3] not in after.revoked


def test_a_set_deleted_and_refilled_by_hand_is_not_taken_for_its_snapshot(
    make: Factory, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A DEL leaves no marker, and refilled with as many ids the count matches: the sampled ids of the
    snapshot are gone, so it is rebuilt."""
    now = time.time()
    seed(redis_client, shared_key(key_prefix), ids(300), now - 100)
    booted(make, "a@h")
    redis_client.delete(shared_key(key_prefix))
    refill = ids(300)
    seed(redis_client, shared_key(key_prefix), refill, now - 100)
    after = booted(make, "b@h")
    assert after.merged.fleet_source == "built" and not binds(after, refill)
    assert booted(make, "c@h").merged.fleet_source == "snapshot"


def test_a_purge_after_the_snapshot_is_honoured(make: Factory, redis_client: redis.Redis, redis_url: str,
                                                key_prefix: str) -> None:
    now = time.time()
    keep, purged = ids(300), ids(300)
    seed(redis_client, shared_key(key_prefix), keep, now - 100)
    seed(redis_client, shared_key(key_prefix), purged, now - 40 * 86400)
    booted(make, "a@h")
    removed = anyio.run(lambda: admin.purge_old_revoked(redis_url, older_than="30d", key_prefix=key_prefix))
    assert removed == 300
    head = snapshot.decode_head(snap(key_prefix), redis_client.get(snap(key_prefix)) or b"")
    assert head is not None and head.kind == snapshot.MARKER
    after = booted(make, "b@h")
    assert after.merged.fleet_source == "built"
    assert binds(after, purged) == purged and not binds(after, keep)


def test_a_restore_that_lands_while_a_boot_checks_the_snapshot_is_seen(
    make: Factory, redis_client: redis.Redis, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore between the boot's read of the header and its check: the prefix read after the count
    is the restore's marker, so the snapshot read before it is not used."""
    _now, stored = snapshot_built(make, redis_client, key_prefix)
    real = fleet_snapshot._Boot._check

    def restoring_meanwhile(self: Any, *args: Any) -> Any:
        anyio.run(lambda: admin.restore(redis_url, [stored[0]], key_prefix=key_prefix))
        monkeypatch.setattr(fleet_snapshot._Boot, "_check", real)
        return real(self, *args)

    monkeypatch.setattr(fleet_snapshot._Boot, "_check", restoring_meanwhile)
    after = booted(make, "b@h")
    assert after.merged.fleet_source == "built"
    assert stored[0] not in after.revoked and not binds(after, stored[1:])


# -- storms: one build, the others wait for it ---------------------------------------


def test_concurrent_boots_build_once_and_miss_nothing_written_meanwhile(
    make: Factory, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    now = time.time()
    stored = ids(4000) + ids(500, "custom")
    random.shuffle(stored)
    seed(redis_client, shared_key(key_prefix), stored, now - 10, step=0.5)
    workers = [make(f"w{i}@h") for i in range(10)]
    start, stop = threading.Barrier(len(workers) + 1), threading.Event()
    late: list[str] = []

    def write_late() -> None:  # old scores, below the max score: a build racing them must not take them as read
        start.wait()
        writer = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            task_id = str(uuid.uuid4())
            writer.zadd(shared_key(key_prefix), {task_id: now - random.uniform(0, 2000)}, lt=True)
            late.append(task_id)
            time.sleep(0.002)
        writer.close()

    def boot(persistence: WorkerStatePersistence) -> None:
        start.wait()
        before = list(late)  # stored before this boot began
        persistence.boot()
        persistence.before = before  # type: ignore[attr-defined]

    threads = [threading.Thread(target=boot, args=(p,)) for p in workers] + [threading.Thread(target=write_late)]
    for thread in threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join(60)
    stop.set()
    threads[-1].join(10)
    assert all(p.loaded for p in workers)
    for persistence in workers:
        assert not binds(persistence, stored + persistence.before)  # type: ignore[attr-defined]
    final = booted(make, "after@h")
    assert final.merged.fleet_source in ("snapshot", "built") and not binds(final, stored + late)


def test_a_storm_of_boots_builds_one_snapshot_and_boots_from_it(make: Factory, redis_client: redis.Redis,
                                                                 key_prefix: str) -> None:
    stored = ids(6000)
    seed(redis_client, shared_key(key_prefix), stored, time.time() - 10, step=0.5)
    workers = [make(f"w{i}@h") for i in range(12)]
    start = threading.Barrier(len(workers))

    def boot(persistence: WorkerStatePersistence) -> None:
        start.wait()
        persistence.boot()

    threads = [threading.Thread(target=boot, args=(p,)) for p in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sources = [p.merged.fleet_source for p in workers]
    # one build (another only by a worker that read "none" before it and locked after it)
    assert 1 <= sources.count("built") <= 2 and sources.count("set") == 0, sources
    assert all(not binds(p, stored) for p in workers)


def test_a_worker_waits_for_a_build_under_way_then_reads_its_snapshot(
    make: Factory, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    now = time.time()
    stored = ids(600)
    seed(redis_client, shared_key(key_prefix), stored, now - 10)
    redis_client.set(snapshot.lock_key(shared_key(key_prefix)), b"someone", px=60_000)

    def build_elsewhere() -> None:  # the holder of the lock writes its snapshot, then lets the lock go
        time.sleep(0.4)
        repository = SyncStateRepository.open(StateDBConfig(url=redis_url, key_prefix=key_prefix), "b@h")
        try:
            assert fleet_snapshot._Boot(repository, EAGER, None, time.time())._build(b"") is not None
        finally:
            repository.close()
        redis_client.delete(snapshot.lock_key(shared_key(key_prefix)))

    thread = threading.Thread(target=build_elsewhere)
    thread.start()
    waiter = booted(make, "waiter@h", policy=SnapshotPolicy(min_ids=1, wait_base=20.0))
    thread.join(30)
    assert waiter.merged.fleet_source == "snapshot" and not binds(waiter, stored)


def test_a_worker_stops_waiting_when_the_build_gives_up(make: Factory, redis_client: redis.Redis,
                                                        key_prefix: str) -> None:
    stored = ids(600)
    seed(redis_client, shared_key(key_prefix), stored, time.time() - 10)
    lock = snapshot.lock_key(shared_key(key_prefix))
    redis_client.set(lock, b"someone", px=300)  # a builder that dies: its lock expires
    started = time.monotonic()
    waiter = booted(make, "waiter@h", policy=SnapshotPolicy(min_ids=1, wait_base=20.0))
    assert time.monotonic() - started < 10
    assert waiter.merged.fleet_source == "set" and not binds(waiter, stored)


def test_an_outgrown_snapshot_is_rebuilt(make: Factory, redis_client: redis.Redis, key_prefix: str) -> None:
    now = time.time()
    seed(redis_client, shared_key(key_prefix), ids(400), now - 500)
    policy = SnapshotPolicy(min_ids=1, min_stale=10, stale_share=0.1)
    assert booted(make, "a@h", policy=policy).merged.fleet_source == "built"
    seed(redis_client, shared_key(key_prefix), ids(20), time.time() + 1, step=0.01)
    assert booted(make, "b@h", policy=policy).merged.fleet_source == "snapshot"  # 20 newer: fine
    newer = ids(60)
    seed(redis_client, shared_key(key_prefix), newer, time.time() + 2, step=0.01)
    redis_client.set(snapshot.lock_key(shared_key(key_prefix)), b"busy", px=60_000)
    busy = booted(make, "c@h", policy=policy)  # another worker rebuilds: this one boots from the old one
    assert busy.merged.fleet_source == "snapshot" and not binds(busy, newer)
    redis_client.delete(snapshot.lock_key(shared_key(key_prefix)))
    rebuilt = booted(make, "d@h", policy=policy)
    assert rebuilt.merged.fleet_source == "built" and not binds(rebuilt, newer)


def test_a_small_fleet_set_is_read_as_it_is(make: Factory, redis_client: redis.Redis, key_prefix: str) -> None:
    seed(redis_client, shared_key(key_prefix), ids(50), time.time() - 5)
    persistence = make(policy=SnapshotPolicy())
    persistence.repository.ping()  # connected: the handshake is not a trip of the merge
    with round_trips() as sent:
        merged = merge_stored(persistence.repository, persistence.revoked, persistence.stored.index, horizon=None,
                              snapshot=SnapshotPolicy())
    assert merged.fleet_source == "set" and not redis_client.exists(snap(key_prefix))
    # The first trip (own set's counts, the snapshot's head and the fleet set's size), the windows of the
    # fleet set's newest ids (4 for 50 ids), then its counts: its size is not asked again before the windows.
    assert len(sent) == 6, [trip.split(b"\r\n")[2] for trip in sent]


# -- bad values never stop a boot ----------------------------------------------------


@pytest.mark.parametrize("value", ["garbage", "truncated", "flipped", "flipped-sample", "future-version"])
def test_a_corrupt_snapshot_is_reported_ignored_and_rebuilt(
    make: Factory, redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    stored = ids(500)
    seed(redis_client, shared_key(key_prefix), stored, time.time() - 10)
    booted(make, "a@h")
    good = redis_client.get(snap(key_prefix))
    assert good is not None
    planted = {"garbage": b"not a snapshot at all", "truncated": good[:-100],
               "flipped": good[:-200] + bytes([good[-200] ^ 0xFF]) + good[-199:],
               "flipped-sample": good[:80] + bytes([good[80] ^ 0xFF]) + good[81:],
               "future-version": good[:4] + b"\x07" + good[5:]}[value]
    redis_client.set(snap(key_prefix), planted)
    with caplog.at_level(logging.ERROR, logger="celery_redis_statedb"):
        after = booted(make, "b@h")
    assert after.merged.fleet_source == "built" and not binds(after, stored)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and repr(snap(key_prefix)) in errors[0] and "rebuilt" in errors[0], errors
    assert redis_client.get(snap(key_prefix)) != planted


def test_a_snapshot_key_of_another_type_is_reported_and_left_alone(
    make: Factory, redis_client: redis.Redis, key_prefix: str
) -> None:
    stored = ids(500)
    seed(redis_client, shared_key(key_prefix), stored, time.time() - 10)
    redis_client.rpush(snap(key_prefix), "a", "b")
    after = booted(make)
    assert after.merged.fleet_source == "set" and not binds(after, stored)
    assert list(after.bad.unreadable) == [snap(key_prefix)]
    assert redis_client.lrange(snap(key_prefix), 0, -1) == [b"a", b"b"]


def test_bad_members_left_out_of_a_snapshot_are_reported_by_every_boot(
    make: Factory, redis_client: redis.Redis, key_prefix: str
) -> None:
    stored = ids(500)
    seed(redis_client, shared_key(key_prefix), stored, time.time() - 10)
    redis_client.zadd(shared_key(key_prefix), {b"\xff\xfe": time.time() - 20})
    first, second = booted(make, "a@h"), booted(make, "b@h")
    assert second.merged.fleet_source == "snapshot"
    for persistence in (first, second):
        assert persistence.bad.count == 1
        assert "not UTF-8 text" in str(persistence.bad.errors[0])


def test_a_worker_without_the_snapshot_in_its_acl_boots_reading_the_set(
    make: Factory, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with PrivateServer() as server:
        admin_client = server.client()
        keys = [f"~{key_prefix}*:revoked", f"~{key_prefix}*:stamps", f"~{shared_key(key_prefix)}",
                f"~{key_prefix}shared:fleet-stamps"]
        admin_client.execute_command(
            "ACL", "SETUSER", "old", "on", ">pw", "resetkeys", *keys, "-@all", "+ping", "+hello", "+zadd",
            "+zrevrangebyscore", "+zrevrange", "+zcard", "+zcount", "+zmscore", "+time", "+info",
            f"(~{key_prefix}*:clock +get +set +eval)")
        stored = ids(300)
        seed(admin_client, shared_key(key_prefix), stored, time.time() - 10)
        with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
            persistence = booted(make, url=f"redis://old:pw@127.0.0.1:{server.port}/0")
        assert persistence.merged.fleet_source == "set" and not binds(persistence, stored)
        assert any("snapshot" in r.getMessage() and "ACL" in r.getMessage() for r in caplog.records)
        persistence.save()
        admin_client.close()


def test_a_worker_with_the_documented_acl_builds_and_reads_the_snapshot(make: Factory, key_prefix: str) -> None:
    from tests.test_security import ACL_PASSWORD, acl_log, worker_acl_rule

    with PrivateServer() as server:
        admin_client = server.client()
        admin_client.execute_command("ACL", "SETUSER", "statedb", *worker_acl_rule(key_prefix, admin_client))
        admin_client.execute_command("ACL", "LOG", "RESET")
        stored = ids(300)
        seed(admin_client, shared_key(key_prefix), stored, time.time() - 10)
        url = f"redis://statedb:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
        sources = []
        for name in ("a@h", "b@h"):
            persistence = booted(make, name, url=url)
            sources.append(persistence.merged.fleet_source)
            assert not binds(persistence, stored)
            persistence.save()
        admin_client.delete(shared_key(key_prefix))  # by hand: the next boot marks the snapshot stale (SET)
        seed(admin_client, shared_key(key_prefix), ids(300), time.time() - 10)
        booted(make, "c@h", url=url).save()
        assert sources == ["built", "snapshot"]
        assert acl_log(admin_client) == [], "a boot sent a command the documented rule does not allow"
        admin_client.close()


# -- found by review: races and keys of another type ------------------------------------------


@pytest.mark.parametrize("policy", ["snapshot", "whole set"])
def test_ids_read_by_rank_are_not_missed_when_revokes_arrive_during_the_boot(
    policy: str, make: Factory, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids added at the top while the boot reads the index's ranks push the last ranks further down:
    they are read too (the oldest ids newer than the snapshot, or the oldest of the set)."""
    now = time.time()
    old = ids(500)
    seed(redis_client, shared_key(key_prefix), old, now - 8 * 3600)  # older than the in-memory expiry
    if policy == "snapshot":
        assert booted(make, "a@h").merged.fleet_source == "built"
    delta = ids(20)
    seed(redis_client, shared_key(key_prefix), delta, now - 5 * 3600, step=1.0)  # newer than it, older than 3 h
    real = cursors.RankCursor.next_operation
    racing = ids(3)

    def revoked_elsewhere_first(self: Any) -> Any:
        while racing:  # revokes stored by other workers while this one boots
            redis_client.zadd(shared_key(key_prefix), {racing.pop(): time.time()})
        return real(self)

    monkeypatch.setattr(cursors.RankCursor, "next_operation", revoked_elsewhere_first)
    later = booted(make, "b@h", **({} if policy == "snapshot" else {"policy": None}))
    assert later.merged.fleet_source == ("snapshot" if policy == "snapshot" else "")
    assert binds(later, delta + old) == []


def test_a_lock_key_of_another_type_does_not_hide_the_fleet_set(make: Factory, redis_client: redis.Redis,
                                                               key_prefix: str) -> None:
    stored = ids(300)
    seed(redis_client, shared_key(key_prefix), stored, time.time() - 100)
    lock = snapshot.lock_key(shared_key(key_prefix))
    redis_client.hset(lock, "x", "y")
    worker = booted(make, "w@h")
    assert binds(worker, stored) == []
    assert lock in worker.bad.unreadable  # reported, left as it is
