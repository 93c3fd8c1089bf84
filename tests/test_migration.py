"""Migration of Celery's file statedb and of the 0.2.0 Redis blob, against a real server."""

from __future__ import annotations

import dataclasses
import dbm
import hashlib
import importlib
import logging
import pickle
import shelve
import sqlite3
import sys
import time
import types
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import migration
from celery_redis_statedb.migration import (
    MigrationReport,
    MigrationSourceError,
    legacy_blob_key,
    migrate_file_statedb,
    migrate_legacy_blob,
    restricted_loads,
    task_ids_of,
)
from statedb import ConfigurationError, CorruptValueError, Scope, StateDBConfig, StateDBError, WrongKeyTypeError
from statedb._sync.repository import SyncStateRepository
from tests.file_statedb import write_celery_statedb
from tests.pickles import Evil, evil_pickle

WORKER = "w@host"
FLAVOURS = ["dbm.dumb", "dbm.gnu", "dbm.ndbm", "dbm.sqlite3"]
IDS = [f"task-{i}" for i in range(7)]
Opener = Callable[..., SyncStateRepository]


@pytest.fixture
def open_repo(redis_url: str, key_prefix: str) -> Iterator[Opener]:
    opened: list[SyncStateRepository] = []

    def opener(scope: Scope = Scope.WORKER) -> SyncStateRepository:
        repository = SyncStateRepository.open(StateDBConfig(url=redis_url, key_prefix=key_prefix, scope=scope),
                                              WORKER)
        opened.append(repository)
        return repository

    yield opener
    for repository in opened:
        repository.close()


@pytest.fixture(params=FLAVOURS)
def dbm_module(request: pytest.FixtureRequest) -> types.ModuleType:
    try:
        return importlib.import_module(request.param)
    except ImportError:
        pytest.skip(f"this Python has no {request.param}")


def limited_set(ids: list[Any]) -> LimitedSet:
    revoked = LimitedSet(maxlen=50000, expires=10800)
    for task_id in ids:
        revoked.add(task_id)
    return revoked


def write_shelf(module: types.ModuleType, path: Path, items: Mapping[str, Any]) -> None:
    """Pickled values, as shelve writes them, through one dbm flavour's own open."""
    shelf: shelve.Shelf[Any] = shelve.Shelf(module.open(str(path), "c"), protocol=4)
    try:
        shelf.update(items)
    finally:
        shelf.close()


def write_raw(module: types.ModuleType, path: Path, items: Mapping[str, bytes]) -> None:
    db = module.open(str(path), "c")
    try:
        for key, value in items.items():
            db[key.encode()] = value
    finally:
        db.close()


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def stored(client: redis.Redis, key: str) -> dict[str, float]:
    rows: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {member.decode(): score for member, score in rows}


def layout_items(layout: str, ids: list[Any], clock: int) -> dict[str, Any]:
    if layout == "v1-dict":
        return {"revoked": dict.fromkeys(ids, 1234.5), "clock": clock}
    if layout == "v2-limitedset":
        return {"revoked": limited_set(ids), "clock": clock}
    return {"zrevoked": zlib.compress(pickle.dumps(limited_set(ids), protocol=4)), "clock": clock, "__proto__": 3}


def test_evil_payload_really_runs_code_when_unpickled_plainly(tmp_path: Path) -> None:
    marker = tmp_path / "proof"
    pickle.loads(evil_pickle(marker))
    assert marker.exists()  # so the tests below, where it never appears, mean something


# -- files written by Celery ---------------------------------------------------------------------


