"""One contract, two repositories: the async core and the sync adapter must behave alike."""

from __future__ import annotations

import asyncio
import os
import pickle
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_redis_statedb import SyncStateRepository
from celery_redis_statedb.local_servers import PrivateServer, free_port
from statedb import (
    AccessDeniedError,
    AsyncStateRepository,
    CorruptValueError,
    InvalidInputError,
    RedisUnavailableError,
    Scope,
    StateDBConfig,
    WrongKeyTypeError,
    cursors,
)
from statedb.urls import target_kind
from tests.round_trips import round_trips


class AsyncDriver:
    """Calls an AsyncStateRepository through the same synchronous surface as the sync one."""

    def __init__(self, repository: AsyncStateRepository, loop: asyncio.AbstractEventLoop) -> None:
        self.repository, self.loop = repository, loop
        self.keys = repository.keys

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.repository, name)
        if name == "iter_revoked":
            async def collect(aiter: AsyncIterator[Any]) -> list[Any]:
                return [row async for row in aiter]

            return lambda **kwargs: self.loop.run_until_complete(collect(method(**kwargs)))
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.repository.aclose())


class SyncDriver:
    def __init__(self, repository: SyncStateRepository) -> None:
        self.repository = repository
        self.keys = repository.keys

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.repository, name)
        if name == "iter_revoked":
            return lambda **kwargs: list(method(**kwargs))
        return method  # type: ignore[no-any-return]

    def close(self) -> None:
        self.repository.close()


Opener = Callable[..., Any]


@pytest.fixture(params=["async", "sync"])
def open_repo(request: pytest.FixtureRequest) -> Iterator[Opener]:
    opened: list[Any] = []
    loop = asyncio.new_event_loop()

    def opener(config: StateDBConfig, worker: str = "w1@host") -> Any:
        if request.param == "async":
            driver: Any = AsyncDriver(AsyncStateRepository.open(config, worker), loop)
        else:
            driver = SyncDriver(SyncStateRepository.open(config, worker))
        opened.append(driver)
        return driver

    yield opener
    for driver in opened:
        driver.close()
    loop.close()


