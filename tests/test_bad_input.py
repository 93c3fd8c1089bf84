"""Bad input, end to end: each gets one clear error naming the problem, and nothing stored changes.

URLs and settings, keys of the wrong type or with corrupt values at our names, task ids that
cannot be stored, and worker hostnames with glob characters, unicode or control characters.
The repository-level cases live in test_repository_contract.py; these add what a real
``celery worker`` does with them (exit code, one log line, no traceback) and the API surface.
"""

from __future__ import annotations

import pickle
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import redis
from celery.utils.collections import LimitedSet

import statedb
from celery_redis_statedb import WorkerStatePersistence
from celery_redis_statedb.local_servers import PrivateServer, free_port
from statedb import (
    ConfigurationError,
    InvalidInputError,
    StateDBConfig,
)
from statedb import admin as async_admin
from statedb.names import MAX_TASK_ID_BYTES
from tests.keys import clock_key, revoked_key, shared_key
from tests.workers import (
    CANNOT_START,
    WorkerHarness,
    WorkerProcess,
    assert_discarded,
    fast_env,
    new_task_id,
    refused_boot,
    wait_until,
)

PASSWORD = "p@ss"  # the '@' must be percent-encoded in a URL: p%40ss
# A second user of the password server, whose password needs no encoding (no '%' for Celery to expand).
PLAIN_USER, PLAIN_PASSWORD = "plain", "Plain-pw-1"
PLAIN = f"redis://{PLAIN_USER}:{PLAIN_PASSWORD}"


def celery_arg(url: str) -> str:
    """``url`` as a ``--statedb`` value: Celery expands ``%`` (``%n``, ``%h``...), so ``%`` is written ``%%``."""
    return url.replace("%", "%%")


def snapshot(client: redis.Redis, pattern: str = "*") -> dict[bytes, tuple[bytes, Any]]:
    """Type and serialized value (DUMP) of every key matching ``pattern``: compare before and after."""
    keys: list[bytes] = sorted(client.scan_iter(match=pattern, count=1000))
    return {key: (client.type(key), client.dump(key)) for key in keys}  # type: ignore[misc]


@pytest.fixture(scope="module")
def password_server() -> Iterator[PrivateServer]:
    """A password-protected private server (password ``p@ss``), shared by this module's tests."""
    server = PrivateServer(password=PASSWORD).start()
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", PLAIN_USER, "on", f">{PLAIN_PASSWORD}", "~*", "&*", "+@all")
    admin.close()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def admin_client(password_server: PrivateServer) -> Iterator[redis.Redis]:
    client = password_server.client()
    yield client
    client.close()


# -- URLs and settings: the library's error, before any I/O -----------------------------------