def test_file_written_by_celery_persistent_is_migrated(tmp_path: Path, open_repo: Opener,
                                                      redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    clock = write_celery_statedb(path, IDS, 41)
    assert clock > 41
    before = snapshot(tmp_path)
    repository = open_repo()

    report = migrate_file_statedb(path, repository)

    assert report.layout == "v3-zrevoked"
    assert report.dbm_flavour == dbm.whichdb(str(path))
    assert (report.ids_found, report.ids_added, report.ids_skipped) == (7, 7, 0)
    assert (report.clock_found, report.clock_before, report.clock_after) == (clock, 0, clock)
    assert sorted(stored(redis_client, repository.keys.revoked)) == sorted(IDS)
    assert repository.read_clock() == clock
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("layout", ["v1-dict", "v2-limitedset", "v3-zrevoked"])
def test_every_layout_in_every_dbm_flavour(layout: str, dbm_module: types.ModuleType, tmp_path: Path,
                                           open_repo: Opener, redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm_module, path, layout_items(layout, IDS, 99))
    before = snapshot(tmp_path)
    repository = open_repo()

    report = migrate_file_statedb(str(path), repository)

    assert (report.layout, report.dbm_flavour) == (layout, dbm_module.__name__)
    assert (report.ids_found, report.ids_added, report.clock_found, report.clock_after) == (7, 7, 99, 99)
    assert report.source == str(path) and report.revoked_key == repository.keys.revoked
    assert sorted(stored(redis_client, repository.keys.revoked)) == sorted(IDS)
    assert snapshot(tmp_path) == before  # same names, same bytes: read-only


def test_ids_are_stamped_with_the_migration_time(tmp_path: Path, open_repo: Opener,
                                                 redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v1-dict", IDS, 1))
    repository = open_repo()
    started = time.time()
    migrate_file_statedb(path, repository)
    scores = stored(redis_client, repository.keys.revoked).values()
    assert all(started <= score <= time.time() for score in scores)  # not the file's stamp 1234.5


def test_a_file_with_only_a_clock_is_empty(tmp_path: Path, open_repo: Opener) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, {"clock": 12})
    report = migrate_file_statedb(path, open_repo())
    assert (report.layout, report.ids_found, report.clock_after) == ("empty", 0, 12)


def test_path_may_name_the_file_the_flavour_created(tmp_path: Path, open_repo: Opener) -> None:
    import dbm.dumb

    write_shelf(dbm.dumb, tmp_path / "worker.db", layout_items("v1-dict", IDS, 3))
    for name in ("worker.db", "worker.db.dat", "worker.db.dir"):
        report = migrate_file_statedb(tmp_path / name, open_repo())
        assert (report.dbm_flavour, report.ids_found) == ("dbm.dumb", 7)


def test_ndbm_path_with_its_db_suffix(tmp_path: Path, open_repo: Opener) -> None:
    ndbm = pytest.importorskip("dbm.ndbm")
    write_shelf(ndbm, tmp_path / "worker.db", layout_items("v2-limitedset", IDS, 3))
    created = sorted(p.name for p in tmp_path.iterdir())
    for name in ["worker.db", *created]:
        report = migrate_file_statedb(tmp_path / name, open_repo())
        assert (report.dbm_flavour, report.ids_found) == ("dbm.ndbm", 7)


# -- bad input ------------------------------------------------------------------------------------


def fake_gnu(path: Path) -> None:
    path.write_bytes((0x13579ACE).to_bytes(4, sys.byteorder) + bytes(60))


def fake_ndbm(path: Path) -> None:
    (path.parent / (path.name + ".pag")).write_bytes(bytes(16))
    (path.parent / (path.name + ".dir")).write_bytes(bytes(16))


def sqlite_shelf(path: Path, items: Mapping[str, Any] | None = None) -> sqlite3.Connection:
    """What Python 3.13's dbm.sqlite3 writes (same table, WAL mode), on any Python; left open."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = wal")
    connection.execute("CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
    for key, value in (items or {}).items():
        connection.execute("REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))",
                           (key.encode(), pickle.dumps(value, protocol=4)))
    return connection


def real_sqlite(path: Path) -> None:
    sqlite_shelf(path).close()


@pytest.mark.parametrize(("flavour", "module", "make", "hint"), [
    ("dbm.gnu", "dbm.gnu", fake_gnu, "python3-gdbm"),
    ("dbm.ndbm", "dbm.ndbm", fake_ndbm, "_dbm"),
    ("dbm.sqlite3", "sqlite3", real_sqlite, "_sqlite3"),
])
def test_missing_dbm_module_is_named(flavour: str, module: str, make: Callable[[Path], None], hint: str,
                                     tmp_path: Path, open_repo: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "worker.db"
    make(path)
    monkeypatch.setitem(sys.modules, module, None)  # importing it now fails, as in a Python built without it
    with pytest.raises(ConfigurationError) as info:
        migrate_file_statedb(path, open_repo())
    message = str(info.value)
    assert f"{path} is a {flavour} file but this Python has no {module} module" in message
    assert hint in message and "migrate with a Python that has it" in message


def test_dbm_sqlite3_file_is_read_without_leaving_files_behind(tmp_path: Path, open_repo: Opener) -> None:
    path = tmp_path / "worker.db"
    sqlite_shelf(path, layout_items("v3-zrevoked", IDS, 8)).close()
    before = snapshot(tmp_path)
    assert sorted(before) == ["worker.db"]
    report = migrate_file_statedb(path, open_repo())  # also before Python 3.13: read through sqlite3
    assert (report.layout, report.dbm_flavour, report.ids_added, report.clock_after) == (
        "v3-zrevoked", "dbm.sqlite3", 7, 8)
    assert snapshot(tmp_path) == before  # no -wal / -shm left, as dbm.sqlite3's own 'r' open would


def test_dbm_sqlite3_file_with_pending_wal_is_refused(tmp_path: Path, open_repo: Opener) -> None:
    path = tmp_path / "worker.db"
    running = sqlite_shelf(path)  # a worker still running with its statedb open
    running.execute("PRAGMA wal_autocheckpoint = 0")
    for key, value in layout_items("v1-dict", IDS, 8).items():
        running.execute("REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))",
                        (key.encode(), pickle.dumps(value)))
    repository = open_repo()
    with pytest.raises(ConfigurationError, match=r"worker\.db-wal"):
        migrate_file_statedb(path, repository)
    running.close()  # a clean stop writes the log back
    assert migrate_file_statedb(path, repository).ids_added == 7


def test_missing_path_and_non_dbm_file(tmp_path: Path, open_repo: Opener) -> None:
    with pytest.raises(ConfigurationError, match=r"statedb file .*nowhere\.db does not exist"):
        migrate_file_statedb(tmp_path / "nowhere.db", open_repo())
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n")
    for path in (text, tmp_path):
        with pytest.raises(ConfigurationError, match=str(path)):
            migrate_file_statedb(path, open_repo())


@pytest.mark.parametrize(("items", "expected"), [
    ({"zrevoked": b"not zlib at all"}, "key 'zrevoked' is corrupt"),
    ({"zrevoked": pickle.dumps(zlib.compress(b"not a pickle"))}, "key 'zrevoked' is corrupt"),
    ({"zrevoked": pickle.dumps(zlib.compress(b"\x80\x04K\x01."))}, "expected a LimitedSet"),
    ({"revoked": pickle.dumps("a string")}, "expected a LimitedSet"),
    ({"clock": pickle.dumps("soon")}, "key 'clock' does not hold a clock"),
    ({"clock": pickle.dumps(-1)}, "key 'clock' does not hold a clock"),
])
def test_corrupt_file_values_are_clear_errors(items: dict[str, bytes], expected: str, tmp_path: Path,
                                              open_repo: Opener, redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    write_raw(dbm, path, items)
    repository = open_repo()
    with pytest.raises(MigrationSourceError, match=expected) as info:
        migrate_file_statedb(path, repository)
    assert str(path) in str(info.value)
    assert not redis_client.exists(repository.keys.revoked, repository.keys.clock)


@pytest.mark.parametrize("where", ["revoked", "zrevoked", "nested", "clock"])
def test_malicious_pickle_in_the_file_runs_nothing(where: str, tmp_path: Path, open_repo: Opener,
                                                   redis_client: redis.Redis) -> None:
    marker = tmp_path / "pwned"
    payload = evil_pickle(marker)
    items = {
        "revoked": {"revoked": payload},
        "zrevoked": {"zrevoked": pickle.dumps(zlib.compress(payload))},
        "nested": {"zrevoked": pickle.dumps(zlib.compress(pickle.dumps(limited_set(["ok", Evil(marker)]))))},
        "clock": {"revoked": pickle.dumps({"ok": 1.0}), "clock": payload},
    }[where]
    path = tmp_path / "worker.db"
    write_raw(dbm, path, items)
    repository = open_repo()
    with pytest.raises(MigrationSourceError, match=r"refusing to unpickle builtins\.exec") as info:
        migrate_file_statedb(path, repository)
    assert str(path) in str(info.value) and "nothing was migrated" in str(info.value)
    assert not marker.exists()
    assert not redis_client.exists(repository.keys.revoked, repository.keys.clock)


def test_ids_redis_cannot_hold_are_skipped_and_counted(tmp_path: Path, open_repo: Opener,
                                                       redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, {"revoked": {"ok": 1.0, "": 1.0, "x" * 70_000: 1.0, 42: 1.0, b"raw": 1.0, "ok2": 1.0}})
    repository = open_repo()
    report = migrate_file_statedb(path, repository)
    assert (report.ids_found, report.ids_added, report.ids_skipped) == (6, 2, 4)
    assert sorted(stored(redis_client, repository.keys.revoked)) == ["ok", "ok2"]


# -- idempotency, dry run, scope, progress ----------------------------------------------------------


def test_second_run_changes_nothing(tmp_path: Path, open_repo: Opener, redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v3-zrevoked", IDS, 50))
    repository = open_repo()
    first = migrate_file_statedb(path, repository)
    scores = stored(redis_client, repository.keys.revoked)

    second = migrate_file_statedb(path, repository)

    assert (first.ids_added, second.ids_added) == (7, 0)
    assert stored(redis_client, repository.keys.revoked) == scores  # ZADD LT: the first time stays
    assert (second.clock_before, second.clock_after) == (50, 50)


def test_clock_never_moves_back(tmp_path: Path, open_repo: Opener) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v1-dict", IDS, 50))
    repository = open_repo()
    repository.advance_clock(1000)
    report = migrate_file_statedb(path, repository)
    assert (report.clock_found, report.clock_before, report.clock_after) == (50, 1000, 1000)
    assert repository.read_clock() == 1000


def test_dry_run_writes_nothing_and_counts_what_would_be_added(tmp_path: Path, open_repo: Opener,
                                                                redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v2-limitedset", IDS, 50))
    repository = open_repo()
    repository.add_revoked_at([(IDS[0], 10.0), (IDS[1], 10.0)])
    before = stored(redis_client, repository.keys.revoked)
    files = snapshot(tmp_path)

    report = migrate_file_statedb(path, repository, dry_run=True)

    assert report.dry_run and (report.ids_found, report.ids_added) == (7, 5)
    assert (report.clock_found, report.clock_before, report.clock_after) == (50, 0, 0)
    assert stored(redis_client, repository.keys.revoked) == before
    assert not redis_client.exists(repository.keys.clock)
    assert snapshot(tmp_path) == files
    assert "would add 5" in report.summary()
    assert migrate_file_statedb(path, repository).ids_added == 5  # what the dry run announced


def test_shared_scope_fills_the_fleet_set(tmp_path: Path, open_repo: Opener, redis_client: redis.Redis,
                                          key_prefix: str) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v1-dict", IDS, 5))
    repository = open_repo(Scope.SHARED)
    report = migrate_file_statedb(path, repository)
    shared = f"{key_prefix}shared:fleet-revoked"
    assert report.revoked_key == shared
    assert sorted(stored(redis_client, shared)) == sorted(IDS)
    assert not redis_client.exists(f"{key_prefix}{WORKER}:revoked")
    assert redis_client.get(f"{key_prefix}{WORKER}:clock") == b"5"  # the clock stays per worker


@pytest.mark.parametrize("dry_run", [False, True])
def test_progress_reports_each_chunk(dry_run: bool, tmp_path: Path, open_repo: Opener) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v1-dict", [f"id{i}" for i in range(10)], 5))
    calls: list[tuple[int, int]] = []
    report = migrate_file_statedb(path, open_repo(), dry_run=dry_run,
                                  progress=lambda done, total: calls.append((done, total)), chunk_size=3)
    assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]
    assert report.ids_added == 10


# -- the restricted unpickler ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_of_a_limited_set_loads(protocol: int) -> None:
    assert sorted(map(str, task_ids_of(restricted_loads(pickle.dumps(limited_set(IDS), protocol=protocol))))) == IDS
    assert sorted(map(str, task_ids_of(restricted_loads(pickle.dumps(set(IDS), protocol=protocol))))) == IDS


def test_celery_3_limited_set_name_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    old = types.ModuleType("celery.datastructures")

    class LimitedSet3:  # Celery 3.1 pickled (maxlen, expires, {id: stamp})
        def __reduce__(self) -> tuple[Any, ...]:
            return LimitedSet3, (100, 3600.0, {"a": 1.0, "b": 2.0})

    LimitedSet3.__module__, LimitedSet3.__qualname__ = "celery.datastructures", "LimitedSet"
    old.LimitedSet = LimitedSet3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "celery.datastructures", old)
    data = pickle.dumps(LimitedSet3(), protocol=2)
    monkeypatch.delitem(sys.modules, "celery.datastructures")
    assert task_ids_of(restricted_loads(data)) == ["a", "b"]


# -- the 0.2.0 blob -------------------------------------------------------------------------------------


def write_blob(client: redis.Redis, key: str, ids: list[Any]) -> bytes:
    blob = zlib.compress(pickle.dumps(limited_set(ids), protocol=4))  # what 0.2.0's RedisStateDB.update wrote
    client.set(key, blob)
    return blob


def test_legacy_blob_is_migrated_and_kept(open_repo: Opener, redis_client: redis.Redis, key_prefix: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    repository = open_repo()
    key = legacy_blob_key(repository)
    assert key == f"{key_prefix}{WORKER}:zrevoked"
    blob = write_blob(redis_client, key, IDS)
    redis_client.set(f"{key_prefix}{WORKER}:clock", b"77")  # 0.2.0's clock: the key this version uses

    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        first = migrate_legacy_blob(repository, key=key)
    second = migrate_legacy_blob(repository, key=key)

    assert any("unpickling data read from Redis" in r.getMessage() and key in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert first == MigrationReport(
        source=key, layout="legacy-0.2-blob", dbm_flavour=None, ids_found=7, ids_added=7, clock_found=77,
        clock_before=77, clock_after=77, dry_run=False, ids_skipped=0, revoked_key=repository.keys.revoked,
    )
    assert (second.ids_added, second.clock_after) == (0, 77)
    assert sorted(stored(redis_client, repository.keys.revoked)) == sorted(IDS)
    assert redis_client.get(key) == blob  # never deleted


def test_legacy_blob_of_another_worker_brings_its_clock(open_repo: Opener, redis_client: redis.Redis,
                                                        key_prefix: str) -> None:
    repository = open_repo()
    key = f"{key_prefix}old@host:zrevoked"
    write_blob(redis_client, key, IDS)
    redis_client.set(f"{key_prefix}old@host:clock", b"500")
    dry = migrate_legacy_blob(repository, key=key, dry_run=True)
    assert (dry.ids_added, dry.clock_found, dry.clock_after) == (7, 500, 0)
    assert not redis_client.exists(repository.keys.revoked, repository.keys.clock)
    report = migrate_legacy_blob(repository, key=key)
    assert (report.ids_added, report.clock_after) == (7, 500)


def test_missing_legacy_blob_is_empty(open_repo: Opener, caplog: pytest.LogCaptureFixture) -> None:
    repository = open_repo()
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        report = migrate_legacy_blob(repository, key=legacy_blob_key(repository))
    assert (report.layout, report.ids_found, report.clock_found) == ("empty", 0, None)
    assert not caplog.records


def test_corrupt_legacy_clock_names_its_key(open_repo: Opener, redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}old@host:zrevoked"
    write_blob(redis_client, key, IDS)
    redis_client.set(f"{key_prefix}old@host:clock", b"soon")
    with pytest.raises(CorruptValueError) as info:
        migrate_legacy_blob(open_repo(), key=key)
    assert info.value.key == f"{key_prefix}old@host:clock"


def test_legacy_blob_of_wrong_type_or_corrupt(open_repo: Opener, redis_client: redis.Redis) -> None:
    repository = open_repo()
    key = legacy_blob_key(repository)
    redis_client.rpush(key, b"x")
    with pytest.raises(WrongKeyTypeError, match="holds a list") as wrong:
        migrate_legacy_blob(repository, key=key)
    assert wrong.value.key == key and key in str(wrong.value)
    redis_client.delete(key)
    for value in (b"garbage", zlib.compress(b"not a pickle"), zlib.compress(pickle.dumps(3))):
        redis_client.set(key, value)
        with pytest.raises(CorruptValueError, match=r"not a readable 0\.2 blob") as corrupt:
            migrate_legacy_blob(repository, key=key)
        assert corrupt.value.key == key and key in str(corrupt.value)


def test_malicious_legacy_blob_runs_nothing(tmp_path: Path, open_repo: Opener, redis_client: redis.Redis) -> None:
    marker = tmp_path / "pwned"
    repository = open_repo()
    key = legacy_blob_key(repository)
    redis_client.set(key, zlib.compress(evil_pickle(marker)))
    with pytest.raises(CorruptValueError, match=r"refusing to unpickle builtins\.exec") as info:
        migrate_legacy_blob(repository, key=key)
    assert info.value.key == key
    assert not marker.exists()
    assert not redis_client.exists(repository.keys.revoked)


def test_other_globals_are_refused_even_harmless_ones() -> None:
    with pytest.raises(migration.UnsafePickleError, match=r"collections\.OrderedDict"):
        restricted_loads(pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=2))


# -- nothing is written unless everything can be ---------------------------------------------------


def write_source(kind: str, tmp_path: Path, client: redis.Redis, repository: SyncStateRepository,
                 clock: int | bytes) -> tuple[Callable[..., MigrationReport], str]:
    """A source of ``kind`` holding IDS and ``clock``: (its migration, the clock's origin as errors name it)."""
    if kind.startswith("legacy"):
        key = legacy_blob_key(repository)
        if kind == "legacy-other":
            key = key.replace(WORKER, "old@host")
        write_blob(client, key, IDS)
        clock_key = key.removesuffix(":zrevoked") + ":clock"
        client.set(clock_key, clock if isinstance(clock, bytes) else str(clock))
        return (lambda **kwargs: migrate_legacy_blob(repository, key=key, **kwargs)), clock_key
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items(kind, IDS, int(clock)))
    return (lambda **kwargs: migrate_file_statedb(path, repository, **kwargs)), str(path)


def assert_nothing_written(client: redis.Redis, repository: SyncStateRepository, clock_before: bytes | None) -> None:
    assert not client.exists(repository.keys.revoked)
    assert client.get(repository.keys.clock) == clock_before


@pytest.fixture
def stricter_writer(monkeypatch: pytest.MonkeyPatch) -> int:
    """The writer refusing clocks above a limit below MAX_CLOCK (as a stored-clock limit would); the limit."""
    from statedb import InvalidInputError, commands

    limit, check = 1000, commands.check_clock_value

    def stricter(key: str, value: object) -> int:
        if isinstance(value, int) and value > limit:
            raise InvalidInputError(f"the clock for Redis key {key!r} is above {limit}")
        return check(key, value)

    monkeypatch.setattr(commands, "check_clock_value", stricter)
    return limit


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("kind", ["v1-dict", "v2-limitedset", "v3-zrevoked", "legacy-other"])
def test_a_clock_the_writer_refuses_is_refused_before_any_write(
    kind: str, dry_run: bool, stricter_writer: int, tmp_path: Path, open_repo: Opener, redis_client: redis.Redis,
) -> None:
    repository = open_repo()
    with pytest.raises(StateDBError):
        repository.advance_clock(stricter_writer + 1)  # the writer refuses it: after the ids, it was half applied
    migrate, origin = write_source(kind, tmp_path, redis_client, repository, stricter_writer + 1)

    with pytest.raises(StateDBError) as info:
        migrate(dry_run=dry_run)  # the dry run announces the same refusal

    assert origin in str(info.value) and repository.keys.clock not in str(info.value)
    assert "nothing was migrated" in str(info.value)
    if kind.startswith("legacy"):
        assert isinstance(info.value, CorruptValueError) and info.value.key == origin
    else:
        assert isinstance(info.value, MigrationSourceError) and info.value.source == origin
    assert_nothing_written(redis_client, repository, None)


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("kind", ["legacy-own", "legacy-other"])
def test_legacy_clock_too_long_to_store_is_refused_before_any_write(
    kind: str, dry_run: bool, tmp_path: Path, open_repo: Opener, redis_client: redis.Redis,
) -> None:
    repository = open_repo()
    clock = b"9" * 3700  # read as a clock (at most MAX_CLOCK_DIGITS digits), too long to be stored
    migrate, origin = write_source(kind, tmp_path, redis_client, repository, clock)
    clock_before = redis_client.get(repository.keys.clock)

    with pytest.raises(CorruptValueError, match="holds a clock that cannot be stored") as info:
        migrate(dry_run=dry_run)

    assert info.value.key == origin and f"Redis key {origin!r}" in str(info.value)
    assert_nothing_written(redis_client, repository, clock_before)


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("clock", [migration.MAX_CLOCK + 1, 10**5000], ids=["above-max", "5000-digits"])
def test_file_clock_out_of_range_is_a_source_error(clock: int, dry_run: bool, tmp_path: Path, open_repo: Opener,
                                                   redis_client: redis.Redis) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v3-zrevoked", IDS, clock))
    repository = open_repo()
    with pytest.raises(MigrationSourceError, match="key 'clock' does not hold a clock") as info:
        migrate_file_statedb(path, repository, dry_run=dry_run)
    assert info.value.source == str(path) and str(path) in str(info.value)
    assert_nothing_written(redis_client, repository, None)


# -- one chunk size, one summary -------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_chunks_follow_the_configured_write_chunk_size(legacy: bool, tmp_path: Path, redis_url: str,
                                                       key_prefix: str, redis_client: redis.Redis) -> None:
    ids = [f"id{i}" for i in range(10)]
    config = StateDBConfig(url=redis_url, key_prefix=key_prefix, write_chunk_size=3)
    repository = SyncStateRepository.open(config, WORKER)
    calls: list[tuple[int, int]] = []
    try:
        if legacy:
            write_blob(redis_client, legacy_blob_key(repository), ids)
            migrate_legacy_blob(repository, key=legacy_blob_key(repository), progress=lambda *c: calls.append(c))
        else:
            write_shelf(dbm, tmp_path / "worker.db", layout_items("v1-dict", ids, 5))
            migrate_file_statedb(tmp_path / "worker.db", repository, progress=lambda *c: calls.append(c))
    finally:
        repository.close()
    assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_migration_logs_its_summary_once(dry_run: bool, tmp_path: Path, open_repo: Opener,
                                           caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v2-limitedset", IDS, 9))
    with caplog.at_level(logging.INFO, logger="celery_redis_statedb"):
        report = migrate_file_statedb(path, open_repo(), dry_run=dry_run)
    lines = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert lines == [f"redis-statedb: {'would migrate' if dry_run else 'migrated'} {report.summary()}"]


def test_worker_boot_migration_logs_the_summary_once(tmp_path: Path, redis_url: str, key_prefix: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from celery_redis_statedb.bootstep import _migrate_at_boot
    from celery_redis_statedb.persistence import WorkerStatePersistence

    path = tmp_path / "worker.db"
    write_shelf(dbm, path, layout_items("v3-zrevoked", IDS, 9))
    revoked = limited_set([])
    persistence = WorkerStatePersistence(StateDBConfig(url=redis_url, key_prefix=key_prefix), WORKER,
                                         revoked=revoked, clock=LamportClock())
    try:
        persistence.boot()
        with caplog.at_level(logging.INFO, logger="celery_redis_statedb"):
            _migrate_at_boot(persistence, str(path))
    finally:
        persistence.save()
    (line,) = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert line.startswith(f"redis-statedb: migrated {path} (v3-zrevoked, ")
    assert f"7 ids found, added 7 to {persistence.repository.keys.revoked}, 0 skipped; clock 9" in line
    assert sorted(revoked._data) == sorted(IDS)  # and merged into memory at this very boot


def test_cli_prints_the_report_summary(tmp_path: Path, redis_url: str, key_prefix: str, open_repo: Opener,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.cli_runner import cli_app, run_cli

    path = tmp_path / "worker.db"
    write_shelf(dbm, path, {"revoked": {"ok": 1.0, "": 1.0, "ok2": 1.0}, "clock": 4})
    runner = cli_app(tmp_path, redis_url, key_prefix, monkeypatch)
    dry = migrate_file_statedb(path, open_repo(), dry_run=True)
    assert (dry.ids_added, dry.ids_skipped) == (2, 1)
    for report, flags in ((dry, ["--dry-run"]), (dataclasses.replace(dry, dry_run=False, clock_after=4), [])):
        result = run_cli(runner, redis_url, "migrate", str(path), "--worker", WORKER, *flags)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == [report.summary()]
