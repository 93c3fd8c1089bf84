"""Wiring into Celery: worker options, the worker_init hook, and ``install_redis_statedb``."""

from __future__ import annotations

from typing import Any

import click
from celery import Celery, signals

from celery_redis_statedb import control  # noqa: F401  (registers the statedb_restore command)
from celery_redis_statedb.bootstep import CLAIMED_URL_ATTR, RedisStateDB
from celery_redis_statedb.durable_control import INSTALLED_ATTR, use_durable_control
from celery_redis_statedb.settings import SETTINGS
from statedb.urls import is_redis_url

LEGACY_URL_OPTION = "redis_statedb"
MIGRATE_OPTION = "migrate_statedb"


def worker_options() -> list[click.Option]:
    """The ``celery worker`` options this library adds (not read from CELERY_WORKER_* env)."""
    options = [
        click.Option(
            ["--redis-statedb", LEGACY_URL_OPTION], default=None, allow_from_autoenv=False,
            help="Redis URL of the statedb (same as --statedb=redis://...; kept from 0.2).",
        )
    ]
    options.append(click.Option(
        ["--migrate-statedb", MIGRATE_OPTION], default=None, allow_from_autoenv=False,
        help="Merge this Celery file statedb into Redis at boot (idempotent; the file is left as it is).",
    ))
    for setting in SETTINGS:
        if setting.option is not None and setting.cli_kwarg is not None:
            options.append(click.Option([setting.option, setting.cli_kwarg], default=None,
                                        allow_from_autoenv=False, help=setting.help))
    return options


def register_worker_options() -> None:
    """Add the options to ``celery worker`` once, for every app."""
    from celery.bin.worker import worker

    present = {param.name for param in worker.params}
    worker.params.extend(option for option in worker_options() if option.name not in present)


def claim_redis_statedb(sender: Any, **_: Any) -> None:
    """worker_init handler: a Redis statedb URL goes to our step, never to Celery's shelve.

    A ``--redis-statedb`` value is always claimed, so that a malformed one stops the
    worker with a clear error instead of leaving it without persistence.
    """
    legacy = (getattr(sender, "options", None) or {}).get(LEGACY_URL_OPTION)
    url = legacy or sender.statedb
    if not legacy and not is_redis_url(url):
        return  # a file path (or nothing): Celery's own shelve statedb
    setattr(sender, CLAIMED_URL_ATTR, url)
    sender.statedb = None
    steps = sender.app.steps["worker"]
    if RedisStateDB not in steps:
        steps.add(RedisStateDB)


def connect_worker_hook() -> None:
    signals.worker_init.connect(claim_redis_statedb, weak=False, dispatch_uid="celery_redis_statedb.claim")


def install_redis_statedb(app: Celery) -> None:
    """Make ``celery -A app worker --statedb=redis://...`` (or rediss://, unix://) use Redis.

    File paths keep Celery's own shelve statedb. Also makes the app's revokes durable
    (``app.control`` becomes a :class:`~celery_redis_statedb.durable_control.DurableControl`:
    each revoke is stored in Redis, then broadcast). Idempotent.
    """
    register_worker_options()
    connect_worker_hook()
    app.steps["worker"].add(RedisStateDB)
    setattr(app, INSTALLED_ATTR, True)
    use_durable_control(app)