@pytest.fixture(params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(URL, key prefix) on the run's server or the run's Redis Cluster; the prefix's keys are deleted after."""
    if request.param == "standalone":
        return request.getfixturevalue("redis_url"), request.getfixturevalue("key_prefix")
    return request.getfixturevalue("cluster_url"), request.getfixturevalue("cluster_prefix")


@pytest.fixture
def redis_client(request: pytest.FixtureRequest, target: tuple[str, str], redis_client: redis.Redis) -> Any:
    """An admin client of the target: the run's server's (conftest), or a cluster client."""
    return request.getfixturevalue("cluster_client") if target_kind(target[0]) == "cluster" else redis_client


@pytest.fixture
def config(target: tuple[str, str]) -> StateDBConfig:
    url, prefix = target
    return StateDBConfig(url=url, key_prefix=prefix, load_chunk_size=3, write_chunk_size=4)


def test_add_count_remove(open_repo: Opener, config: StateDBConfig) -> None:
    repo = open_repo(config)
    assert repo.add_revoked(["a", "b", "c"], revoked_at=100.0) == 3
    assert repo.add_revoked(["a", "d"], revoked_at=101.0) == 1
    assert repo.count_revoked() == 4
    assert repo.remove_revoked(["a", "zz"]) == 1
    assert repo.count_revoked() == 3


def test_keys_follow_the_layout(open_repo: Opener, config: StateDBConfig, redis_client: redis.Redis) -> None:
    repo = open_repo(config, "celery@pod-1")
    repo.add_revoked(["t1"], revoked_at=1700000000.25)
    repo.advance_clock(12)
    prefix = config.key_prefix
    assert redis_client.zscore(f"{prefix}celery@pod-1:revoked", "t1") == 1700000000.25
    assert redis_client.get(f"{prefix}celery@pod-1:clock") == b"12"


def test_a_second_revocation_keeps_the_earliest_time(open_repo: Opener, config: StateDBConfig) -> None:
    repo = open_repo(config)
    repo.add_revoked(["a"], revoked_at=100.0)
    repo.add_revoked(["a"], revoked_at=200.0)
    assert repo.iter_revoked() == [("a", 100.0)]
    repo.add_revoked_at([("a", 50.0)])
    assert repo.iter_revoked() == [("a", 50.0)]


def test_iteration_is_newest_first_across_chunks(open_repo: Opener, config: StateDBConfig) -> None:
    repo = open_repo(config)
    repo.add_revoked_at([(f"id{i}", float(i)) for i in range(10)])
    assert [task_id for task_id, _ in repo.iter_revoked()] == [f"id{i}" for i in range(9, -1, -1)]
    assert [task_id for task_id, _ in repo.iter_revoked(limit=4)] == ["id9", "id8", "id7", "id6"]
    assert [task_id for task_id, _ in repo.iter_revoked(newer_than=7.0)] == ["id9", "id8", "id7"]
    assert repo.iter_revoked(limit=0) == []


def test_the_server_check_is_one_round_trip(open_repo: Opener, config: StateDBConfig) -> None:
    """A worker's start-up check (a plain client's topology and the ZADD LT probe) asks once."""
    repo = open_repo(config)
    assert repo.count_revoked() == 0  # connected: the handshake is not counted below
    with round_trips() as sent:
        repo.check_server()
    assert len(sent) == 1, sent


def test_big_batch_is_one_call(open_repo: Opener, config: StateDBConfig) -> None:
    """25 000 ids are written in one round trip (one pipeline of ZADD chunks) and counted in one; they are
    read back a page of ``load_chunk_size`` a round trip, within the byte budget of a trip."""
    config = StateDBConfig(url=config.url, key_prefix=config.key_prefix)  # the default chunk sizes
    repo = open_repo(config)
    assert repo.count_revoked() == 0  # connected to the set's node: the handshake is not counted below
    ids = [f"task-{i}" for i in range(25_000)]
    with round_trips() as sent:
        assert repo.add_revoked(ids) == 25_000
    assert len(sent) == 1, sent
    with round_trips() as sent:
        assert repo.count_revoked() == 25_000
    assert len(sent) == 1, sent
    with round_trips() as sent:
        assert len(repo.iter_revoked()) == 25_000
    # The first trip asks for FIRST_TRIP_ROWS (the byte budget knows no row size yet), then a page of
    # load_chunk_size a trip (these short ids fit the budget); the last page is short: the walk ends.
    assert len(sent) == 1 + -(-(25_000 - cursors.FIRST_TRIP_ROWS) // config.load_chunk_size), sent


def test_clock_only_moves_forward(open_repo: Opener, config: StateDBConfig) -> None:
    repo = open_repo(config)
    assert repo.read_clock() == 0
    assert tuple(repo.advance_clock(5)) == (5, True)
    assert tuple(repo.advance_clock(3)) == (5, False)
    assert tuple(repo.advance_clock(9)) == (9, False)
    assert repo.read_clock() == 9


@pytest.mark.parametrize(("stored", "offered", "kept"), [
    (b"9", 10, 10), (b"10", 9, 10), (b"007", 8, 8), (b"007", 6, 7), (b"0", 0, 0),
    (str(2**53).encode(), 2**53 + 1, 2**53 + 1),  # a double cannot tell these apart
    (str(2**53 + 1).encode(), 2**53, 2**53 + 1),
    (str(2**60).encode(), 2**60 + 1, 2**60 + 1),
    (b"1" + b"0" * 30, 10**30 - 1, 10**30), (b"9" * 31, 10**31, 10**31),
    (b"123456789012345678901234567890", 123456789012345678901234567891, 123456789012345678901234567891),
    (b"123456789012345678901234567891", 123456789012345678901234567890, 123456789012345678901234567891),
])
def test_the_clock_script_compares_integers_of_any_size_exactly(
    open_repo: Opener, config: StateDBConfig, redis_client: redis.Redis, stored: bytes, offered: int, kept: int
) -> None:
    repo = open_repo(config)
    redis_client.set(repo.keys.clock, stored)
    assert repo.advance_clock(offered).stored == kept
    assert repo.read_clock() == kept


def test_shared_scope_shares_revoked_ids_but_not_clocks(open_repo: Opener, config: StateDBConfig) -> None:
    shared = StateDBConfig(url=config.url, key_prefix=config.key_prefix, scope=Scope.SHARED)
    a, b = open_repo(shared, "a@h"), open_repo(shared, "b@h")
    a.add_revoked(["x"])
    assert [task_id for task_id, _ in b.iter_revoked()] == ["x"]
    a.advance_clock(10)
    assert b.read_clock() == 0


@pytest.mark.parametrize("odd", ["w*@h", "w?@h", "w[ab]@h", "w\\*@h", "wörker@höst"])
def test_glob_and_unicode_worker_names_stay_separate(open_repo: Opener, config: StateDBConfig, odd: str) -> None:
    neighbour = odd.replace("*", "x").replace("?", "y").replace("[ab]", "a").replace("ö", "o") + "-n"
    repo, other = open_repo(config, odd), open_repo(config, neighbour)
    repo.add_revoked(["mine"])
    other.add_revoked(["theirs"])
    assert [t for t, _ in repo.iter_revoked()] == ["mine"]
    assert [t for t, _ in other.iter_revoked()] == ["theirs"]


def test_unicode_ids_round_trip(open_repo: Opener, config: StateDBConfig) -> None:
    repo = open_repo(config)
    repo.add_revoked(["tâche-✓", "任务"], revoked_at=1.0)
    assert sorted(t for t, _ in repo.iter_revoked()) == sorted(["tâche-✓", "任务"])


def test_bad_ids_store_nothing(open_repo: Opener, config: StateDBConfig) -> None:
    repo = open_repo(config)
    with pytest.raises(InvalidInputError):
        repo.add_revoked(["good", 12])
    with pytest.raises(InvalidInputError):
        repo.add_revoked(["x" * 1_000_000])
    assert repo.count_revoked() == 0


@pytest.mark.parametrize("plant", ["string", "list", "old-blob"])
def test_wrong_type_at_the_revoked_key_names_it(
    open_repo: Opener, config: StateDBConfig, redis_client: redis.Redis, plant: str
) -> None:
    repo = open_repo(config)
    key = repo.keys.revoked
    if plant == "list":
        redis_client.rpush(key, "a")
    elif plant == "old-blob":
        redis_client.set(key, zlib.compress(pickle.dumps({"a": 1.0})))
    else:
        redis_client.set(key, "x")
    for call in (lambda: repo.add_revoked(["a"]), repo.count_revoked, repo.iter_revoked):
        with pytest.raises(WrongKeyTypeError) as info:
            call()
        assert info.value.key == key
        assert repr(key) in str(info.value)
    assert redis_client.type(key) in (b"string", b"list")  # nothing overwritten


class _Boom:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch /tmp/statedb-pickle-ran",))


def test_a_planted_pickle_is_never_unpickled(
    open_repo: Opener, config: StateDBConfig, redis_client: redis.Redis
) -> None:
    marker = Path("/tmp/statedb-pickle-ran")
    marker.unlink(missing_ok=True)
    repo, other = open_repo(config, "w1@host"), open_repo(config, "w2@host")
    payload = pickle.dumps(_Boom())
    redis_client.set(repo.keys.clock, payload)
    redis_client.set(repo.keys.revoked, zlib.compress(payload))
    redis_client.zadd(other.keys.revoked, {payload: 1.0})
    with pytest.raises(CorruptValueError):
        repo.read_clock()
    with pytest.raises(WrongKeyTypeError):
        repo.iter_revoked()
    with pytest.raises(CorruptValueError):  # pickle bytes are not UTF-8 text
        other.iter_revoked()
    assert not marker.exists()


@pytest.mark.parametrize("value", [b"abc", b"-3", b"1e400", b"1 2", b"1.5"])
def test_corrupt_clock_is_reported_not_overwritten(
    open_repo: Opener, config: StateDBConfig, redis_client: redis.Redis, value: bytes
) -> None:
    repo = open_repo(config)
    redis_client.set(repo.keys.clock, value)
    with pytest.raises(CorruptValueError, match="does not hold a non-negative integer clock"):
        repo.read_clock()
    with pytest.raises(CorruptValueError):
        repo.advance_clock(5)
    assert redis_client.get(repo.keys.clock) == value


def test_clock_of_the_wrong_type(open_repo: Opener, config: StateDBConfig, redis_client: redis.Redis) -> None:
    repo = open_repo(config)
    redis_client.zadd(repo.keys.clock, {"a": 1})
    with pytest.raises(WrongKeyTypeError):
        repo.advance_clock(5)


@pytest.mark.parametrize(("member", "score"), [(b"a", float("inf")), (b"a", float("-inf")), (b"\xff\xfe", 1.0)])
def test_corrupt_rows_are_reported(
    open_repo: Opener, config: StateDBConfig, redis_client: redis.Redis, member: bytes, score: float
) -> None:
    repo = open_repo(config)
    redis_client.zadd(repo.keys.revoked, {member: score})
    with pytest.raises(CorruptValueError, match=repr(repo.keys.revoked)):
        repo.iter_revoked()


def test_unreachable_server_is_unavailable_and_masks_the_password(open_repo: Opener, key_prefix: str) -> None:
    url = f"redis://:topsecret@127.0.0.1:{free_port()}/0"
    repo = open_repo(StateDBConfig(url=url, key_prefix=key_prefix, socket_connect_timeout=1))
    with pytest.raises(RedisUnavailableError) as info:
        repo.add_revoked(["a"])
    assert "topsecret" not in str(info.value)
    assert ":***@127.0.0.1" in str(info.value)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)


def test_unknown_host_is_unavailable(open_repo: Opener, key_prefix: str) -> None:
    repo = open_repo(StateDBConfig(url="redis://no-such-host.invalid:6379/0", key_prefix=key_prefix,
                                   socket_connect_timeout=2))
    with pytest.raises(RedisUnavailableError, match=r"no-such-host\.invalid"):
        repo.ping()


@pytest.fixture(scope="module")
def password_server() -> Iterator[PrivateServer]:
    server = PrivateServer(password="right-pass").start()
    yield server
    server.close()


def test_wrong_password_is_access_denied(open_repo: Opener, password_server: PrivateServer) -> None:
    url = f"redis://:wrong-pass@127.0.0.1:{password_server.port}/0"
    repo = open_repo(StateDBConfig(url=url))
    with pytest.raises(AccessDeniedError) as info:
        repo.ping()
    assert "wrong-pass" not in str(info.value)
    assert "right-pass" not in str(info.value)


def test_right_password_works(open_repo: Opener, password_server: PrivateServer) -> None:
    repo = open_repo(StateDBConfig(url=password_server.url))
    assert repo.ping() is True


# -- integrity checks (issue 11) ---------------------------------------------------------


def test_check_health_reads_the_clock_before_its_advance(open_repo: Opener, config: StateDBConfig,
                                                         redis_client: redis.Redis) -> None:
    from statedb.commands import ClockAdvance
    from statedb.integrity import SetProbe

    repo = open_repo(config)
    repo.add_revoked(["a", "b"], revoked_at=100.0)
    missing = repo.check_health([], clock=True, server_time=False, policy=False)
    assert missing.clock_missing and missing.clock is None
    redis_client.set(repo.keys.clock, 7)
    probes = [SetProbe(repo.keys.revoked, ("a", "gone")), SetProbe(repo.keys.shared, ())]
    health = repo.check_health(probes, clock=True, server_time=True, policy=True, advance_to=9)
    assert health.clock == 7 and not health.clock_missing  # as stored before the advance staged behind it
    assert health.advanced == ClockAdvance(9, False)
    assert [(s.size, s.missing) for s in health.sets] == [(2, ("gone",)), (0, ())]
    seconds, micros = redis_client.time()
    assert health.server_time is not None and abs(health.server_time - (seconds + micros / 1e6)) < 2
    assert health.policy == redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    assert health.refused == ()


def test_check_health_survives_a_corrupt_clock(open_repo: Opener, config: StateDBConfig,
                                               redis_client: redis.Redis) -> None:
    repo = open_repo(config)
    redis_client.set(repo.keys.clock, b"not-a-clock")
    health = repo.check_health([], clock=True, server_time=False, advance_to=3)
    assert health.clock is None and not health.clock_missing
    assert isinstance(health.advanced, CorruptValueError)


def test_save_clock_writes_the_info_hash_beside_the_clock(open_repo: Opener, config: StateDBConfig,
                                                          redis_client: redis.Redis) -> None:
    from statedb.commands import ClockAdvance, ClockSave, WorkerInfo
    from statedb.integrity import SetProbe

    repo = open_repo(config)
    assert repo.keys.info == f"{config.key_prefix}w1@host:info"
    saved = repo.save_clock(5, WorkerInfo(1_700_000_000.25, "worker", "1.2.3"))
    assert saved == ClockSave(ClockAdvance(5, True), None)
    assert redis_client.hgetall(repo.keys.info) == {b"last_seen": b"1700000000.250000", b"scope": b"worker",
                                                    b"version": b"1.2.3"}
    assert repo.save_clock(4) == ClockSave(ClockAdvance(5, False), None)  # no info: the clock alone
    health = repo.check_health([SetProbe(repo.keys.revoked, ())], clock=True, server_time=False, advance_to=8,
                               info=WorkerInfo(1_700_000_100.0, "shared", "1.2.4"))
    assert health.advanced == ClockAdvance(8, False) and health.info_error is None
    assert redis_client.hmget(repo.keys.info, "last_seen", "scope", "version") == [b"1700000100.000000",
                                                                                  b"shared", b"1.2.4"]


def test_a_refused_info_hash_never_fails_the_clock_save(open_repo: Opener, config: StateDBConfig,
                                                        redis_client: redis.Redis) -> None:
    from statedb.commands import ClockAdvance, WorkerInfo

    repo = open_repo(config)
    redis_client.set(repo.keys.info, b"a string")  # HSET refused (WRONGTYPE), as an ACL without +hset would
    info = WorkerInfo(1_700_000_000.0, "worker", "1.2.3")
    saved = repo.save_clock(5, info)
    assert saved.advance == ClockAdvance(5, True)
    assert isinstance(saved.info_error, WrongKeyTypeError) and repr(repo.keys.info) in str(saved.info_error)
    health = repo.check_health([], clock=True, server_time=False, advance_to=6, info=info)
    assert health.advanced == ClockAdvance(6, False) and isinstance(health.info_error, WrongKeyTypeError)
    assert redis_client.get(repo.keys.clock) == b"6" and redis_client.get(repo.keys.info) == b"a string"
    redis_client.set(repo.keys.clock, b"corrupt")
    with pytest.raises(CorruptValueError):  # the clock's own failure still raises
        repo.save_clock(7, info)


def test_add_fleet_revoked_at_writes_the_fleet_set(open_repo: Opener, config: StateDBConfig,
                                                   redis_client: redis.Redis) -> None:
    repo = open_repo(config)
    assert repo.add_fleet_revoked_at([("f1", 50.0), ("f2", 60.0)]) == 2
    assert repo.add_fleet_revoked_at([("f1", 40.0)]) == 0  # the earliest time wins
    assert redis_client.zscore(repo.keys.shared, "f1") == 40.0
    assert repo.count_revoked() == 0