@pytest.mark.parametrize(
    ("url", "error", "fragment"),
    [
        ("redis://:Sekr1t@127.0.0.1:99999/0", ConfigurationError, "port must be a number"),
        ("redis://:Sekr1t@127.0.0.1:port/0", ConfigurationError, "port must be a number"),
        ("redis://:Sekr1t@[::1/0", ConfigurationError, "malformed Redis URL"),
        ("http://:Sekr1t@127.0.0.1:6379/0", ConfigurationError, "unsupported Redis URL scheme 'http'"),
        ("redis+sentinel://:Sekr1t@127.0.0.1:26379/0", ConfigurationError, "names service '0', a number"),
        ("redis+sentinel://:Sekr1t@127.0.0.1:26379", ConfigurationError, "names no service"),
        ("sentinel://:Sekr1t@127.0.0.1:26379/0", ConfigurationError, "add ?master_name=NAME"),
        ("redis+sentinel://:Sekr1t@127.0.0.1:2x/s", ConfigurationError, "the port '2x'"),
        ("127.0.0.1:6379", ConfigurationError, "unsupported Redis URL scheme '(none)'"),
        ("redis://:Sekr1t@127.0.0.1:6379/zero", ConfigurationError, "database number 'zero'"),
        ("redis://:Sekr1t@127.0.0.1:6379/0?db=1x", ConfigurationError, "database number '1x'"),
        ("redis://:Sekr1t@127.0.0.1:6379/0?decode_responses=true", ConfigurationError, "decode_responses"),
        ("unix://:Sekr1t@", ConfigurationError, "names no socket path"),
        ("", ConfigurationError, "non-empty string"),
    ],
)
def test_bad_urls_are_refused_naming_the_fault_without_the_password(
    url: str, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as info:
        StateDBConfig(url=url)
    assert fragment in str(info.value)
    assert "Sekr1t" not in str(info.value) and "Sekr1t" not in repr(info.value)
    assert info.value.__cause__ is None or "Sekr1t" not in str(info.value.__cause__)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"key_prefix": ""}, "key prefix must not be empty"),
        ({"key_prefix": "a\nb:"}, "control characters"),
        ({"scope": "everyone"}, "scope must be one of"),
        ({"on_unavailable": "ignore"}, "on_unavailable must be one of"),
        ({"socket_timeout": float("nan")}, "socket_timeout must be finite"),
        ({"boot_timeout": -1}, "boot_timeout must be finite"),
    ],
)
def test_bad_settings_are_refused_naming_them(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        StateDBConfig(url="redis://:Sekr1t@127.0.0.1:6379/0", **settings)


# -- URLs through a real worker: exit code, one line, data untouched ---------------------------


def bad_url_cases(server: PrivateServer) -> dict[str, tuple[str, list[str], int, str]]:
    """label -> (--statedb value, other worker args, exit code, fragment of the critical line)."""
    port = server.port
    return {
        "malformed-port": (f"{PLAIN}@127.0.0.1:99999/0", [], 78, "port must be a number"),
        "bad-db-number": (f"{PLAIN}@127.0.0.1:{port}/abc", [], 78, "database number 'abc'"),
        # --statedb with another scheme is a file path (Celery's shelve); --redis-statedb is always ours.
        "unknown-scheme": ("unused.db", ["--redis-statedb", f"http://127.0.0.1:{port}/0"], 78,
                           "unsupported Redis URL scheme 'http'"),
        "wrong-password": (f"redis://:wrong-pw@127.0.0.1:{port}/0", [], 78, "refused access"),
        "unreachable-host": (f"{PLAIN}@127.0.0.1:{free_port()}/0", [], 69, "cannot reach Redis"),
        "dns-failure": (f"{PLAIN}@no-such-host.invalid:6379/0", [], 69, "no-such-host.invalid"),
    }


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["malformed-port", "bad-db-number", "unknown-scheme", "wrong-password",
                                  "unreachable-host", "dns-failure"])
def test_a_worker_with_a_bad_url_stops_with_one_line_and_changes_nothing(
    harness: WorkerHarness, password_server: PrivateServer, admin_client: redis.Redis, state_prefix: str, case: str
) -> None:
    statedb, extra, code, fragment = bad_url_cases(password_server)[case]
    app = harness.app(install=True)
    worker = harness.worker(app, statedb, extra_args=extra, env=fast_env(state_prefix, boot_timeout=1))
    admin_client.zadd(revoked_key(state_prefix, worker.name), {"kept": 1.0})
    admin_client.set(clock_key(state_prefix, worker.name), 5)
    before = snapshot(admin_client, f"{state_prefix}*")

    exit_code, line = refused_boot(worker)
    assert exit_code == code, worker.log()
    assert fragment in line
    assert worker.name in line
    for secret in ("p@ss", "p%40ss", "wrong-pw", PLAIN_PASSWORD):
        assert secret not in worker.log()
    assert snapshot(admin_client, f"{state_prefix}*") == before


@pytest.mark.e2e
def test_a_database_number_out_of_range_is_a_configuration_error(
    harness: WorkerHarness, password_server: PrivateServer
) -> None:
    app = harness.app(install=True)
    worker = harness.worker(app, f"{PLAIN}@127.0.0.1:{password_server.port}/99", env=fast_env(boot_timeout=1))
    code, line = refused_boot(worker)
    assert "99" in line
    assert code == 78, line


