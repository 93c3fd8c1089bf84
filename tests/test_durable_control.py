"""DurableControl: every revoke a producer sends through Celery's API is in Redis before its broadcast.

Against the real server of the run; each test's keys live under its ``key_prefix``.
Celery's own ``Control.broadcast`` is replaced by a spy that records its arguments and
reads Redis at the moment it is called, so "stored before broadcast" is checked
directly; one test also broadcasts for real (in-memory broker).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import redis
from celery import Celery
from celery.app.control import Control
from celery.result import AsyncResult, GroupResult

from celery_redis_statedb import admin, durable_control, install_redis_statedb, revoke_tasks
from celery_redis_statedb.durable_control import (
    DEFAULT_CONTROL,
    DURABLE_CONTROL,
    DurableControl,
    DurableControlWarning,
    RevokePolicy,
    revoke_policy,
    use_durable_control_by_default,
)
from celery_redis_statedb.local_servers import free_port
from celery_redis_statedb.settings import resolve_config
from statedb.errors import ConfigurationError, InvalidInputError, RedisUnavailableError, StateDBError
from tests.keys import revoked_key, shared_key, shared_stamps_key, stamp, stamps_key

SENT = object()  # what the spy broadcast returns: the caller must get it back unchanged
NO_REPLIES: list[Any] = []  # what it returns for revoke_by_stamped_headers (Celery iterates over it)


class BroadcastSpy:
    """Stands in for Celery's ``Control.broadcast``; ``probe`` reads Redis at call time."""

    def __init__(self, probe: Callable[[], Any] = lambda: None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.seen: list[Any] = []
        self.probe = probe
        self.replies: dict[str, Any] = {}

    def __call__(self, control: Control, command: str, arguments: Any = None, destination: Any = None,
                 connection: Any = None, reply: bool = False, timeout: float = 1.0, limit: Any = None,
                 callback: Any = None, channel: Any = None, pattern: Any = None, matcher: Any = None,
                 **extra: Any) -> Any:
        self.seen.append(self.probe())
        self.calls.append({"command": command, "arguments": arguments, "destination": destination,
                           "connection": connection, "reply": reply, "timeout": timeout, "limit": limit,
                           "callback": callback, "channel": channel, "pattern": pattern, "matcher": matcher,
                           **extra})
        return self.replies.get(command, NO_REPLIES if command == "revoke_by_stamped_headers" else SENT)

    @property
    def commands(self) -> list[str]:
        return [call["command"] for call in self.calls]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CELERY_", "REDIS_STATEDB_")):
            monkeypatch.delenv(name)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> BroadcastSpy:
    broadcast = BroadcastSpy()

    def spied(self: Control, *args: Any, **kwargs: Any) -> Any:  # a function, so it binds like the method
        return broadcast(self, *args, **kwargs)

    monkeypatch.setattr(Control, "broadcast", spied)
    return broadcast


@pytest.fixture
def no_redis(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any attempt to open a statedb client fails the test (and is recorded)."""
    attempts: list[str] = []

    def refuse(config: Any, **_: Any) -> Any:
        attempts.append(config.safe_url)
        raise AssertionError(f"a Redis client was opened for {config.safe_url}")

    monkeypatch.setattr(durable_control, "open_sync_client", refuse)
    monkeypatch.setattr(admin, "app_config", lambda *a, **k: pytest.fail("the statedb config was resolved"))
    return attempts


def make_app(url: str | None, prefix: str, *, install: bool = True, broker: str = "memory://",
             control: str = DEFAULT_CONTROL, **conf: object) -> Celery:
    """Celery's default control class unless told (whether the entry point was imported or not)."""
    app = Celery("durable-test", broker=broker, set_as_current=False, control=control)
    app.conf.update(redis_state_key_prefix=prefix, **conf)
    if url is not None:
        app.conf.worker_state_db = url
    if install:
        install_redis_statedb(app)
    return app


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    application = make_app(redis_url, key_prefix)
    yield application
    application.control.close_statedb()
    application.close()


def dead_url(password: str = "s3cret-pass") -> str:
    return f"redis://:{password}@127.0.0.1:{free_port()}/0"


# -- every API stores first, then broadcasts --------------------------------------


def _revoke_apis() -> list[tuple[str, Callable[[Celery, list[str]], Any], str]]:
    def group_revoke(app: Celery, ids: list[str]) -> Any:
        return GroupResult("g", [AsyncResult(i, app=app) for i in ids], app=app).revoke()

    return [
        ("control.revoke", lambda app, ids: app.control.revoke(ids[0] if len(ids) == 1 else ids), "revoke"),
        ("AsyncResult.revoke", lambda app, ids: AsyncResult(ids[0], app=app).revoke(), "revoke"),
        ("GroupResult.revoke", group_revoke, "revoke"),
        ("control.terminate", lambda app, ids: app.control.terminate(ids, signal="KILL"), "revoke"),
        ("broadcast revoke", lambda app, ids: app.control.broadcast(
            "revoke", arguments={"task_id": ids}, reply=True, timeout=0.1), "revoke"),
        ("broadcast terminate (celery control terminate)", lambda app, ids: app.control.broadcast(
            "terminate", arguments={"signal": "KILL", "task_id": ids}), "terminate"),
    ]


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize(("api", "call", "command"), _revoke_apis(), ids=[a[0] for a in _revoke_apis()])
def test_each_revoke_api_stores_in_the_fleet_set_before_broadcasting(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str, api: str,
    call: Callable[[Celery, list[str]], Any], command: str, count: int,
) -> None:
    if api == "AsyncResult.revoke" and count > 1:
        pytest.skip("one id per AsyncResult")
    ids = [f"{api}-{i}-{time.time()}" for i in range(count)]
    key = shared_key(key_prefix)
    spy.probe = lambda: redis_client.zmscore(key, ids)
    before = time.time()

    call(app, ids)

    assert spy.commands == [command]
    assert None not in spy.seen[0], f"not all of {ids} were in {key} when the broadcast went out"
    assert all(before - 1 <= score <= time.time() + 1 for score in spy.seen[0])
    sent = spy.calls[0]["arguments"]["task_id"]
    assert (sent if isinstance(sent, list) else [sent]) == ids  # Celery's own arguments, untouched


def test_return_value_and_every_celery_argument_pass_through(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    def callback(reply: Any) -> None: ...

    connection, channel = object(), object()
    result = app.control.revoke("t1", destination=["w1@h"], terminate=True, signal="KILL", reply=True,
                                timeout=2.5, limit=3, callback=callback, connection=connection, channel=channel,
                                pattern="w*", matcher="glob", custom_kwarg="kept")
    assert result is SENT
    assert spy.calls == [{
        "command": "revoke", "arguments": {"task_id": "t1", "terminate": True, "signal": "KILL"},
        "destination": ["w1@h"], "connection": connection, "reply": True, "timeout": 2.5, "limit": 3,
        "callback": callback, "channel": channel, "pattern": "w*", "matcher": "glob", "custom_kwarg": "kept",
    }]
    assert redis_client.zscore(revoked_key(key_prefix, "w1@h"), "t1") is not None


def test_extra_keyword_arguments_of_broadcast_are_read_like_celery_reads_them(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Control.broadcast merges extra keywords into the command's arguments: a task_id there counts."""
    assert app.control.broadcast("revoke", task_id=["x1", "x2"]) is SENT
    assert redis_client.zmscore(shared_key(key_prefix), ["x1", "x2"])[1] is not None
    assert spy.calls[0]["task_id"] == ["x1", "x2"]


# -- stamped headers -------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "expected"), [
    ({"mystamp": "v1", "batch": ["a", "b"]}, [("mystamp", "v1"), ("batch", "a"), ("batch", "b")]),
    (["mystamp=v1", "batch=a"], [("mystamp", "v1"), ("batch", "a")]),
], ids=["dict", "list"])
def test_revoke_by_stamped_headers_stores_the_stamps_before_broadcasting(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str, headers: Any,
    expected: list[tuple[str, str]],
) -> None:
    key = shared_stamps_key(key_prefix)
    members = [stamp(h, v) for h, v in expected]
    spy.probe = lambda: redis_client.zmscore(key, members)

    assert app.control.revoke_by_stamped_headers(headers, terminate=True) is NO_REPLIES

    assert spy.commands == ["revoke_by_stamped_headers"]
    assert None not in spy.seen[0]
    assert redis_client.zcard(key) == len(expected)
    assert spy.calls[0]["arguments"] == {"headers": headers, "terminate": True, "signal": "SIGTERM"}
    assert not redis_client.exists(shared_key(key_prefix))


def test_stamped_revoke_then_celery_revokes_the_ids_workers_reported(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Control.revoke_by_stamped_headers revokes by id what the workers matched: stored too."""
    spy.replies["revoke_by_stamped_headers"] = [{"w@h": {"ok": {"matched-id"}}}]
    app.control.revoke_by_stamped_headers({"k": "v"}, reply=True)
    assert spy.commands == ["revoke_by_stamped_headers", "revoke"]
    assert redis_client.zscore(shared_key(key_prefix), "matched-id") is not None


def test_async_result_revoke_by_stamped_headers(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    AsyncResult("any", app=app).revoke_by_stamped_headers({"k": "v"})
    assert redis_client.zscore(shared_stamps_key(key_prefix), stamp("k", "v")) is not None


# -- where: the fleet set, or each destination's own -----------------------------------


def test_a_revoke_aimed_at_workers_stays_aimed(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    app.control.revoke(["a1"], destination=["w1@h", "w2@h"])
    app.control.revoke_by_stamped_headers({"k": "v"}, destination=["w1@h"])
    for worker in ("w1@h", "w2@h"):
        assert redis_client.zscore(revoked_key(key_prefix, worker), "a1") is not None
    assert redis_client.zscore(stamps_key(key_prefix, "w1@h"), stamp("k", "v")) is not None
    assert not redis_client.exists(shared_key(key_prefix), shared_stamps_key(key_prefix),
                                   stamps_key(key_prefix, "w2@h"))


def test_an_aimed_revoke_in_shared_scope_goes_to_the_fleet_set(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, redis_client: redis.Redis
) -> None:
    app = make_app(redis_url, key_prefix, redis_state_scope="shared")
    app.control.revoke(["s1"], destination=["w1@h"])
    app.control.revoke_by_stamped_headers({"k": "v"}, destination=["w1@h"])
    assert redis_client.zscore(shared_key(key_prefix), "s1") is not None
    assert redis_client.zscore(shared_stamps_key(key_prefix), stamp("k", "v")) is not None
    assert not redis_client.exists(revoked_key(key_prefix, "w1@h"), stamps_key(key_prefix, "w1@h"))


def test_a_pattern_matched_revoke_goes_to_the_fleet_set(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    """The hostnames a pattern matches are not known in advance: every worker's boot honours it."""
    app.control.revoke("pat-1", pattern="worker-*", matcher="glob")
    assert redis_client.zscore(shared_key(key_prefix), "pat-1") is not None
    assert spy.calls[0]["pattern"] == "worker-*" and spy.calls[0]["matcher"] == "glob"


def test_empty_destination_means_every_worker(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    app.control.revoke("e1", destination=[])
    assert redis_client.zscore(shared_key(key_prefix), "e1") is not None


def test_the_first_revocation_time_is_kept(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    app.control.revoke("r1")
    first = redis_client.zscore(shared_key(key_prefix), "r1")
    time.sleep(0.01)
    app.control.revoke("r1")
    assert redis_client.zscore(shared_key(key_prefix), "r1") == first


def test_a_real_broadcast_goes_out_after_the_write(
    app: Celery, redis_client: redis.Redis, key_prefix: str
) -> None:
    """No spy: Celery's own broadcast on the in-memory broker, nothing replies."""
    assert app.control.revoke("real-1", reply=True, timeout=0.05) == []
    assert redis_client.zscore(shared_key(key_prefix), "real-1") is not None


def test_a_destination_kombu_refuses_stores_nothing(app: Celery, redis_client: redis.Redis, key_prefix: str) -> None:
    with pytest.raises(ValueError, match="destination must be a list/tuple"):
        app.control.revoke("d1", destination="w1@h")
    assert not redis_client.exists(shared_key(key_prefix), revoked_key(key_prefix, "w1@h"))


# -- Redis unavailable ----------------------------------------------------------------


def test_redis_down_fails_with_the_masked_url_and_nothing_is_broadcast(key_prefix: str, spy: BroadcastSpy) -> None:
    url = dead_url()
    app = make_app(url, key_prefix)
    started = time.monotonic()
    with pytest.raises(RedisUnavailableError) as raised:
        app.control.revoke("down-1")
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert isinstance(raised.value, StateDBError)
    assert "NOT made durable and NOT broadcast" in message
    assert url.replace("s3cret-pass", "***") in message
    assert "s3cret-pass" not in message and "s3cret-pass" not in repr(raised.value)
    assert spy.calls == []
    with pytest.raises(RedisUnavailableError):
        app.control.revoke_by_stamped_headers({"k": "v"})
    with pytest.raises(RedisUnavailableError):
        app.control.broadcast("revoke", arguments={"task_id": ["down-2"]})
    assert spy.calls == []


@pytest.mark.parametrize("where", ["conf", "env"])
def test_broadcast_policy_broadcasts_anyway_with_a_warning(
    key_prefix: str, spy: BroadcastSpy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    url = dead_url()
    conf: dict[str, object] = {}
    if where == "conf":
        conf["redis_state_revoke_on_unavailable"] = "broadcast"
    else:
        monkeypatch.setenv("CELERY_REDIS_STATE_REVOKE_ON_UNAVAILABLE", " Broadcast ")
    app = make_app(url, key_prefix, **conf)
    with caplog.at_level(logging.WARNING, logger="celery_redis_statedb.durable_control"):
        assert app.control.revoke("p1", terminate=True) is SENT
    assert spy.commands == ["revoke"]
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    assert "NOT made durable" in warnings_logged[0] and "redis://:***@127.0.0.1" in warnings_logged[0]
    assert "s3cret-pass" not in caplog.text


@pytest.mark.parametrize("where", ["conf", "env"])
@pytest.mark.parametrize("value", ["degrade", "yes", ""])
def test_bad_policy_values_are_configuration_errors(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, monkeypatch: pytest.MonkeyPatch, where: str, value: str,
) -> None:
    if where == "env" and not value:
        pytest.skip("an empty variable is unset")
    conf: dict[str, object] = {}
    if where == "conf":
        conf["redis_state_revoke_on_unavailable"] = value
    else:
        monkeypatch.setenv("CELERY_REDIS_STATE_REVOKE_ON_UNAVAILABLE", value)
    app = make_app(redis_url, key_prefix, **conf)
    source = ("app.conf.redis_state_revoke_on_unavailable" if where == "conf"
              else "environment variable CELERY_REDIS_STATE_REVOKE_ON_UNAVAILABLE")
    with pytest.raises(ConfigurationError, match=rf"{source}=.*'fail' or 'broadcast'.*NOT broadcast"):
        app.control.revoke("bad-policy")
    assert spy.calls == []


def test_policy_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Celery("p", set_as_current=False)
    assert revoke_policy(app) is RevokePolicy.FAIL
    monkeypatch.setenv("CELERY_REDIS_STATE_REVOKE_ON_UNAVAILABLE", "broadcast")
    assert revoke_policy(app) is RevokePolicy.BROADCAST
    app.conf.redis_state_revoke_on_unavailable = "fail"  # app.conf wins over the environment
    assert revoke_policy(app) is RevokePolicy.FAIL


def test_the_producer_setting_does_not_disturb_the_worker_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers and producers often share one environment."""
    env = {"CELERY_REDIS_STATE_REVOKE_ON_UNAVAILABLE": "broadcast"}
    assert resolve_config("redis://localhost:6379/0", env=env).scope.value == "worker"


def test_bad_settings_and_bad_ids_fail_before_anything_is_broadcast(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, redis_client: redis.Redis
) -> None:
    app = make_app(redis_url, key_prefix, redis_state_scope="galaxy")
    with pytest.raises(ConfigurationError, match=r"scope.*NOT broadcast"):
        app.control.revoke("x")
    app = make_app(redis_url, key_prefix)
    with pytest.raises(InvalidInputError, match="NOT broadcast"):
        app.control.revoke(["fine", 42])
    with pytest.raises(InvalidInputError, match="NOT broadcast"):
        app.control.revoke_by_stamped_headers(["no-equals-sign"])
    with pytest.raises(InvalidInputError, match="NOT broadcast"):
        app.control.revoke("x", destination=["bad\nname"])
    assert spy.calls == []
    assert not redis_client.exists(shared_key(key_prefix))


# -- no URL, and every other path: no Redis at all ---------------------------------------


def test_no_url_is_plain_celery(key_prefix: str, spy: BroadcastSpy, no_redis: list[str]) -> None:
    app = make_app(None, key_prefix, install=False, broker="redis://127.0.0.1:1/0")
    app.control.__class__ = DurableControl  # as the entry point makes it, with no statedb URL
    assert app.control.revoke("n1") is SENT
    assert app.control.revoke_by_stamped_headers({"k": "v"}) is NO_REPLIES
    assert no_redis == []


def test_without_install_the_broker_is_not_a_statedb_url(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, redis_client: redis.Redis
) -> None:
    app = make_app(None, key_prefix, install=False, broker=redis_url, control=DURABLE_CONTROL)
    app.control.revoke("b1")
    assert not redis_client.exists(shared_key(key_prefix))
    install_redis_statedb(app)  # with install, a Redis broker is the statedb's fallback
    app.control.revoke("b2")
    assert redis_client.zscore(shared_key(key_prefix), "b2") is not None
    app.control.close_statedb()


@pytest.mark.parametrize("variable", ["CELERY_WORKER_STATEDB", "REDIS_STATEDB_URL"])
def test_without_install_an_explicit_url_in_the_environment_counts(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch, variable: str,
) -> None:
    monkeypatch.setenv(variable, redis_url)
    app = Celery("env-url", broker="memory://", set_as_current=False, control=DURABLE_CONTROL)
    app.conf.redis_state_key_prefix = key_prefix
    app.control.revoke("v1")
    assert redis_client.zscore(shared_key(key_prefix), "v1") is not None
    assert admin.statedb_url(app) == redis_url
    app.control.close_statedb()


def test_a_file_statedb_path_is_not_a_url(key_prefix: str, spy: BroadcastSpy, no_redis: list[str]) -> None:
    app = make_app("/var/run/celery/worker.db", key_prefix, install=False, control=DURABLE_CONTROL)
    app.control.revoke("f1")
    assert spy.commands == ["revoke"]


def test_sending_tasks_and_other_commands_never_touch_redis(
    key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statedb URL is configured, but only revokes may open the client."""
    opened: list[str] = []
    monkeypatch.setattr(durable_control, "open_sync_client",
                        lambda config, **_: opened.append(config.safe_url) or pytest.fail("client opened"))
    app = make_app(dead_url(), key_prefix)

    @app.task(name="durable.add")
    def add(x: int, y: int) -> int:
        return x + y

    add.apply_async((1, 2), task_id="t-apply")
    add.delay(1, 2)
    app.send_task("durable.add", args=(1, 2))
    assert app.control.ping(timeout=0.01) == []
    assert app.control.inspect(timeout=0.01).stats() is None
    app.control.rate_limit("durable.add", "1/s")
    app.control.broadcast("shutdown", destination=["nobody@nowhere"])
    app.control.broadcast(admin.RESTORE_COMMAND, arguments={"task_id": ["t"]})
    assert opened == []


async def test_inside_a_running_event_loop(app: Celery, spy: BroadcastSpy, redis_client: redis.Redis,
                                           key_prefix: str) -> None:
    """Flower and FastAPI call revoke from inside an event loop: the sync client works there."""
    assert app.control.revoke("loop-1") is SENT
    assert redis_client.zscore(shared_key(key_prefix), "loop-1") is not None


# -- the client: once per control object, again after a fork -----------------------------


def test_one_client_per_process(app: Celery, spy: BroadcastSpy, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[object] = []
    real = durable_control.open_sync_client

    def counting(config: Any, **kwargs: Any) -> Any:
        client = real(config, **kwargs)
        opened.append(client)
        return client

    monkeypatch.setattr(durable_control, "open_sync_client", counting)
    for i in range(3):
        app.control.revoke(f"c{i}")
    assert len(opened) == 1
    real_pid = os.getpid()
    monkeypatch.setattr(durable_control.os, "getpid", lambda: real_pid + 1)  # as in a forked child
    app.control.revoke("c-child")
    assert len(opened) == 2
    assert opened[0] is not opened[1]
    monkeypatch.setattr(durable_control.os, "getpid", lambda: real_pid)
    for client in opened:
        client.close()  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_client(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str
) -> None:
    app.control.revoke("parent")
    clients = app.control._statedb_clients
    assert clients is not None
    parent_client = clients.client
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 2
        try:
            app.control.revoke("child")
            child = app.control._statedb_clients
            code = 0 if child is not None and child.client is not parent_client else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_client.zscore(shared_key(key_prefix), "child") is not None
    app.control.revoke("parent-again")  # the parent's client still works
    assert app.control._statedb_clients is clients and clients.client is parent_client


# -- install, the entry point, custom control classes -------------------------------------


def test_install_after_app_control_was_built_keeps_the_same_object(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, redis_client: redis.Redis
) -> None:
    app = make_app(redis_url, key_prefix, install=False)
    built = app.control
    assert type(built) is Control
    install_redis_statedb(app)
    install_redis_statedb(app)  # idempotent
    assert app.control is built and isinstance(built, DurableControl)
    assert app.control_cls == DURABLE_CONTROL
    assert built.mailbox is not None
    built.revoke("late-1")
    assert redis_client.zscore(shared_key(key_prefix), "late-1") is not None
    built.close_statedb()


class AuditedControl(Control):  # type: ignore[misc]
    audit: ClassVar[list[str]] = []

    def revoke(self, task_id: Any, *args: Any, **kwargs: Any) -> Any:
        self.audit.append(task_id)
        return super().revoke(task_id, *args, **kwargs)


@pytest.mark.parametrize("built", [False, True], ids=["lazy", "built"])
def test_a_custom_control_subclass_is_composed_over(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, redis_client: redis.Redis, built: bool
) -> None:
    app = Celery("custom", broker="memory://", set_as_current=False, control=AuditedControl)
    app.conf.update(redis_state_key_prefix=key_prefix, worker_state_db=redis_url)
    if built:
        assert type(app.control) is AuditedControl
    install_redis_statedb(app)
    control = app.control
    assert isinstance(control, DurableControl) and isinstance(control, AuditedControl)
    control.revoke("custom-1")
    assert "custom-1" in AuditedControl.audit  # its own override still runs
    assert redis_client.zscore(shared_key(key_prefix), "custom-1") is not None
    control.close_statedb()


def test_a_control_class_that_is_not_a_control_is_left_with_a_warning(key_prefix: str) -> None:
    class Duck:
        def __init__(self, app: Celery) -> None:
            self.app = app

    app = Celery("duck", broker="memory://", set_as_current=False, control=Duck)
    with pytest.warns(DurableControlWarning, match="NOT stored in Redis"):
        install_redis_statedb(app)
    assert type(app.control) is Duck


def test_the_entry_point_makes_new_default_apps_durable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Celery, "control_cls", "celery.app.control:Control")
    before = Celery("before", set_as_current=False)
    use_durable_control_by_default()
    use_durable_control_by_default()
    assert Celery.control_cls == DURABLE_CONTROL
    assert type(Celery("after", set_as_current=False).control) is DurableControl
    assert type(before.control) is Control  # created earlier: left alone
    assert type(Celery("custom", set_as_current=False, control=AuditedControl).control) is AuditedControl


def test_the_entry_point_leaves_a_changed_default_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Celery, "control_cls", "myproject.control:MyControl")
    use_durable_control_by_default()
    assert Celery.control_cls == "myproject.control:MyControl"


def test_importing_the_entry_point_is_what_does_it() -> None:
    import subprocess
    import sys

    code = ("import celery_redis_statedb.cli; from celery import Celery; "
            "print(type(Celery('x', set_as_current=False).control).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "DurableControl"


# -- admin.revoke_tasks writes once ----------------------------------------------------------


def test_revoke_tasks_stores_once_and_broadcasts(
    app: Celery, spy: BroadcastSpy, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from statedb.admin import StateAdmin

    writes: list[object] = []
    real, real_admin = durable_control.run_operations, StateAdmin.revoke

    def counting(client: Any, operations: Any, target: str) -> int:
        writes.append(len(operations))
        return real(client, operations, target)

    async def counting_admin(admin: StateAdmin, *args: Any, **kwargs: Any) -> Any:
        writes.append("admin")
        return await real_admin(admin, *args, **kwargs)

    monkeypatch.setattr(durable_control, "run_operations", counting)
    monkeypatch.setattr(StateAdmin, "revoke", counting_admin)
    key = shared_key(key_prefix)
    spy.probe = lambda: redis_client.zscore(key, "rt-1")
    assert revoke_tasks(app, ["rt-1", "rt-2"], terminate=True, signal="KILL") == 2
    assert writes == ["admin"]  # stored by revoke_tasks; its broadcast stores nothing again
    assert spy.commands == ["revoke"] and spy.seen[0] is not None
    assert spy.calls[0]["arguments"] == {"task_id": ["rt-1", "rt-2"], "terminate": True, "signal": "KILL"}
    app.control.revoke("after")  # the next revoke is stored again as usual
    assert writes == ["admin", 1]


def test_revoke_tasks_with_redis_down_broadcasts_nothing(key_prefix: str, spy: BroadcastSpy) -> None:
    app = make_app(dead_url(), key_prefix)
    with pytest.raises(RedisUnavailableError):
        revoke_tasks(app, ["x"])
    assert spy.calls == []


def test_a_producer_with_a_slow_clock_stores_the_servers_time(
    redis_url: str, key_prefix: str, spy: BroadcastSpy, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flower or `celery control revoke` on a host 4 h behind: the score is the Redis server's time."""
    import celery_redis_statedb.durable_control as module

    real = time.time
    monkeypatch.setattr(module.time, "time", lambda: real() - 4 * 3600)
    app = make_app(redis_url, key_prefix)
    app.control.revoke("skewed-1")
    monkeypatch.setattr(module.time, "time", real)
    seconds, micros = redis_client.time()
    score = redis_client.zscore(f"{key_prefix}shared:fleet-revoked", "skewed-1")
    assert score is not None and abs(score - (seconds + micros / 1e6)) < 5
