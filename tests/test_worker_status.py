"""Worker health (issue 12): the ``statedb_status`` inspect command, the ``:info`` hash each clock
save writes in the same round trip (last seen, on the server's clock), and degraded-mode logs that
count only what is waiting (defect 10).

Real servers of the tests' own; real ``celery worker`` subprocesses, asked through ``celery inspect``
run as a subprocess and through ``app.control.inspect()``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.app.control import Inspect
from celery.utils.collections import LimitedSet
from celery.worker.control import Panel
from kombu.clocks import LamportClock

import celery_redis_statedb
from celery_redis_statedb import WorkerStatePersistence
from celery_redis_statedb import watch as watch_module
from celery_redis_statedb.local_servers import PrivateServer
from celery_redis_statedb.outage import OutageTracker
from statedb import RedisUnavailableError, mask_url
from tests.acl import ACL_PASSWORD, acl_log, worker_acl_server
from tests.clocks import SkewedTime
from tests.keys import clock_key, info_key, revoked_key, shared_key
from tests.persistences import Persistences
from tests.workers import (
    WorkerHarness,
    WorkerProcess,
    fast_env,
    new_task_id,
    wait_until,
    worker_env,
)

# The reply of decision 4, field by field: its exact keys and the JSON types of their values.
NUMBER = (int, float)
STATUS_TYPES: dict[str, Any] = {
    "hostname": str, "version": str, "url": str, "scope": str, "keys": dict, "loaded": bool, "in_memory": int,
    "index_size": int, "pending": int, "failing": bool, "failing_since": (float, type(None)),
    "last_clock_save": (float, type(None)), "boot": dict, "unstorable": int, "last_unstorable": (str, type(None)),
    "bad_members": int, "unreadable_keys": list,
}
KEY_NAMES = {"revoked", "clock", "info", "shared", "stamps", "shared_stamps"}
BOOT_TYPES: dict[str, Any] = {"duration_s": (float, type(None)), "merged_in_memory": int, "merged_in_index": int}
SECRET = "st4tus-s3cret"
INFO_REFUSED = "last seen time is not recorded"


def assert_status_shape(reply: dict[str, Any]) -> None:
    """Exactly the fields of decision 4, of their JSON types, and JSON as it is."""
    assert set(reply) == set(STATUS_TYPES), sorted(set(reply) ^ set(STATUS_TYPES))
    for name, kind in STATUS_TYPES.items():
        assert isinstance(reply[name], kind), (name, reply[name])
        assert not (kind is int and isinstance(reply[name], bool)), (name, reply[name])
    assert set(reply["keys"]) == KEY_NAMES and all(isinstance(v, str) for v in reply["keys"].values())
    assert set(reply["boot"]) == set(BOOT_TYPES)
    for name, kind in BOOT_TYPES.items():
        assert isinstance(reply["boot"][name], kind), (name, reply["boot"])
    assert reply["scope"] in ("worker", "shared")
    assert json.loads(json.dumps(reply)) == reply


def server_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def last_seen(client: redis.Redis, key: str) -> float | None:
    raw = client.hget(key, "last_seen")
    return None if raw is None else float(raw)


# -- unit level, a persistence on a real server -----------------------------------------------

@pytest.fixture
def make(key_prefix: str) -> Iterator[Persistences]:
    """Persistences of "w@host" under the test's prefix, saved at the end."""
    with Persistences(key_prefix) as persistences:
        yield persistences


def clock_of(persistence: WorkerStatePersistence) -> LamportClock:
    assert isinstance(persistence.clock, LamportClock)
    return persistence.clock


