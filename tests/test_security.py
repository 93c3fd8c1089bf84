"""Security: nothing from Redis is unpickled, passwords never show, TLS works, least-privilege ACL.

Real ``celery worker`` subprocesses against private servers: a planted malicious pickle at
every key a worker reads, a password-protected server through an outage and a restart, a
TLS-only server with certificates made here, and an ACL user limited to the key prefix and
the commands the library sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import re
import signal
import time
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.bin.celery import celery
from celery.utils.collections import LimitedSet
from click.testing import CliRunner, Result
from kombu.clocks import LamportClock

from celery_redis_statedb import SyncStateRepository, WorkerStatePersistence
from celery_redis_statedb.local_servers import PrivateServer, ServerExited, TLSFiles, free_port, server_binary
from statedb import (
    AccessDeniedError,
    AsyncStateRepository,
    ConfigurationError,
    RedisUnavailableError,
    StateDBConfig,
    StateDBError,
)
from statedb import admin as async_admin
from tests.servers import make_tls_files, openssl_available, server_version
from tests.workers import (
    CANNOT_START,
    TASK_NAME,
    WorkerHarness,
    WorkerProcess,
    clock_key,
    new_task_id,
    revoked_key,
    shared_key,
    wait_until,
)

SECRET = "Zq7-s3cr3t-pw"
FAST_ENV = {
    "CELERY_REDIS_STATE_BOOT_TIMEOUT": "1",
    "CELERY_REDIS_STATE_SOCKET_TIMEOUT": "0.5",
    "CELERY_REDIS_STATE_CONNECT_TIMEOUT": "0.5",
}






def one_critical_line(worker: WorkerProcess) -> str:
    log = worker.log()
    lines = [line for line in log.splitlines() if CANNOT_START in line]
    assert len(lines) == 1, log
    assert "Traceback" not in log, log
    assert " ready." not in log, log
    return lines[0]


def assert_discarded(harness: WorkerHarness, worker: WorkerProcess, revoked: str) -> None:
    control = new_task_id()
    harness.send(worker, revoked)
    harness.send(worker, control)
    harness.wait_ran(worker, control)
    assert not worker.app.ran(revoked), worker.log()
    assert f"Discarding revoked task: {TASK_NAME}[{revoked}]" in worker.log()


# -- nothing read from Redis is ever unpickled ----------------------------------------------------


class Exploit:
    """A pickle that, if ever loaded, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PICKLE-CODE-RAN"
    yield path
    assert not path.exists(), "a pickle read from Redis was loaded: its code ran"


def payloads(marker: Path) -> tuple[bytes, bytes]:
    """(protocol 0: ASCII, valid UTF-8 text; protocol 5: binary, not UTF-8)."""
    text, binary = pickle.dumps(Exploit(marker), protocol=0), pickle.dumps(Exploit(marker), protocol=5)
    text.decode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        binary.decode("utf-8")
    return text, binary


@pytest.mark.e2e
def test_pickles_at_every_key_a_worker_reads_are_never_loaded(
    harness: WorkerHarness, redis_url: str, redis_client: redis.Redis, state_prefix: str, marker: Path
) -> None:
    text, binary = payloads(marker)
    app = harness.app(install=True, conf={"redis_state_key_prefix": state_prefix})

    # Text pickles as members of the worker's set and of the fleet set, and a 0.2 blob at :zrevoked:
    # the worker starts, and holds the pickles as plain (odd) task ids.
    worker = harness.worker(app, redis_url)
    redis_client.zadd(revoked_key(state_prefix, worker.name), {text: 4e9})
    redis_client.zadd(shared_key(state_prefix), {text + b"-fleet": 4e9})
    redis_client.set(f"{state_prefix}{worker.name}:zrevoked", zlib.compress(binary))
    worker.start()
    in_memory = harness.revoked_in_memory(worker)
    assert {text.decode(), text.decode() + "-fleet"} <= in_memory
    harness.revoke(worker, [new_task_id()])
    worker.terminate()
    assert redis_client.get(f"{state_prefix}{worker.name}:zrevoked") == zlib.compress(binary)

    # Where a pickle cannot be an id or a clock, the worker skips it naming the key: never loads it.
    cases = {
        "clock": lambda name: redis_client.set(clock_key(state_prefix, name), binary),
        "revoked-member": lambda name: redis_client.zadd(revoked_key(state_prefix, name), {binary: 4e9}),
        "fleet-member": lambda name: redis_client.zadd(shared_key(state_prefix), {binary: 4e9}),
        "revoked-blob": lambda name: redis_client.set(revoked_key(state_prefix, name), zlib.compress(binary)),
    }
    for label, plant in cases.items():
        redis_client.delete(shared_key(state_prefix))
        bad = harness.worker(app, redis_url)
        plant(bad.name)
        bad.start()  # boots on what it can read, naming the key it skipped
        assert any("ERROR" in line and "Redis key" in line for line in bad.log().splitlines()), (label, bad.log())
        assert CANNOT_START not in bad.log(), label
        bad.kill()
        assert not marker.exists(), label