@pytest.mark.e2e
@pytest.mark.parametrize(("query", "fragment"), [
    pytest.param("ssl_cert_reqs=required", "ssl_cert_reqs", id="tls-option-on-redis-scheme"),
    pytest.param("protocol=9", "protocol", id="bad-protocol"),
])
def test_url_options_redis_py_rejects_at_connect_are_configuration_errors(
    harness: WorkerHarness, password_server: PrivateServer, query: str, fragment: str
) -> None:
    app = harness.app(install=True)
    worker = harness.worker(app, f"{PLAIN}@127.0.0.1:{password_server.port}/0?{query}", env=fast_env(boot_timeout=1))
    code, line = refused_boot(worker)
    assert fragment in line and PLAIN_PASSWORD not in worker.log()
    assert code == 78, line


@pytest.mark.e2e
def test_an_invalid_tls_option_value_is_a_configuration_error(harness: WorkerHarness) -> None:
    app = harness.app(install=True)
    url = f"rediss://127.0.0.1:{free_port()}/0?ssl_cert_reqs=bogus"
    worker = harness.worker(app, url, env=fast_env(boot_timeout=1))
    code, line = refused_boot(worker)
    assert "ssl_cert_reqs" in line or "bogus" in line, line
    assert code == 78, line


# -- '%' in a password: Celery's node_format expansion ------------------------------------------


def celery_expands_double_percent() -> bool:
    """Whether this Celery's node_format turns ``%%`` into ``%`` (Celery 5.3 does not: it has no escape)."""
    from celery.utils.text import simple_format

    try:
        return simple_format("a%%b", {}) == "a%b"
    except ValueError:
        return False


@pytest.mark.e2e
def test_a_percent_encoded_password_through_celerys_expansion(
    harness: WorkerHarness, password_server: PrivateServer, admin_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True)
    env = fast_env(state_prefix)
    encoded = f"redis://:p%40ss@127.0.0.1:{password_server.port}/0"  # p@ss, percent-encoded

    # Unescaped: Celery's own node_format refuses '%4' before this library runs (exit 1).
    unescaped = harness.worker(app, encoded, env=env)
    before = snapshot(admin_client, f"{state_prefix}*")
    unescaped.start(wait_ready=False)
    assert unescaped.wait_exit(30) == 1
    log = unescaped.log()
    assert "Unknown format %4" in log, log
    assert "redis-statedb" not in log
    assert snapshot(admin_client, f"{state_prefix}*") == before

    # The documented fix, '%%40', where this Celery knows the '%%' escape (not 5.3: it has none).
    escaped = harness.worker(app, celery_arg(encoded), env=env)
    if celery_expands_double_percent():
        escaped.start()
        revoked = new_task_id()
        harness.revoke(escaped, [revoked])
        assert admin_client.zscore(revoked_key(state_prefix, escaped.name), revoked) is not None
        assert "p@ss" not in escaped.log() and "p%40ss" not in escaped.log()
    else:
        escaped.start(wait_ready=False)
        assert escaped.wait_exit(30) == 1
        assert "Unknown format %4" in escaped.log()

    # --redis-statedb (this library's own option) is not expanded by Celery: one '%' works everywhere.
    legacy = harness.worker(app, "unused.db", extra_args=["--redis-statedb", encoded], env=env).start()
    revoked = new_task_id()
    harness.revoke(legacy, [revoked])
    assert admin_client.zscore(revoked_key(state_prefix, legacy.name), revoked) is not None
    assert "p@ss" not in legacy.log() and "p%40ss" not in legacy.log()


# -- keys of the wrong type and corrupt values at our names --------------------------------------


def plant_revoked_string(client: redis.Redis, prefix: str, worker: str) -> str:
    client.set(revoked_key(prefix, worker), "not a sorted set")
    return revoked_key(prefix, worker)


def _planter(kind: str, target: str, value: Any = None) -> Callable[[redis.Redis, str, str], str]:
    def plant(client: redis.Redis, prefix: str, worker: str) -> str:
        key = {"revoked": revoked_key(prefix, worker), "clock": clock_key(prefix, worker),
               "shared": shared_key(prefix)}[target]
        if kind == "string":
            client.set(key, value)
        elif kind == "list":
            client.rpush(key, "a", "b")
        elif kind == "hash":
            client.hset(key, "a", "1")
        elif kind == "zset":
            client.zadd(key, value)
        return key

    return plant


