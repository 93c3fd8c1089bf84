"""``celery statedb ...``: the ``celery.commands`` entry point.

Celery imports this module while building its command line, before ``-A``
loads the app; importing it is what makes ``--statedb=redis://...`` work with
no code change (the worker options and the worker_init hook are registered
here). Keep the import cheap and free of failures.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from celery_redis_statedb.install import connect_worker_hook, register_worker_options
from celery_redis_statedb.repository import SyncStateRepository
from celery_redis_statedb.settings import resolve_config
from statedb.errors import StateDBError
from statedb.urls import is_redis_url

register_worker_options()
connect_worker_hook()

URL_ENV = "REDIS_STATEDB_URL"


def statedb_url(app: Any, explicit: str | None) -> str | None:
    """The Redis URL for ``app``: explicit, else the first Redis URL of worker_state_db and REDIS_STATEDB_URL."""
    if explicit:
        return explicit
    for candidate in (app.conf.get("worker_state_db"), os.environ.get(URL_ENV)):
        if is_redis_url(candidate):
            return str(candidate)
    return None


@click.group(name="statedb")
def statedb() -> None:
    """Inspect the Redis statedb of the workers (celery-redis-statedb)."""


@statedb.command()
@click.option("--url", "url", default=None, help=f"Redis URL (default: worker_state_db, then ${URL_ENV}).")
@click.option("--worker", "worker", default=None, help="Worker hostname (default: this host's celery@host).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def check(ctx: click.Context, url: str | None, worker: str | None, as_json: bool) -> None:
    """Resolve the configuration, reach Redis, and show one worker's keys and state."""
    from celery.utils.nodenames import default_nodename

    app = ctx.obj.app
    resolved = statedb_url(app, url)
    if not is_redis_url(resolved):
        raise click.UsageError(f"no Redis statedb URL: pass --url, set worker_state_db or ${URL_ENV}")
    assert resolved is not None
    name = worker or default_nodename(None)
    try:
        config = resolve_config(resolved, conf=app.conf, env=os.environ)
        repository = SyncStateRepository.open(config, name)
        try:
            started = time.perf_counter()
            repository.ping()
            latency_ms = (time.perf_counter() - started) * 1000
            report = {
                "url": config.safe_url, "worker": name, "scope": config.scope.value,
                "revoked_key": repository.keys.revoked, "clock_key": repository.keys.clock,
                "revoked_count": repository.count_revoked(), "clock": repository.read_clock(),
                "ping_ms": round(latency_ms, 2),
            }
        finally:
            repository.close()
    except StateDBError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        for key, value in report.items():
            click.echo(f"{key:>14}: {value}")
