"""Revokes sent through Celery's own API are written to Redis before they are broadcast.

:class:`DurableControl` is a :class:`celery.app.control.Control` (Celery's extension
point: ``Celery(control=...)`` / ``app.control_cls``). Every revoke a producer sends
ends in :meth:`~celery.app.control.Control.broadcast`: ``app.control.revoke``,
``terminate``, ``revoke_by_stamped_headers``, ``AsyncResult.revoke``,
``GroupResult.revoke``, and ``celery control revoke`` (which calls ``broadcast``
directly). For the ``revoke``, ``terminate`` and ``revoke_by_stamped_headers``
commands the ids (or stamped headers) are first stored where a booting worker reads
them, then the command is broadcast exactly as Celery does, with the same arguments and
return value. No other command (and nothing in ``apply_async``) touches Redis.

Where it is stored: a revoke for every worker goes to the fleet sets
(``<prefix>shared:fleet-revoked`` / ``<prefix>shared:fleet-stamps``); a revoke aimed at
``destination=[...]`` stays aimed, in each destination's own sets (the fleet sets in the
shared scope).

The Redis URL: the one the app's workers use (``$CELERY_WORKER_STATEDB``, then
``worker_state_db``, as ``celery worker`` reads them), then ``$REDIS_STATEDB_URL``; with
``install_redis_statedb(app)`` also the broker when it is Redis and no URL is configured.
No URL: plain Celery, no Redis call.

The client is the synchronous one (producers may run inside an event loop: Flower,
FastAPI), opened lazily once per control object and again after a fork.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from celery import Celery
from celery.app.control import Control

from celery_redis_statedb import admin
from celery_redis_statedb.settings import Setting, choose_url, raw_value
from statedb import admin_commands, commands, durability, stamps
from statedb._sync.clients import Client, open_sync_client
from statedb._sync.repository import run_staged
from statedb.config import StateDBConfig
from statedb.errors import AccessDeniedError, ConfigurationError, StateDataError, StateDBError

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CONTROL = "celery.app.control:Control"
DURABLE_CONTROL = "celery_redis_statedb.durable_control:DurableControl"
ID_COMMANDS = frozenset({"revoke", "terminate"})
STAMP_COMMANDS = frozenset({"revoke_by_stamped_headers"})
REVOKE_COMMANDS = ID_COMMANDS | STAMP_COMMANDS
INSTALLED_ATTR = "_celery_redis_statedb_installed"


class RevokePolicy(str, Enum):
    """What a producer does when Redis cannot take a revoke."""

    FAIL = "fail"
    BROADCAST = "broadcast"


def _policy(value: object) -> RevokePolicy:
    try:
        return RevokePolicy(str(value).strip().lower())
    except ValueError:
        allowed = " or ".join(repr(member.value) for member in RevokePolicy)
        raise ValueError(f"expected {allowed}") from None


# Producer-side only. Not in settings.SETTINGS: resolve_config feeds every row of that table
# to StateDBConfig, which has no field for it.
REVOKE_ON_UNAVAILABLE = Setting(
    "revoke_on_unavailable", "redis_state_revoke_on_unavailable", "CELERY_REDIS_STATE_REVOKE_ON_UNAVAILABLE",
    None, _policy,
    "Redis cannot take a producer's revoke: fail (default: raise, broadcast nothing) or broadcast "
    "(warn and broadcast to live workers only).",
)


def revoke_policy(app: Celery) -> RevokePolicy:
    """The app's ``redis_state_revoke_on_unavailable`` (app.conf > environment > ``fail``)."""
    picked = raw_value(REVOKE_ON_UNAVAILABLE, {}, app.conf, os.environ)
    if picked is None:
        return RevokePolicy.FAIL
    raw, source = picked
    try:
        policy: RevokePolicy = REVOKE_ON_UNAVAILABLE.parse(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{source}={raw!r} is not valid: {exc}") from None
    return policy


def explicit_url(app: Celery) -> str | None:
    """The statedb URL configured for the app's workers (``$CELERY_WORKER_STATEDB``, ``worker_state_db``,
    then ``$REDIS_STATEDB_URL``: :func:`~celery_redis_statedb.settings.choose_url`), or None."""
    choice = choose_url(app.conf, os.environ, allow_broker=False, required=False)
    return None if choice is None else choice.url


def producer_config(app: Celery) -> StateDBConfig | None:
    """The statedb a producer of ``app`` writes its revokes to, or None (plain Celery).

    Without ``install_redis_statedb`` only an explicitly configured URL counts; with it,
    also the broker when it is Redis (as :func:`celery_redis_statedb.admin.statedb_url`).
    """
    url = explicit_url(app)
    if url is None and getattr(app, INSTALLED_ATTR, False):
        try:
            url = admin.statedb_url(app)
        except ConfigurationError:
            return None
    return None if url is None else admin.app_config(app, url)


# Set while admin.revoke_tasks broadcasts what it has already stored: written once, not twice.
_already_durable: contextvars.ContextVar[bool] = contextvars.ContextVar("statedb_already_durable", default=False)


@contextlib.contextmanager
def already_durable() -> Iterator[None]:
    """Revokes broadcast inside this block are not written again (the caller stored them)."""
    token = _already_durable.set(True)
    try:
        yield
    finally:
        _already_durable.reset(token)


def _task_ids(value: object) -> list[object]:
    """The ids of a revoke's ``task_id`` argument, as Celery's ``maybe_list`` reads it."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


@dataclass(frozen=True)
class RevokeWrite:
    """The operations storing one revoke, and what it is about (for messages)."""

    operations: tuple[commands.Operation[int], ...]
    what: str


def plan_revoke(config: StateDBConfig, command: str, arguments: dict[str, Any],
                destination: Sequence[str] | None, revoked_at: float) -> RevokeWrite | None:
    """The writes for one revoke broadcast (validated: bad ids or headers raise here), or None."""
    names = list(dict.fromkeys(destination or ()))
    worker_keys = [config.keys.for_worker(name, config.scope) for name in names]
    if command in ID_COMMANDS:
        ids = _task_ids(arguments.get("task_id"))
        if not ids:
            return None
        keys = [k.revoked for k in worker_keys] or [config.keys.shared_revoked_key]
        ops = tuple(durability.durable(commands.add_revoked(key, ids, revoked_at, config.write_chunk_size),
                                       config.durability)
                    for key in dict.fromkeys(keys))
        return RevokeWrite(ops, f"revoke of {len(ids)} task id{'s' if len(ids) != 1 else ''}")
    headers = arguments.get("headers")
    if not headers:
        return None
    pairs = stamps.expand_headers(headers)
    if not pairs:
        return None
    keys = [k.stamps for k in worker_keys] or [config.keys.shared_stamps_key]
    ops = tuple(durability.durable(stamps.add_stamps(key, pairs, revoked_at, config.write_chunk_size),
                                   config.durability) for key in dict.fromkeys(keys))
    return RevokeWrite(ops, f"revoke of {len(pairs)} stamped header{'s' if len(pairs) != 1 else ''}")


def server_time(client: Client, target: str) -> float:
    """The Redis server's clock (``TIME``): revocation times must not depend on this host's clock.

    This host's clock if the server refuses ``TIME`` (an ACL without ``+time``)."""
    try:
        return run_operation(client, admin_commands.server_time(), target)
    except AccessDeniedError:
        return time.time()


def run_operation(client: Client, operation: commands.Operation[T], target: str) -> T:
    """Execute one operation of the command layer (one round trip a node); redis-py errors leave translated."""
    return operation.result(run_staged(client, operation.stage, target))


def run_operations(client: Client, operations: Sequence[commands.Operation[int]], target: str) -> int:
    """Stage every operation on one pipeline (one round trip a node); the sum of their results."""
    results: list[int] = run_operation(client, commands.combined(operations), target)
    return sum(results)


def store_revoked_ids(config: StateDBConfig, task_ids: Sequence[object], *, revoked_at: float | None = None) -> int:
    """Write ids to the fleet set with a client of its own; how many were new there."""
    arguments = {"task_id": list(task_ids)}
    if plan_revoke(config, "revoke", arguments, None, time.time()) is None:  # validated before any I/O
        return 0
    client = open_sync_client(config)
    try:
        when = server_time(client, config.safe_url) if revoked_at is None else revoked_at
        plan = plan_revoke(config, "revoke", arguments, None, when)
        assert plan is not None
        return run_operations(client, plan.operations, config.safe_url)
    finally:
        client.close()


def _with_message(error: StateDBError, message: str) -> StateDBError:
    """The same kind of error, with ``message``."""
    if isinstance(error, StateDataError):
        return type(error)(message, key=error.key)
    try:
        return type(error)(message)
    except TypeError:
        return StateDBError(message)


@dataclass
class _Clients:
    """This process's client (a fork gets new ones), keyed by what it was opened with."""

    pid: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    opened_for: tuple[str, float, float] | None = None
    client: Client | None = None


_clients_lock = threading.Lock()


def _new_clients_lock() -> None:
    global _clients_lock  # noqa: PLW0603 (a fork may copy it held by another thread)
    _clients_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_clients_lock)