def test_the_admin_apis_and_cli_never_load_planted_pickles(
    redis_url: str, redis_client: redis.Redis, key_prefix: str, marker: Path, cli_app: str
) -> None:
    text, binary = payloads(marker)
    redis_client.zadd(revoked_key(key_prefix, "a@h"), {text: 1.0, "ok": 2.0})
    redis_client.zadd(revoked_key(key_prefix, "b@h"), {binary: 1.0})
    redis_client.set(clock_key(key_prefix, "a@h"), binary)
    redis_client.zadd(shared_key(key_prefix), {text: 3.0})
    redis_client.set(f"{key_prefix}a@h:zrevoked", zlib.compress(binary))

    async def everything() -> None:
        await async_admin.list_workers(redis_url, key_prefix=key_prefix)
        for call in (
            async_admin.inspect_workers(redis_url, key_prefix=key_prefix),
            async_admin.where_revoked(redis_url, "ok", key_prefix=key_prefix),
            async_admin.purge_old_revoked(redis_url, older_than=1, dry_run=True, key_prefix=key_prefix),
        ):
            with contextlib.suppress(StateDBError):  # a corrupt value is reported, never loaded
                await call
        for worker in ("a@h", "b@h", None):
            with contextlib.suppress(StateDBError):
                [row async for row in async_admin.iter_revoked(redis_url, worker, key_prefix=key_prefix)]

    asyncio.run(everything())
    runner = CliRunner()
    for args in (["workers"], ["inspect", "a@h"], ["ls", "a@h"], ["ls", "b@h"], ["where", "ok"],
                 ["check", "--worker", "a@h"]):
        run_cli(runner, cli_app, redis_url, *args)
    # The explicit 0.2 migration does unpickle, through a restricted unpickler: it refuses this one.
    result = run_cli(runner, cli_app, redis_url, "migrate", "--legacy-blob", "--worker", "a@h")
    assert result.exit_code == 1, result.output
    assert "refusing to unpickle" in result.output and "posix.system" in result.output
    assert redis_client.get(f"{key_prefix}a@h:zrevoked") == zlib.compress(binary)


# -- passwords never show -----------------------------------------------------------------------


