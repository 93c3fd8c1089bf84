"""``unix://`` URLs: a real ``redis-server --unixsocket`` at a path holding a space.

Through a real worker, the ``celery statedb`` CLI, and the async API, with the README's
quick-start form (``unix:///path?db=0``), the path written with a raw space and with ``%20``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import redis

import statedb
from celery_redis_statedb.local_servers import PrivateServer
from statedb import StateDBConfig
from statedb.client import client_options
from tests.cli_runner import cli_app, run_cli
from tests.keys import revoked_key, shared_key
from tests.workers import WorkerHarness, assert_discarded, new_task_id


@dataclass(frozen=True)
class UnixServer:
    server: PrivateServer
    socket: Path

    @property
    def raw_url(self) -> str:
        """The README's form, the path as it is (a space in it)."""
        return f"unix://{self.socket}?db=0"

    @property
    def encoded_url(self) -> str:
        return f"unix://{quote(str(self.socket))}?db=0"

    def client(self) -> redis.Redis:
        return self.server.client()


@pytest.fixture(scope="module")
def unix_server() -> Iterator[UnixServer]:
    # Short (a socket path is limited to about 104 bytes) and holding a space.
    directory = Path(tempfile.mkdtemp(prefix="statedb sock "))
    socket = directory / "redis.sock"
    server = PrivateServer(extra_args=("--unixsocket", str(socket), "--unixsocketperm", "700")).start()
    try:
        assert socket.exists()
        yield UnixServer(server, socket)
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_client_options_leave_tcp_only_options_out_for_unix_sockets() -> None:
    assert "socket_keepalive" not in client_options(StateDBConfig(url="unix:///tmp/r.sock?db=0"))
    assert "socket_keepalive" not in client_options(StateDBConfig(url="UNIX:///tmp/r.sock"))
    assert client_options(StateDBConfig(url="redis://h:6379/0"))["socket_keepalive"] is True


@pytest.mark.e2e
def test_a_worker_on_a_unix_socket_with_a_space_in_its_path(
    harness: WorkerHarness, unix_server: UnixServer, state_prefix: str
) -> None:
    client = unix_server.client()
    try:
        app = harness.app(install=False, conf={"redis_state_key_prefix": state_prefix})
        worker = harness.worker(app, unix_server.raw_url).start()
        assert "restored 0 revoked ids from unix://" in worker.log(), worker.log()
        revoked = new_task_id()
        harness.revoke(worker, [revoked])
        assert client.zscore(revoked_key(state_prefix, worker.name), revoked) is not None
        worker.kill()
        worker.start()
        assert_discarded(harness, worker, revoked)
        assert "Traceback" not in worker.all_logs()
    finally:
        client.close()


@pytest.mark.parametrize("form", ["raw", "encoded"])
def test_the_cli_on_a_unix_socket(tmp_path: Path, unix_server: UnixServer, state_prefix: str,
                                  redis_url: str, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = cli_app(tmp_path, redis_url, state_prefix, monkeypatch)
    url = unix_server.raw_url if form == "raw" else unix_server.encoded_url
    client = unix_server.client()
    try:
        client.zadd(f"{state_prefix}w@h:revoked", {"t-1": 1000.0})
        check = run_cli(cli, url, "check", "--worker", "w@h")
        assert check.exit_code == 0, check.output
        assert "revoked_count: 1" in check.output and "ping_ms" in check.output
        listed = run_cli(cli, url, "ls", "w@h")
        assert listed.exit_code == 0 and "t-1" in listed.output, listed.output
    finally:
        client.delete(f"{state_prefix}w@h:revoked")
        client.close()


@pytest.mark.parametrize("form", ["raw", "encoded"])
def test_the_async_api_on_a_unix_socket(unix_server: UnixServer, state_prefix: str, form: str) -> None:
    url = unix_server.raw_url if form == "raw" else unix_server.encoded_url
    task_id = new_task_id()

    async def scenario() -> None:
        assert await statedb.revoke(url, [task_id], key_prefix=state_prefix) == 1
        places = await statedb.where_revoked(url, task_id, key_prefix=state_prefix)
        assert [place.worker for place in places] == ["fleet"]
        states = await statedb.inspect_workers(url, key_prefix=state_prefix)
        assert [state.revoked_count for state in states] == [1]
        async with statedb.AsyncStateRepository.open(
            StateDBConfig(url=url, key_prefix=state_prefix), "w@h"
        ) as repository:
            assert await repository.ping()
        assert await statedb.restore(url, [task_id], key_prefix=state_prefix) == 1

    client = unix_server.client()
    try:
        anyio.run(scenario)
        assert client.zscore(shared_key(state_prefix), task_id) is None
    finally:
        client.delete(shared_key(state_prefix))
        client.close()