PLANTS: dict[str, tuple[Callable[[redis.Redis, str, str], str], str]] = {
    "revoked-string": (_planter("string", "revoked", "x"), "holds a value of another type"),
    "revoked-list": (_planter("list", "revoked"), "holds a value of another type"),
    "revoked-hash": (_planter("hash", "revoked"), "holds a value of another type"),
    "revoked-0.2-pickled-blob": (_planter("string", "revoked", zlib.compress(pickle.dumps({"t": 1.0}))),
                                 "holds a value of another type"),
    "revoked-inf-score": (_planter("zset", "revoked", {"t": float("inf")}), "non-finite score"),
    "revoked-non-utf8-member": (_planter("zset", "revoked", {b"\xff\xfe": 4e9}), "not UTF-8 text"),  # 2096
    "clock-zset": (_planter("zset", "clock", {"a": 1.0}), "holds a value of another type"),
    "clock-list": (_planter("list", "clock"), "holds a value of another type"),
    "clock-not-a-number": (_planter("string", "clock", "abc"), "non-negative integer clock"),
    "clock-negative": (_planter("string", "clock", "-3"), "non-negative integer clock"),
    "clock-float": (_planter("string", "clock", "1.5"), "non-negative integer clock"),
    "shared-string": (_planter("string", "shared", "x"), "holds a value of another type"),
    "shared-list": (_planter("list", "shared"), "holds a value of another type"),
    "shared-inf-score": (_planter("zset", "shared", {"t": float("inf")}), "non-finite score"),
    "shared-non-utf8-member": (_planter("zset", "shared", {b"\xff\xfe": 4e9}), "not UTF-8 text"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_worker_on_a_bad_key_boots_naming_it_and_leaves_it_alone(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, plant: str
) -> None:
    """No stored value stops a boot: a bad member is skipped, a key of another type or a corrupt
    clock is not read; each is one ERROR line naming the key, and the key is left as it is."""
    planter, fragment = PLANTS[plant]
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url)
    key = planter(redis_client, state_prefix, worker.name)
    good = new_task_id()
    if redis_client.type(shared_key(state_prefix)) in (b"none", b"zset"):
        redis_client.zadd(shared_key(state_prefix), {good: time.time()})
    before = snapshot(redis_client, key)

    worker.start()
    lines = [line for line in worker.log().splitlines() if repr(key) in line and fragment in line]
    assert len(lines) == 1 and "ERROR" in lines[0], worker.log()
    assert CANNOT_START not in worker.log() and "Traceback" not in worker.log()
    assert snapshot(redis_client, key) == before
    if redis_client.type(shared_key(state_prefix)) == b"zset":  # what can be read binds: the fleet set
        assert_discarded(harness, worker, [good])
    status = harness.statedb_status(worker)
    assert status["bad_members"] + len(status["unreadable_keys"]) == 1, status


@pytest.mark.e2e
def test_a_clock_beyond_a_doubles_precision_boots_with_a_warning(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url)
    key = clock_key(state_prefix, worker.name)
    huge = 99999999999999999999
    redis_client.set(key, huge)
    worker.start()
    warning = worker.wait_for_log("implausible logical clock")
    assert repr(key) in warning and "WARNING" in warning, warning
    assert int(redis_client.get(key) or 0) > huge  # merged exactly, as an integer: +1
    assert worker.terminate() == 0
    assert int(redis_client.get(key) or 0) > huge


def worker_with_live_clock_trouble(
    harness: WorkerHarness, redis_url: str, state_prefix: str
) -> WorkerProcess:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    return harness.worker(app, redis_url, env={"CELERY_REDIS_STATE_CLOCK_INTERVAL": "0.2"})


@pytest.mark.e2e
def test_a_clock_corrupted_at_runtime_does_not_stop_revokes_being_stored(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    worker = worker_with_live_clock_trouble(harness, redis_url, state_prefix)
    worker.start()
    redis_client.set(clock_key(state_prefix, worker.name), "garbage")
    time.sleep(1.5)
    revoked = new_task_id()
    harness.revoke(worker, [revoked])
    key = revoked_key(state_prefix, worker.name)
    try:
        wait_until(lambda: redis_client.zscore(key, revoked), 5, "the revoke in Redis", interval=0.1)
    except TimeoutError:
        raise AssertionError(f"an acknowledged revoke is only in memory:\n{worker.log()[-3000:]}") from None
    assert redis_client.get(clock_key(state_prefix, worker.name)) == b"garbage"  # never overwritten


@pytest.mark.e2e
def test_a_revoked_key_replaced_at_runtime_is_left_alone_and_the_ids_wait(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url).start()
    key = revoked_key(state_prefix, worker.name)
    first = new_task_id()
    harness.revoke(worker, [first])
    redis_client.delete(key)
    redis_client.set(key, "someone else's string")

    during = new_task_id()
    harness.revoke(worker, [during])  # answered: honoured in memory
    warning = worker.wait_for_log("NOT yet stored in Redis")
    assert repr(key) in warning and "another type" in warning
    assert redis_client.get(key) == b"someone else's string"  # never overwritten
    assert_discarded(harness, worker, [during])

    redis_client.delete(key)  # the operator repairs it: everything in memory is written back
    try:
        wait_until(lambda: redis_client.zscore(key, during) and redis_client.zscore(key, first), 15,
                   "the ids written back", interval=0.2)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}:\n{worker.log()}") from None
    assert "Traceback" not in worker.log()


# -- task ids --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_unstorable_task_ids_are_honoured_in_memory_counted_and_store_nothing(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url).start()
    key = revoked_key(state_prefix, worker.name)
    good, long_id, too_long = new_task_id(), "l" * 8193, "z" * (MAX_TASK_ID_BYTES + 1)
    bad = ["", "y" * 1_000_000, "\ud800", too_long]
    harness.revoke(worker, [good, long_id, *bad])  # one command: the storable ids are stored, the others refused

    assert {m.decode() for m in redis_client.zrange(key, 0, -1)} == {good, long_id}  # type: ignore[union-attr]
    errors = [line for line in worker.log().splitlines() if "not storable" in line]
    assert len(errors) == len(bad), worker.log()[-3000:]
    assert all("ERROR" in line and len(line) < 400 and "lost at the next restart" in line for line in errors)
    assert any(f"1000000 bytes long (limit {MAX_TASK_ID_BYTES})" in line for line in errors)
    assert any("not valid unicode" in line for line in errors)
    assert any("must not be empty" in line for line in errors)
    status = harness.statedb_status(worker)  # where operators look
    assert status["unstorable"] == len(bad) and status["last_unstorable"].startswith("task id"), status
    assert status["pending"] == 0 and status["failing_since"] is None, status
    assert_discarded(harness, worker, [good, long_id, too_long])  # honoured in memory all the same

    later = new_task_id()
    harness.revoke(worker, [later])  # write-through still works
    assert redis_client.zscore(key, later) is not None
    worker.kill()
    worker.start()  # nothing corrupt was stored: the restart loads cleanly, the long id with the others
    assert "redis-statedb: restored 3 revoked ids" in worker.log()
    assert_discarded(harness, worker, [long_id])
    assert harness.statedb_status(worker)["unstorable"] == 0
    assert "Traceback" not in worker.all_logs()


@pytest.mark.parametrize("task_id", [123, None, b"bytes-id", ("a",), 1.5])
def test_non_string_ids_reaching_the_revoked_set_are_honoured_in_memory_only(
    redis_url: str, redis_client: redis.Redis, key_prefix: str, task_id: object
) -> None:
    """Celery itself fails on some of these after adding them (``', '.join``); the set must cope."""
    revoked = LimitedSet(maxlen=100, expires=100)
    persistence = WorkerStatePersistence(StateDBConfig(url=redis_url, key_prefix=key_prefix), "w@h",
                                         revoked=revoked, clock=None)
    persistence.boot()
    try:
        revoked.update([task_id, "fine"])
        revoked.add(task_id)
        assert task_id in revoked
        assert not persistence.failing and not persistence.pending
        members: list[bytes] = redis_client.zrange(f"{key_prefix}w@h:revoked", 0, -1)  # type: ignore[assignment]
        assert members == [b"fine"]
    finally:
        persistence.save()


@pytest.mark.parametrize("bad", [["ok", 7], ["ok", ""], ["ok", "x" * (MAX_TASK_ID_BYTES + 1)], ["ok", "\udcff"],
                                 ["ok", None]])
def test_admin_revoke_and_restore_refuse_bad_ids_and_store_nothing(
    redis_url: str, redis_client: redis.Redis, key_prefix: str, bad: list[object]
) -> None:
    fleet = shared_key(key_prefix)
    redis_client.zadd(fleet, {"kept": 1.0})
    before = snapshot(redis_client, f"{key_prefix}*")
    with pytest.raises(InvalidInputError):
        anyio.run(lambda: async_admin.revoke(redis_url, bad, key_prefix=key_prefix))
    with pytest.raises(InvalidInputError):
        anyio.run(lambda: async_admin.restore(redis_url, [*bad, "kept"], key_prefix=key_prefix))
    assert snapshot(redis_client, f"{key_prefix}*") == before


@pytest.mark.parametrize("when", [float("nan"), float("inf"), -1.0, "yesterday", True])
def test_bad_revocation_times_are_refused(redis_url: str, key_prefix: str, when: object) -> None:
    with pytest.raises(InvalidInputError, match="revocation time"):
        anyio.run(lambda: async_admin.revoke(redis_url, ["a"], key_prefix=key_prefix,
                                             revoked_at=when))  # type: ignore[arg-type]


def test_a_revocation_time_in_the_future_is_refused(redis_url: str, key_prefix: str,
                                                   redis_client: redis.Redis) -> None:
    """Milliseconds for seconds, most often: such a score would sort above every later revoke."""
    now = float(redis_client.time()[0])
    with pytest.raises(InvalidInputError, match=r"is \d+ s after the Redis server's clock: pass epoch seconds "
                                                r"\(not milliseconds\), at most 60 s ahead of it"):
        anyio.run(lambda: async_admin.revoke(redis_url, ["a"], key_prefix=key_prefix, revoked_at=now * 1000))
    with pytest.raises(InvalidInputError, match=r"after the Redis server's clock"):
        anyio.run(lambda: statedb.revoke_stamps(redis_url, [("batch", "b-1")], key_prefix=key_prefix,
                                                revoked_at=now * 1000))
    assert not redis_client.keys(f"{key_prefix}*")
    assert anyio.run(lambda: async_admin.revoke(redis_url, ["a"], key_prefix=key_prefix, revoked_at=now + 30)) == 1


# -- worker hostnames -----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "neighbour"), [("w*[x]@h", "wzzx@h"), ("wörker@höst", "worker@host"),
                                              ("w ?x\\@h", "w qx\\@h")])