@pytest.fixture
def cli_app(tmp_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Celery app module for ``celery -A <module> statedb ...`` run in-process."""
    module = f"secapp_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('secapp', broker={redis_url!r}, set_as_current=False)\n"
        f"app.conf.redis_state_key_prefix = {key_prefix!r}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in os.environ if n.startswith(("CELERY_", "REDIS_STATEDB_"))]:
        monkeypatch.delenv(name)
    return module


def run_cli(runner: CliRunner, module: str, url: str | None, *args: str) -> Result:
    head = ["-A", module, "statedb", *(["--url", url] if url else [])]
    return runner.invoke(celery, [*head, *args], catch_exceptions=False)


def secrets_in(text: str) -> list[str]:
    return [s for s in (SECRET, "wrong-" + SECRET) if s in text]


@pytest.fixture
def password_server() -> Iterator[PrivateServer]:
    server = PrivateServer(password=SECRET).start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.e2e
def test_a_workers_full_log_never_shows_the_password(
    harness: WorkerHarness, password_server: PrivateServer, state_prefix: str
) -> None:
    """Info level, a Redis outage and its recovery, a SIGHUP restart and a warm shutdown.

    The URL comes from CELERY_WORKER_STATEDB: on the command line, Celery's own SIGHUP message
    ("Restarting celery worker (<argv>)") would print it.
    """
    app = harness.app(install=True)
    worker = harness.worker(app, None, script=True, env={
        **FAST_ENV, "CELERY_REDIS_STATE_KEY_PREFIX": state_prefix, "CELERY_REDIS_STATE_CLOCK_INTERVAL": "1",
        "CELERY_WORKER_STATEDB": password_server.url,
    }).start()
    client = password_server.client()
    try:
        key = revoked_key(state_prefix, worker.name)
        harness.revoke(worker, [new_task_id()])
        password_server.kill()
        during = new_task_id()
        harness.revoke(worker, [during])
        worker.wait_for_log("NOT yet stored in Redis")
        password_server.start()
        worker.wait_for_log("reachable again", timeout=20)
        wait_until(lambda: client.zscore(key, during), 10, "the id revoked during the outage")
        worker.send_signal(signal.SIGHUP)
        worker.wait_for_log_count(f"{worker.name} ready.", 2, timeout=30)
        assert worker.terminate() == 0
    finally:
        client.close()
    log = worker.all_logs()
    assert ":***@127.0.0.1" in log  # the URL is shown, masked
    assert "Restarting celery worker" in log
    assert not secrets_in(log), log


@pytest.mark.e2e
def test_a_refused_password_is_not_shown(harness: WorkerHarness, password_server: PrivateServer) -> None:
    app = harness.app(install=True)
    worker = harness.worker(app, f"redis://:wrong-{SECRET}@127.0.0.1:{password_server.port}/0", env=FAST_ENV)
    worker.start(wait_ready=False)
    assert worker.wait_exit(30) == 78
    line = one_critical_line(worker)
    assert "refused access" in line and ":***@127.0.0.1" in line
    assert not secrets_in(worker.log())


@pytest.mark.e2e
@pytest.mark.parametrize("server_state", ["down", "refusing"])
def test_a_password_in_the_user_position_is_masked_in_the_boot_line(
    harness: WorkerHarness, password_server: PrivateServer, server_state: str
) -> None:
    """``redis://SECRET@host`` (the ':' forgotten): the CRITICAL line shows ``***@host``."""
    port = free_port() if server_state == "down" else password_server.port
    app = harness.app(install=False)  # method 1, the URL from a secret as the README's examples pass it
    worker = harness.worker(app, None, env={**FAST_ENV,
                                            "CELERY_WORKER_STATEDB": f"redis://{SECRET}@127.0.0.1:{port}/0"})
    worker.start(wait_ready=False)
    assert worker.wait_exit(30) == (69 if server_state == "down" else 78), worker.log()
    line = one_critical_line(worker)
    assert f"redis://***@127.0.0.1:{port}/0" in line, line
    assert not secrets_in(worker.log()), worker.log()


def test_statedb_check_and_cli_errors_never_show_the_password(
    password_server: PrivateServer, cli_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    ok = run_cli(runner, cli_app, password_server.url, "check", "--worker", "w@h")
    assert ok.exit_code == 0, ok.output
    assert ":***@127.0.0.1" in ok.output
    as_json = run_cli(runner, cli_app, password_server.url, "check", "--worker", "w@h", "--json")
    assert as_json.exit_code == 0 and ":***@127.0.0.1" in as_json.output
    wrong = run_cli(runner, cli_app, f"redis://:wrong-{SECRET}@127.0.0.1:{password_server.port}/0",
                    "check", "--worker", "w@h")
    assert wrong.exit_code == 1 and "refused access" in wrong.output
    down = run_cli(runner, cli_app, f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", "workers")
    assert down.exit_code == 1 and "cannot reach Redis" in down.output
    malformed = run_cli(runner, cli_app, f"redis://:{SECRET}@127.0.0.1:port/0", "workers")
    assert malformed.exit_code == 1 and "malformed Redis URL" in malformed.output
    monkeypatch.setenv("REDIS_STATEDB_URL", password_server.url)  # the URL from a secret, not the command line
    from_env = run_cli(runner, cli_app, None, "check", "--worker", "w@h")
    assert from_env.exit_code == 0, from_env.output
    for result in (ok, as_json, wrong, down, malformed, from_env):
        assert not secrets_in(result.output), result.output


def full_text(exc: BaseException) -> str:
    """str, repr and the whole printed chain (causes included) of an exception."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def test_reprs_and_errors_never_show_the_password(password_server: PrivateServer, key_prefix: str) -> None:
    url = password_server.url
    config = StateDBConfig(url=url, key_prefix=key_prefix)
    persistence = WorkerStatePersistence(config, "w@h", revoked=LimitedSet(maxlen=10, expires=10),
                                         clock=LamportClock())
    persistence.boot()
    async_repository = AsyncStateRepository.open(config, "w@h")
    try:
        shown = [repr(config), str(config), config.safe_url, repr(persistence), repr(persistence.repository),
                 repr(persistence.repository.operations), repr(persistence.repository.client),
                 repr(persistence.repository.client.connection_pool), repr(persistence.writer.client),
                 repr(persistence.writer.client.connection_pool), repr(async_repository),
                 repr(async_repository.client)]
        assert not secrets_in("\n".join(shown)), shown
    finally:
        persistence.save()
        asyncio.run(async_repository.aclose())

    failures: list[BaseException] = []
    for bad_url, error in ((f"redis://:wrong-{SECRET}@127.0.0.1:{password_server.port}/0", AccessDeniedError),
                           (f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", RedisUnavailableError),
                           (f"redis://default:{SECRET}@no-such-host.invalid:6379/0", RedisUnavailableError)):
        repository = SyncStateRepository.open(StateDBConfig(url=bad_url, socket_connect_timeout=1), "w@h")
        with pytest.raises(error) as info:
            repository.ping()
        repository.close()
        failures.append(info.value)
    for bad_url in (f"redis://:{SECRET}@127.0.0.1:99999/0", f"redis://:{SECRET}@127.0.0.1:6379/x",
                    f"redis://:{SECRET}@h:1/0?socket_timeout=1", f"redis://:{SECRET}@h:1/0?max_connections=x",
                    f"redis://u:{SECRET}#/?@h:1/0"):
        with pytest.raises(ConfigurationError) as bad:
            SyncStateRepository.open(StateDBConfig(url=bad_url), "w@h")
        failures.append(bad.value)
    for failure in failures:
        assert not secrets_in(full_text(failure)), full_text(failure)
        assert "***" in str(failure)


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TLSFiles, TLSFiles]:
    """Our CA and server certificate, and an unrelated CA (for the wrong-CA case)."""
    if not openssl_available():
        pytest.skip("the openssl command is needed to make test certificates")
    root = tmp_path_factory.mktemp("tls")
    return make_tls_files(root / "ours"), make_tls_files(root / "other", ca_name="some-other-ca")


@pytest.fixture
def tls_server(tls_files: tuple[TLSFiles, TLSFiles]) -> Iterator[PrivateServer]:
    server = PrivateServer(tls=tls_files[0])
    try:
        server.start()
    except ServerExited as exc:
        why = [line.split("#", 1)[-1].strip() for line in str(exc).splitlines()
               if re.search(r"TLS support|connection type tls|not compiled|TLS is not supported", line, re.I)]
        server.close()
        if why:
            version = ".".join(map(str, server_version(server.kind)))
            pytest.skip(f"the {server.kind} server ({server_binary(server.kind)}, v{version}) is built without "
                        f"TLS support: {' '.join(why)}; CI runs this with redis-server")
        raise
    try:
        yield server
    finally:
        server.close()


@pytest.mark.e2e
def test_a_worker_over_tls_with_ca_verification(
    harness: WorkerHarness, tls_server: PrivateServer, state_prefix: str
) -> None:
    url = tls_server.url
    assert url.startswith("rediss://") and "ssl_cert_reqs=required" in url
    app = harness.app(install=True)
    worker = harness.worker(app, url, env={**FAST_ENV, "CELERY_REDIS_STATE_KEY_PREFIX": state_prefix}).start()
    client = tls_server.client()
    try:
        revoked = new_task_id()
        harness.revoke(worker, [revoked])
        assert client.zscore(revoked_key(state_prefix, worker.name), revoked) is not None
        worker.kill()
        worker.start()
        assert "redis-statedb: restored 1 revoked ids from rediss://127.0.0.1" in worker.log()
        assert_discarded(harness, worker, revoked)
        assert "Traceback" not in worker.all_logs()
    finally:
        client.close()


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["wrong-ca", "plain-to-tls-port"])
def test_tls_misconfiguration_stops_the_worker_with_one_line(
    harness: WorkerHarness, tls_server: PrivateServer, tls_files: tuple[TLSFiles, TLSFiles], case: str
) -> None:
    port = tls_server.port
    if case == "wrong-ca":
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files[1].ca_cert}&ssl_cert_reqs=required"
        fragment = "certificate verify failed"
    else:
        url, fragment = f"redis://127.0.0.1:{port}/0", "cannot reach Redis"
    app = harness.app(install=True)
    worker = harness.worker(app, url, env=FAST_ENV)
    worker.start(wait_ready=False)
    code = worker.wait_exit(30)
    line = one_critical_line(worker)
    assert code in (69, 78), line
    assert fragment in line, line


# -- least privilege: an ACL user limited to the prefix and the commands the library sends ----------

# What a worker sends: PING, ZADD, ZREVRANGEBYSCORE, ZREVRANGE, ZRANGEBYSCORE, ZCARD, ZCOUNT, ZMSCORE on
# the sorted sets; GET and EVAL (whose script calls GET and SET) on clock keys only; GETRANGE, GET, SET and
# EVAL on the fleet set's snapshot and its build lock only; TIME and INFO (keyless: the server's clock and
# eviction policy); plus HELLO (redis-py >= 6 speaks RESP3), SELECT (db other than 0) and CLIENT SETINFO
# (redis-py >= 5 on Redis >= 7.2 or Valkey: refused harmlessly, but it fills the ACL log).
WORKER_COMMANDS = ("+ping +hello +select +zadd +zrevrangebyscore +zrevrange +zrangebyscore +zcard +zcount +zmscore "
                   "+time +info")
CLOCK_COMMANDS = "+get +set +eval"
SNAPSHOT_COMMANDS = "+getrange +get +set +eval"
OPTIONAL_COMMANDS = "+client|setinfo"
# The admin CLI and APIs add reads, purges and restores over every set of the prefix.
ADMIN_COMMANDS = WORKER_COMMANDS + " +get +set +eval +scan +type +zrange +zscore +zrem +zremrangebyscore" \
                                  " +memory|usage"
ACL_PASSWORD = "acl-pw-1"


def _optional(client: redis.Redis) -> list[str]:
    try:
        client.execute_command("ACL", "DRYRUN", "default", "CLIENT", "SETINFO", "LIB-NAME", "x")
        return [OPTIONAL_COMMANDS]
    except redis.exceptions.ResponseError:
        return []  # Redis < 7.2: no CLIENT SETINFO (nor ACL DRYRUN)


def acl_rule(prefix: str, commands: str, client: redis.Redis) -> list[str]:
    """``ACL SETUSER`` arguments for a user limited to ``prefix``; CLIENT SETINFO where the server knows it."""
    return ["on", f">{ACL_PASSWORD}", "resetkeys", f"~{prefix}*", "resetchannels", "-@all", *commands.split(),
            *_optional(client)]


def worker_acl_rule(prefix: str, client: redis.Redis, clock_commands: str = CLOCK_COMMANDS) -> list[str]:
    """The README's worker rule: the sorted-set commands on the sorted sets only, a selector for the
    clock keys (GET, SET, EVAL) and one for the fleet set's snapshot and its lock (GETRANGE, GET, SET,
    EVAL), so a worker credential cannot change any other key's type."""
    keys = [f"~{prefix}*:revoked", f"~{prefix}*:stamps", f"~{prefix}shared:fleet-revoked",
            f"~{prefix}shared:fleet-stamps"]
    snapshot_keys = f"~{prefix}shared:fleet-revoked:snapshot ~{prefix}shared:fleet-revoked:snapshot-lock"
    return ["on", f">{ACL_PASSWORD}", "resetkeys", *keys, "resetchannels", "-@all", *WORKER_COMMANDS.split(),
            *_optional(client), f"(~{prefix}*:clock {clock_commands})", f"({snapshot_keys} {SNAPSHOT_COMMANDS})"]


def acl_log(client: redis.Redis) -> list[str]:
    entries: list[dict[str, Any]] = client.acl_log()
    return [f"{e.get('reason')} {e.get('object')} {e.get('username')}" for e in entries]


@pytest.mark.e2e
def test_a_worker_runs_as_a_least_privilege_acl_user(harness: WorkerHarness, state_prefix: str) -> None:
    server = PrivateServer().start()
    admin = server.client()
    try:
        rule = worker_acl_rule(state_prefix, admin)
        admin.execute_command("ACL", "SETUSER", "statedb", *rule)
        admin.execute_command("ACL", "LOG", "RESET")
        url = f"redis://statedb:{ACL_PASSWORD}@127.0.0.1:{server.port}/1"
        app = harness.app(install=True)
        env = {**FAST_ENV, "CELERY_REDIS_STATE_KEY_PREFIX": state_prefix, "CELERY_REDIS_STATE_CLOCK_INTERVAL": "0.5"}
        worker = harness.worker(app, url, env=env).start()
        revoked = new_task_id()
        harness.revoke(worker, [revoked])
        admin.select(1)
        assert admin.zscore(revoked_key(state_prefix, worker.name), revoked) is not None
        week_old = new_task_id()  # beyond the in-memory window: read by rank, confirmed with ZMSCORE
        admin.zadd(revoked_key(state_prefix, worker.name), {week_old: time.time() - 7 * 86400})
        worker.kill()
        worker.start()
        assert_discarded(harness, worker, revoked)
        assert_discarded(harness, worker, week_old)
        time.sleep(1.2)  # periodic clock saves (EVAL) run as the user too
        assert worker.terminate() == 0  # and the last one at shutdown
        assert int(admin.get(clock_key(state_prefix, worker.name)) or 0) >= 2
        assert "Traceback" not in worker.all_logs()
        assert acl_log(admin) == [], "the worker sent a command the rule does not allow"

        user = redis.Redis.from_url(url)
        try:  # the same user cannot touch anything outside the prefix, nor administer the server
            for forbidden in (lambda: user.set("not-ours:x", 1), user.flushdb, lambda: user.keys("*"),
                              lambda: user.config_get("*"), lambda: user.delete(revoked_key(state_prefix, "w@h"))):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    forbidden()
            # nor change the type of any key: SET only on clock keys, the sorted-set commands only on sets
            fleet, other = shared_key(state_prefix), revoked_key(state_prefix, "other@h")
            for forbidden in (lambda: user.set(fleet, "x"), lambda: user.set(other, "x"),
                              lambda: user.set(f"{state_prefix}shared:fleet-stamps", "x"),
                              lambda: user.zadd(clock_key(state_prefix, "other@h"), {"a": 1}),
                              lambda: user.eval("return redis.call('SET', KEYS[1], 'x')", 1, fleet)):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    forbidden()
            with pytest.raises(redis.exceptions.ResponseError, match="script"):  # a script's own calls are checked
                user.eval("return redis.call('SET', ARGV[1], 'x')", 1, clock_key(state_prefix, "w@h"), fleet)
        finally:
            user.close()
        assert not admin.keys("not-ours:*")
        assert admin.type(shared_key(state_prefix)) in (b"none", b"zset")
    finally:
        admin.close()
        server.close()


@pytest.fixture
def acl_server(state_prefix: str) -> Iterator[tuple[PrivateServer, str]]:
    """A private server with the worker's ACL user for ``state_prefix``; yields it and the user's URL."""
    server = PrivateServer().start()
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "statedb", *worker_acl_rule(state_prefix, admin))
        yield server, f"redis://statedb:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
    finally:
        admin.close()
        server.close()


def test_keys_outside_the_acl_are_access_denied(acl_server: tuple[PrivateServer, str]) -> None:
    _, url = acl_server
    repository = SyncStateRepository.open(StateDBConfig(url=url, key_prefix="not-ours:"), "w@h")
    try:
        with pytest.raises(AccessDeniedError, match="not-ours:w@h:revoked"):
            repository.add_revoked(["x"])
        with pytest.raises(AccessDeniedError, match="not-ours:w@h:clock"):
            repository.read_clock()
    finally:
        repository.close()


def test_a_command_the_acl_refuses_is_access_denied(acl_server: tuple[PrivateServer, str], state_prefix: str) -> None:
    server, url = acl_server
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "statedb", "-ping")
    finally:
        admin.close()
    repository = SyncStateRepository.open(StateDBConfig(url=url, key_prefix=state_prefix), "w@h")
    try:
        with pytest.raises(AccessDeniedError, match="ping"):
            repository.ping()
    finally:
        repository.close()