class DurableControl(Control):  # type: ignore[misc]
    """Celery's control client; revokes are stored in Redis before they are broadcast."""

    _statedb_clients: _Clients | None = None

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  destination: Sequence[str] | None = None, connection: Any = None, reply: bool = False,
                  timeout: float = 1.0, limit: int | None = None, callback: Any = None, channel: Any = None,
                  pattern: str | None = None, matcher: str | None = None, **extra_kwargs: Any) -> Any:
        if command in REVOKE_COMMANDS and not _already_durable.get():
            self._store_revoke(command, dict(arguments or {}, **extra_kwargs), destination)
        return super().broadcast(command, arguments=arguments, destination=destination, connection=connection,
                                 reply=reply, timeout=timeout, limit=limit, callback=callback, channel=channel,
                                 pattern=pattern, matcher=matcher, **extra_kwargs)

    def _store_revoke(self, command: str, arguments: dict[str, Any], destination: Any) -> None:
        if destination is not None and not isinstance(destination, (list, tuple)):
            return  # kombu refuses it: nothing is broadcast, so nothing is stored either
        try:  # bad settings, ids or headers fail here, before anything is written or broadcast
            config = producer_config(self.app)
            if config is None:
                return
            policy = revoke_policy(self.app)
            plan = plan_revoke(config, command, arguments, destination, time.time())
        except StateDBError as exc:
            raise _with_message(exc, f"{exc}; the revoke was NOT made durable and NOT broadcast") from exc
        if plan is None:
            return
        try:
            client = self._statedb_client(config)
            # Planned again on the server's clock (one more round trip, for revokes only).
            plan = plan_revoke(config, command, arguments, destination, server_time(client, config.safe_url)) or plan
            run_operations(client, plan.operations, config.safe_url)
        except StateDBError as exc:
            if policy is RevokePolicy.BROADCAST:
                logger.warning(
                    "redis-statedb: %s NOT made durable (Redis statedb at %s: %s); broadcasting it to live "
                    "workers only (redis_state_revoke_on_unavailable=broadcast)", plan.what, config.safe_url, exc,
                )
                return
            raise _with_message(exc, (
                f"{plan.what} NOT made durable and NOT broadcast: the Redis statedb at {config.safe_url} "
                f"failed ({exc}); retry, or set redis_state_revoke_on_unavailable=broadcast to broadcast anyway"
            )) from exc

    def _statedb_client(self, config: StateDBConfig) -> Client:
        """The client for ``config``, opened once per process (and again if the config changed)."""
        pid = os.getpid()
        clients = self._statedb_clients
        if clients is None or clients.pid != pid:
            with _clients_lock:
                clients = self._statedb_clients
                if clients is None or clients.pid != pid:  # after a fork: never the parent's sockets
                    clients = self._statedb_clients = _Clients(pid)
        wanted = (config.url, config.socket_timeout, config.socket_connect_timeout)
        with clients.lock:
            if clients.client is None or clients.opened_for != wanted:
                previous = clients.client
                clients.client, clients.opened_for = open_sync_client(config), wanted
                if previous is not None:
                    previous.close()
            return clients.client

    def close_statedb(self) -> None:
        """Close the Redis client (opened again on the next revoke)."""
        clients = self._statedb_clients
        if clients is not None and clients.pid == os.getpid() and clients.client is not None:
            with clients.lock:
                if clients.client is not None:
                    clients.client.close()
                clients.client = clients.opened_for = None