class PipelineLog:
    """The command names of every pipeline any client executes (one execution: one round trip)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pipelines: list[list[str]] = []
        execute = redis.client.Pipeline.execute

        def recording(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.pipelines.append([str(command[0]).upper() for command, _ in pipe.command_stack])
            return execute(pipe, *args, **kwargs)

        monkeypatch.setattr(redis.client.Pipeline, "execute", recording)

    def take(self) -> list[list[str]]:
        taken, self.pipelines = self.pipelines, []
        return taken


def test_every_clock_save_writes_the_info_hash_in_the_same_round_trip(
    redis_url: str, redis_client: redis.Redis, make: Persistences, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    persistence = make(redis_url, clock_interval=1000)
    log = PipelineLog(monkeypatch)
    info = info_key(key_prefix, "w@host")

    persistence.boot()
    at_boot = [p for p in log.take() if "HSET" in p]
    assert at_boot == [["EVAL", "HSET"]]  # the boot's clock save, and nothing more
    first = last_seen(redis_client, info)
    assert first is not None

    persistence.tick()  # the clock did not move and is not due: no save, no HSET
    assert [p for p in log.take() if "HSET" in p or "EVAL" in p] == []

    clock_of(persistence).forward()  # the clock moved: its save rides along with the timer's one round trip
    persistence.tick()
    (tick,) = log.take()
    assert tick[-2:] == ["EVAL", "HSET"] and tick.count("HSET") == 1, tick
    second = last_seen(redis_client, info)
    assert second is not None and second >= first

    redis_client.delete(clock_key(key_prefix, "w@host"))  # lost: the repair saves the clock on its own
    persistence.tick()
    pipelines = log.take()
    assert ["EVAL", "HSET"] in pipelines, pipelines
    assert all(p.count("HSET") == p.count("EVAL") for p in pipelines), pipelines

    persistence.save()  # shutdown: the last clock save
    pipelines = log.take()
    assert ["EVAL", "HSET"] in pipelines, pipelines
    assert all(p.count("HSET") == p.count("EVAL") for p in pipelines), pipelines
    stored = redis_client.hgetall(info)
    assert stored[b"scope"] == b"worker"
    assert stored[b"version"] == celery_redis_statedb.__version__.encode()
    assert persistence.last_clock_save == pytest.approx(float(stored[b"last_seen"]), abs=1e-5)


def test_last_seen_is_on_the_servers_clock_and_advances(
    private_server: PrivateServer, make: Persistences, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    skew = -4 * 3600.0  # this host's clock four hours behind the server's
    monkeypatch.setattr(watch_module, "time", SkewedTime(skew))
    admin = private_server.client()
    try:
        persistence = make(private_server.url, clock_interval=0.05)
        persistence.boot()
        info = info_key(key_prefix, "w@host")
        first = last_seen(admin, info)
        assert first is not None
        assert abs(first - server_now(admin)) < 60  # 4 h off on the local clock
        assert persistence.status()["last_clock_save"] == pytest.approx(first, abs=1e-5)

        def advanced() -> bool:
            persistence.tick()
            return (last_seen(admin, info) or 0) > first

        wait_until(advanced, 10, "last_seen to advance on the timer", interval=0.06)
        later = persistence.status()["last_clock_save"]
        assert later > first and abs(later - server_now(admin)) < 60
    finally:
        admin.close()


def test_a_shared_scope_worker_records_its_own_info(
    redis_url: str, redis_client: redis.Redis, make: Persistences, key_prefix: str
) -> None:
    make(redis_url, hostname="pod-1@h", scope="shared").boot()
    assert redis_client.hget(info_key(key_prefix, "pod-1@h"), "scope") == b"shared"
    assert not redis_client.exists(revoked_key(key_prefix, "pod-1@h"))


def test_an_acl_without_hset_on_info_keys_is_said_once_and_never_stops_the_worker(
    make: Persistences, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with worker_acl_server(key_prefix, info_commands=None) as (_, admin, url):
        persistence = make(url, clock_interval=0.05)
        with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
            persistence.boot()
            for _ in range(3):
                clock_of(persistence).forward()
                persistence.tick()
            persistence.save()
        assert persistence.loaded and not persistence.failing
        warnings = [r.getMessage() for r in caplog.records if INFO_REFUSED in r.getMessage()]
        assert len(warnings) == 1, caplog.text
        assert repr(info_key(key_prefix, "w@host")) in warnings[0] and "+hset" in warnings[0]
        assert ACL_PASSWORD not in caplog.text
        assert int(admin.get(clock_key(key_prefix, "w@host")) or 0) == clock_of(persistence).value  # saved all along
        assert not admin.exists(info_key(key_prefix, "w@host"))
        assert {entry.split()[1] for entry in acl_log(admin)} == {"hset"}


def test_the_status_reply_is_the_decided_shape_without_the_password(
    make: Persistences, key_prefix: str, redis_client: redis.Redis
) -> None:
    server = PrivateServer(password=SECRET).start()
    admin = server.client()
    try:
        now = time.time()
        admin.zadd(revoked_key(key_prefix, "w@host"), {f"own-{i}": now - i for i in range(5)})
        persistence = make(server.url, revoked=LimitedSet(maxlen=3))  # the newest 3 in memory, 2 in the index
        persistence.boot()
        status = persistence.status()
        assert_status_shape(status)
        assert SECRET not in json.dumps(status)
        assert status["url"] == f"redis://:***@127.0.0.1:{server.port}/0"
        assert status["hostname"] == "w@host" and status["version"] == celery_redis_statedb.__version__
        worker = "w@host"
        assert status["keys"] == {"revoked": revoked_key(key_prefix, worker), "clock": clock_key(key_prefix, worker),
                                  "info": info_key(key_prefix, worker), "shared": shared_key(key_prefix),
                                  "stamps": f"{key_prefix}{worker}:stamps",
                                  "shared_stamps": f"{key_prefix}shared:fleet-stamps"}
        assert status["boot"]["merged_in_memory"] == 3 and status["boot"]["merged_in_index"] == 2
        assert status["boot"]["duration_s"] is not None and status["boot"]["duration_s"] > 0
        assert status["in_memory"] == 3 and status["index_size"] == 2
        assert (status["pending"], status["failing"], status["failing_since"]) == (0, False, None)
        assert status["loaded"] is True and status["last_clock_save"] is not None
    finally:
        admin.close()
        server.close()


# -- defect 10: degraded-mode logs count only what is waiting ---------------------------------


def test_an_outage_with_nothing_pending_is_said_once_without_a_count(caplog: pytest.LogCaptureFixture) -> None:
    tracker = OutageTracker("redis://h:6379/0", backoff_base=0.2, backoff_cap=5.0)
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        for _ in range(5):
            tracker.failed(RedisUnavailableError("down"), pending=0)
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "Redis at redis://h:6379/0 is failing (down)" in said[0], said
        assert "0 revoked ids" not in caplog.text
        tracker.failed(RedisUnavailableError("down"), pending=2)  # then a revoke waits: counted
        assert "2 revoked ids are honoured in memory but NOT yet stored" in caplog.text
        tracker.recovered()
        caplog.clear()
        tracker.failed(RedisUnavailableError("down again"), pending=0)  # a new outage is said again
        tracker.failed(RedisUnavailableError("down again"), pending=0)
    assert [r.getMessage().count("is failing") for r in caplog.records] == [1]


def test_an_idle_worker_losing_redis_logs_no_zero_counts(
    make: Persistences, private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    persistence = make(private_server.url, socket_timeout=0.5, socket_connect_timeout=0.5, clock_interval=0.05,
                       retry_backoff_base=0.01, retry_backoff_cap=0.02)
    persistence.boot()
    private_server.kill()
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb"):
        for _ in range(4):
            time.sleep(0.05)  # past the backoff: each tick tries Redis again
            clock_of(persistence).forward()
            persistence.tick()
        assert persistence.failing and persistence.outage._failures >= 2
        persistence.save()
    assert " 0 revoked ids" not in caplog.text and "0 stamped" not in caplog.text, caplog.text
    assert caplog.text.count("is failing") == 1, caplog.text
    assert "at shutdown the clock could not be saved" in caplog.text and "no revoke was waiting" in caplog.text


def test_what_was_pending_at_shutdown_is_counted(
    make: Persistences, private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    persistence = make(private_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    persistence.boot()
    private_server.kill()
    persistence.revoked.update(["x", "y"])
    with caplog.at_level(logging.ERROR, logger="celery_redis_statedb"):
        persistence.save()
    assert "at shutdown 2 revoked ids could not be written" in caplog.text
    assert "clock could not be saved" not in caplog.text


# -- registration in the CLI process (no code change, no worker) ------------------------------


def test_importing_the_package_registers_an_inspect_command_and_the_inspect_method() -> None:
    code = ("import celery_redis_statedb\n"
            "from celery.app.control import Inspect\n"
            "from celery.worker.control import Panel\n"
            "print(Panel.meta['statedb_status'].type, callable(getattr(Inspect, 'statedb_status', None)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["inspect", "True"], done.stderr
    assert Panel.meta["statedb_status"].type == "inspect"
    assert Inspect.statedb_status is celery_redis_statedb.control.inspect_statedb_status


# -- end to end: real workers, asked through `celery inspect` and app.control.inspect() --------


def celery_inspect(harness: WorkerHarness, worker: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A appmod inspect ARGS`` in the worker's app directory, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "appmod", "inspect", *args],
                          cwd=worker.app.path, env=worker_env(), capture_output=True, text=True, timeout=60,
                          check=False)


def inspect_status(harness: WorkerHarness, worker: WorkerProcess) -> dict[str, Any]:
    """The worker's reply through the ``celery inspect`` CLI (JSON output)."""
    harness.wait_reachable(worker)
    done = celery_inspect(harness, worker, "statedb_status", "--json", "-t", "3", "-d", worker.name)
    assert done.returncode == 0, done.stdout + done.stderr
    replies = json.loads(done.stdout)
    assert set(replies) == {worker.name}, replies
    reply: dict[str, Any] = replies[worker.name]
    return reply