@pytest.mark.e2e
def test_a_worker_outside_its_acl_prefix_stops_as_a_configuration_error(
    harness: WorkerHarness, acl_server: tuple[PrivateServer, str]
) -> None:
    _, url = acl_server
    app = harness.app(install=True)
    worker = harness.worker(app, url, env={**FAST_ENV, "CELERY_REDIS_STATE_KEY_PREFIX": "not-ours:"})
    worker.start(wait_ready=False)
    code = worker.wait_exit(30)
    line = one_critical_line(worker)
    assert "not-ours:" in line
    assert code == 78, line


@pytest.mark.e2e
def test_a_worker_whose_acl_lacks_set_stops_as_a_configuration_error(
    harness: WorkerHarness, state_prefix: str
) -> None:
    """NOPERM inside the clock's script comes back as a script error: still refused access, exit 78."""
    server = PrivateServer().start()
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "statedb", *worker_acl_rule(state_prefix, admin, "+get +eval"))
        url = f"redis://statedb:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
        app = harness.app(install=True)
        worker = harness.worker(app, url, env={**FAST_ENV, "CELERY_REDIS_STATE_KEY_PREFIX": state_prefix})
        worker.start(wait_ready=False)
        code = worker.wait_exit(30)
        line = one_critical_line(worker)
        assert code == 78, line
        assert "refused access" in line and repr(clock_key(state_prefix, worker.name)) in line, line
        assert ACL_PASSWORD not in worker.log()
    finally:
        admin.close()
        server.close()