class DurableControlWarning(UserWarning):
    """A control class could not be made durable: revokes through it are broadcast only."""


_composed: dict[type[Any], type[DurableControl]] = {}


def durable_class(control_cls: type[Any]) -> type[DurableControl] | None:
    """``control_cls`` made durable: DurableControl, a subclass composed over a custom Control
    subclass (its own overrides kept), or None for a class that is not a Control."""
    if not isinstance(control_cls, type) or not issubclass(control_cls, Control):
        return None
    if issubclass(control_cls, DurableControl):
        return control_cls
    if control_cls is Control:
        return DurableControl
    if control_cls not in _composed:
        _composed[control_cls] = type(f"Durable{control_cls.__name__}", (DurableControl, control_cls),
                                      {"__module__": control_cls.__module__})
    return _composed[control_cls]


def use_durable_control(app: Celery) -> None:
    """Make ``app``'s control class (and an ``app.control`` already built) durable; else warn."""
    from celery.utils.imports import symbol_by_name

    current = app.control_cls
    if current in (DEFAULT_CONTROL, DURABLE_CONTROL):
        app.control_cls = DURABLE_CONTROL
    else:
        try:
            resolved = symbol_by_name(current) if isinstance(current, str) else current
        except (ImportError, AttributeError, ValueError) as exc:
            _warn(f"control class {current!r} cannot be imported ({exc})")
            return
        durable = durable_class(resolved)
        if durable is None:
            _warn(f"control class {current!r} is not a celery.app.control.Control")
            return
        if durable is not resolved:
            app.control_cls = durable
    built = app.__dict__.get("control")
    if built is not None and not isinstance(built, DurableControl):
        durable = durable_class(type(built))
        if durable is None:
            _warn(f"app.control {type(built).__name__} is not a celery.app.control.Control")
            return
        built.__class__ = durable  # the same object (its mailbox, who holds it), now durable


def _warn(reason: str) -> None:
    warnings.warn(f"celery-redis-statedb: {reason}: revokes sent through it are broadcast but NOT "
                  "stored in Redis; subclass celery_redis_statedb.durable_control.DurableControl instead",
                  DurableControlWarning, stacklevel=3)


def use_durable_control_by_default() -> None:
    """Apps created from now on, with Celery's default control class, get DurableControl.

    Called when the ``celery`` command loads the entry point, before ``-A`` builds the app.
    Such an app stores revokes only when a statedb URL is configured explicitly.
    """
    if Celery.control_cls == DEFAULT_CONTROL:
        Celery.control_cls = DURABLE_CONTROL