def test_odd_worker_hostnames_are_data(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, name: str, neighbour: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    # A neighbour that the name would match as a glob pattern (or once unicode is folded): never touched.
    neighbour_key = revoked_key(state_prefix, neighbour)
    redis_client.zadd(neighbour_key, {"neighbour-id": time.time()})
    worker = harness.worker(app, redis_url, name=name).start()
    key = revoked_key(state_prefix, name)
    revoked = new_task_id()
    harness.revoke(worker, [revoked])
    assert redis_client.zscore(key, revoked) is not None
    worker.kill()
    worker.start()
    assert "redis-statedb: restored 1 revoked ids" in worker.log()  # its own id, not the neighbour's
    assert_discarded(harness, worker, [revoked])
    assert [m.decode() for m in redis_client.zrange(neighbour_key, 0, -1)] == ["neighbour-id"]  # type: ignore[union-attr]
    state = anyio.run(lambda: async_admin.inspect_worker(redis_url, name, key_prefix=state_prefix))
    assert state.revoked_count == 1 and state.key == key
    assert "Traceback" not in worker.all_logs()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["w\tx@h", "w\x1bx@h"])
def test_a_hostname_with_control_characters_is_refused_clearly(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, name: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, name=name)
    code, line = refused_boot(worker)
    assert code == 78, worker.log()
    assert "worker name" in line and "control characters" in line
    assert not list(redis_client.scan_iter(match=f"{state_prefix}*"))


@pytest.mark.e2e
def test_a_hostname_with_a_newline_is_refused_in_one_line(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str
) -> None:
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})
    worker = harness.worker(app, redis_url, name="w\nx@h")
    code, line = refused_boot(worker)
    assert code == 78, worker.log()
    assert not list(redis_client.scan_iter(match=f"{state_prefix}*"))
    assert "worker name" in line and "control characters" in line, line