def test_the_admin_apis_run_as_an_admin_acl_user(key_prefix: str) -> None:
    server = PrivateServer().start()
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "statedb-admin", *acl_rule(key_prefix, ADMIN_COMMANDS, admin))
        admin.execute_command("ACL", "LOG", "RESET")
        admin.zadd(revoked_key(key_prefix, "a@h"), {"old": 1.0, "new": 4e9})
        admin.set(clock_key(key_prefix, "a@h"), 3)
        url = f"redis://statedb-admin:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"

        async def operate() -> None:
            assert await async_admin.list_workers(url, key_prefix=key_prefix) == ["a@h"]
            states = await async_admin.inspect_workers(url, key_prefix=key_prefix)
            assert states[0].memory_bytes is not None
            assert [r.worker for r in await async_admin.where_revoked(url, "new", key_prefix=key_prefix)] == ["a@h"]
            assert await async_admin.revoke(url, ["fleet-1"], key_prefix=key_prefix) == 1
            assert await async_admin.purge_old_revoked(url, older_than="1d", dry_run=True, key_prefix=key_prefix) == 1
            assert await async_admin.purge_old_revoked(url, older_than="1d", key_prefix=key_prefix) == 1
            assert await async_admin.restore(url, ["new", "fleet-1"], key_prefix=key_prefix) == 2

        asyncio.run(operate())
        assert acl_log(admin) == []
    finally:
        admin.close()
        server.close()