def assert_info_advances(admin: redis.Redis, info: str) -> None:
    """The worker's :info hash: present, advancing with its clock saves, on the server's clock."""
    first = last_seen(admin, info)
    assert first is not None
    wait_until(lambda: (last_seen(admin, info) or 0) > first, 10, "last_seen to advance")
    fields = admin.hgetall(info)
    assert fields[b"scope"] == b"worker" and fields[b"version"] == celery_redis_statedb.__version__.encode()
    assert abs(float(fields[b"last_seen"]) - server_now(admin)) < 60


def recovered(status: dict[str, Any]) -> bool:
    return status["pending"] == 0 and not status["failing"]


@pytest.mark.e2e
def test_statedb_status_through_celery_inspect_during_and_after_an_outage(
    harness: WorkerHarness, state_prefix: str
) -> None:
    server = PrivateServer(password=SECRET).start()
    admin = server.client()
    try:
        now = time.time()
        app = harness.app(install=False)  # no code change: the entry point registers the command
        worker = harness.worker(app, None, env={
            **fast_env(state_prefix, clock_interval=0.5), "CELERY_WORKER_REVOKES_MAX": "3",
            "CELERY_WORKER_STATEDB": server.url,
        })
        admin.zadd(revoked_key(state_prefix, worker.name), {f"old-{i}": now - 60 - i for i in range(5)})
        worker.start()

        reply = inspect_status(harness, worker)
        assert_status_shape(reply)
        assert reply["hostname"] == worker.name and reply["version"] == celery_redis_statedb.__version__
        assert reply["url"] == f"redis://:***@127.0.0.1:{server.port}/0"
        assert reply["keys"]["info"] == info_key(state_prefix, worker.name)
        assert reply["boot"]["merged_in_memory"] == 3 and reply["boot"]["merged_in_index"] == 2
        assert reply["in_memory"] == 3 and reply["index_size"] == 2
        assert (reply["pending"], reply["failing"], reply["failing_since"]) == (0, False, None)
        assert reply["scope"] == "worker" and reply["loaded"] is True

        info = info_key(state_prefix, worker.name)
        assert_info_advances(admin, info)

        # Redis stopped: revokes are answered, and wait.
        server.kill()
        during = [new_task_id(), new_task_id()]
        harness.revoke(worker, during)
        down = inspect_status(harness, worker)
        assert_status_shape(down)
        assert down["pending"] == 2 and down["failing"] is True
        assert down["failing_since"] is not None and down["failing_since"] <= time.time()
        api = harness.statedb_status(worker)  # app.control.inspect().statedb_status()
        assert api["pending"] == 2 and api["failing"] is True and api["failing_since"] == pytest.approx(
            down["failing_since"], abs=1.0)
        assert SECRET not in json.dumps(down) + json.dumps(api)

        # Redis back (empty): written back, nothing pending, not failing.
        server.start()
        wait_until(lambda: recovered(harness.statedb_status(worker)), 20, "the worker to recover")
        after = inspect_status(harness, worker)
        assert (after["pending"], after["failing"], after["failing_since"]) == (0, False, None)
        assert all(admin.zscore(revoked_key(state_prefix, worker.name), task_id) is not None for task_id in during)
        wait_until(lambda: last_seen(admin, info), 10, "the info hash written again after the restart")

        # Redis stopped again with nothing pending (defect 10): the outage said once, no zero counts.
        said = worker.log_count("is failing")
        server.kill()
        worker.wait_for_log_count("is failing", said + 1, timeout=20)
        assert worker.terminate() == 0
        log = worker.log()
        assert " 0 revoked ids" not in log and "at shutdown 0" not in log, log
        assert "at shutdown the clock could not be saved" in log, log
        assert SECRET not in log
    finally:
        admin.close()
        server.close()


@pytest.mark.e2e
def test_statedb_status_with_install_and_on_a_worker_without_the_redis_statedb(
    harness: WorkerHarness, redis_url: str, state_prefix: str
) -> None:
    app = harness.app(install=True)
    worker = harness.worker(app, redis_url, env={"CELERY_REDIS_STATE_KEY_PREFIX": state_prefix}).start()
    reply, api = inspect_status(harness, worker), harness.statedb_status(worker)
    assert_status_shape(reply)
    assert_status_shape(api)
    assert reply["hostname"] == api["hostname"] == worker.name
    assert reply["keys"] == api["keys"] and reply["url"] == api["url"] == mask_url(redis_url)
    assert reply["failing"] is False and reply["loaded"] is True

    plain = harness.worker(harness.app(install=False), None).start()  # no statedb at all
    assert inspect_status(harness, plain) == {"error": "no Redis statedb on this worker"}
    assert harness.statedb_status(plain) == {"error": "no Redis statedb on this worker"}
    done = celery_inspect(harness, plain, "--list")
    if "No such option '--list'" in done.stderr:  # Celery 5.3: the accepted names are in its usage line
        done = celery_inspect(harness, plain, "--help")
    assert "statedb_status" in done.stdout, done.stdout + done.stderr
