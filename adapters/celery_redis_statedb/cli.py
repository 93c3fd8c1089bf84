"""``celery -A app statedb ...``: the ``celery.commands`` entry point.

Celery imports this module while building its command line, before ``-A``
loads the app; importing it is what makes ``--statedb=redis://...`` work with
no code change (the worker options, the worker_init hook and the restore
control command are registered here), and so is making the revokes of apps created
afterwards durable when a statedb URL is configured (see ``durable_control``). Keep the
import cheap and free of failures.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from celery_redis_statedb import admin
from celery_redis_statedb.durable_control import use_durable_control_by_default
from celery_redis_statedb.install import connect_worker_hook, register_worker_options
from statedb._sync.repository import SyncStateRepository
from statedb.admin import Progress
from statedb.commands import BadMembers
from statedb.errors import StateDBError
from statedb.timeframes import format_duration, parse_duration

register_worker_options()
connect_worker_hook()
use_durable_control_by_default()

F = TypeVar("F", bound=Callable[..., Any])
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
fleet_option = click.option("--fleet", is_flag=True, help="The fleet-wide set (shared scope, producer revokes).")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def handles_errors(command: F) -> F:
    """Library errors become one clear line and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StateDBError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[Progress | None]:
    """A progress(done, total) callback drawing a bar on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=1, label=label, file=sys.stderr) as bar:
        def update(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield update


def _app(ctx: click.Context) -> Any:
    return ctx.obj.app


def _url(ctx: click.Context) -> str | None:
    return ctx.find_root().meta.get("statedb_url")


@click.group(name="statedb")
@click.option("--url", default=None, help="Redis URL (default: worker_state_db, $REDIS_STATEDB_URL, the broker).")
@click.pass_context
def statedb(ctx: click.Context, url: str | None) -> None:
    """Inspect and manage the workers' revoked tasks in Redis (celery-redis-statedb)."""
    ctx.find_root().meta["statedb_url"] = url


@statedb.command()
@click.option("--worker", default=None, help="Worker hostname (default: this host's celery@host).")
@json_option
@click.pass_context
@handles_errors
def check(ctx: click.Context, worker: str | None, as_json: bool) -> None:
    """Resolve the configuration, reach Redis, and show one worker's keys and state."""
    from celery.utils.nodenames import default_nodename

    config = admin.app_config(_app(ctx), _url(ctx))
    name = worker or default_nodename(None)
    repository = SyncStateRepository.open(config, name)
    try:
        started = time.perf_counter()
        repository.ping()
        latency_ms = (time.perf_counter() - started) * 1000
        report = {
            "url": config.safe_url, "worker": name, "scope": config.scope.value,
            "horizon": "no limit" if config.horizon is None else format_duration(config.horizon),
            "revoked_key": repository.keys.revoked, "clock_key": repository.keys.clock,
            "revoked_count": repository.count_revoked(), "clock": repository.read_clock(),
            "ping_ms": round(latency_ms, 2),
        }
    finally:
        repository.close()
    if as_json:
        click.echo(json.dumps(report))
    else:
        for key, value in report.items():
            click.echo(f"{key:>14}: {value}")


@statedb.command()
@json_option
@click.pass_context
@handles_errors
def workers(ctx: click.Context, as_json: bool) -> None:
    """Every revoked set under the prefix: count, oldest and newest revocation, clock, memory."""
    with progress_bar("reading workers", not as_json) as progress:
        states = admin.inspect_workers(_app(ctx), redis_url=_url(ctx), progress=progress)
    if as_json:
        click.echo(json.dumps([state.as_dict() for state in states]))
        return
    rows = [[shown(state.worker) if state.worker is not None else "(fleet)", str(state.revoked_count),
             _when(state.oldest), _when(state.newest), "-" if state.clock is None else str(state.clock),
             _size(state.memory_bytes)] for state in states]
    _table(["WORKER", "REVOKED", "OLDEST (UTC)", "NEWEST (UTC)", "CLOCK", "MEMORY"], rows)
    click.echo(f"{len(states)} revoked sets, {sum(s.revoked_count for s in states)} ids")


@statedb.command(name="inspect")
@click.argument("worker", required=False)
@fleet_option
@json_option
@click.pass_context
@handles_errors
def inspect_command(ctx: click.Context, worker: str | None, fleet: bool, as_json: bool) -> None:
    """One worker's revoked set and clock (or the fleet set with --fleet)."""
    name = _worker_or_fleet(worker, fleet)
    state = admin.inspect_worker(_app(ctx), name, redis_url=_url(ctx))
    (stamps,) = admin.inspect_stamps(_app(ctx), [name], redis_url=_url(ctx))
    if as_json:
        click.echo(json.dumps({**state.as_dict(), "stamps_key": stamps.key, "stamps_count": stamps.stamps_count,
                               "stamps_oldest": stamps.oldest, "stamps_newest": stamps.newest}))
        return
    for label, value in (("worker", "(fleet)" if state.worker is None else shown(state.worker)),
                         ("key", shown(state.key)),
                         ("revoked", state.revoked_count), ("oldest", _when(state.oldest)),
                         ("newest", _when(state.newest)), ("clock", state.clock),
                         ("memory", _size(state.memory_bytes)), ("stamps", stamps.stamps_count),
                         ("stamps key", shown(stamps.key)), ("stamps oldest", _when(stamps.oldest)),
                         ("stamps newest", _when(stamps.newest))):
        click.echo(f"{label:>13}: {value if value is not None else '-'}")


def _worker_or_fleet(worker: str | None, fleet: bool) -> str | None:
    if fleet == (worker is not None):
        raise click.UsageError("name a WORKER, or pass --fleet")
    return worker


@statedb.command(name="ls")
@click.argument("worker", required=False)
@fleet_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many, newest first.")
@click.option("--stamps", "stamps", is_flag=True, help="The stamped-header revokes instead of the task ids.")
@json_option
@click.pass_context
@handles_errors
def ls_command(ctx: click.Context, worker: str | None, fleet: bool, limit: int | None, stamps: bool,
               as_json: bool) -> None:
    """The revoked ids of a worker (or the fleet set), newest first, with their revocation times."""
    if stamps:
        _ls_stamps(ctx, _worker_or_fleet(worker, fleet), limit, as_json)
        return
    bad = BadMembers()
    rows = admin.revoked_ids(_app(ctx), _worker_or_fleet(worker, fleet), redis_url=_url(ctx), limit=limit, bad=bad)
    if as_json:
        click.echo(json.dumps([{"task_id": task_id, "revoked_at": when} for task_id, when in rows]))
    else:
        for task_id, when in rows:
            click.echo(f"{_when(when)}  {shown(task_id)}")
    _flag_bad(bad)


def _flag_bad(bad: BadMembers) -> None:
    """Bad members skipped by a listing: one line on stderr (the listing itself is what could be read)."""
    if bad.count:
        click.echo(f"error: skipped {bad.count} bad members (left in Redis; remove them with ZREM), the first: "
                   f"{str(bad.errors[0])!r}", err=True)


@statedb.command()
@click.argument("task_id")
@json_option
@click.pass_context
@handles_errors
def where(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Which revoked sets hold TASK_ID, and since when."""
    places = admin.where_revoked(_app(ctx), task_id, redis_url=_url(ctx))
    if as_json:
        click.echo(json.dumps([{"worker": p.worker, "key": p.key, "revoked_at": p.revoked_at} for p in places]))
        return
    if not places:
        click.echo(f"{shown(task_id)} is not revoked anywhere")
    for place in places:
        click.echo(f"{_when(place.revoked_at)}  {'(fleet)' if place.worker is None else shown(place.worker)}")


@statedb.command()
@click.option("--older-than", "older_than", required=True, help="Age, e.g. 90s, 15m, 12h, 30d, 2w.")
@click.option("--worker", default=None, help="Only this worker's set (default: every set).")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
@handles_errors
def purge(ctx: click.Context, older_than: str, worker: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Remove revoked ids older than a duration, from every worker or one."""
    try:
        seconds = parse_duration(older_than)
    except StateDBError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    app, url = _app(ctx), _url(ctx)
    where_text = f"worker {worker}" if worker else "every worker and the fleet set"
    if not dry_run and not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("purge removes data: confirm with --yes (or look first with --dry-run)")
        click.confirm(f"Remove revoked ids older than {older_than} from {where_text}?", abort=True)
    with progress_bar("purging", not as_json) as progress:
        count = admin.purge_old_revoked_tasks(app, seconds, worker, url, dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(json.dumps({"removed": 0 if dry_run else count, "would_remove": count if dry_run else None}))
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {count} revoked ids older than {older_than} from {where_text}"
                   " (stamped-header revokes as old too)")


@statedb.command(name="revoke")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--no-broadcast", is_flag=True, help="Only store the revoke; do not tell live workers now.")
@click.option("--terminate", is_flag=True, help="Also terminate the tasks if they are running.")
@click.option("--signal", default=None, help="Signal for --terminate (default TERM).")
@click.pass_context
@handles_errors
def revoke_command(ctx: click.Context, task_ids: tuple[str, ...], no_broadcast: bool, terminate: bool,
                   signal: str | None) -> None:
    """Durable revoke: stored in the fleet set (honoured at every boot), then broadcast to live workers."""
    added = admin.revoke_tasks(_app(ctx), task_ids, broadcast=not no_broadcast, terminate=terminate,
                               signal=signal, redis_url=_url(ctx))
    click.echo(f"stored {len(task_ids)} ids ({added} new) in the fleet set"
               + ("" if no_broadcast else "; revoke broadcast to live workers"))


@statedb.command(name="restore")
@click.argument("task_ids", nargs=-1, required=False)
@click.option("--stamp", "stamps", multiple=True, metavar="NAME=VALUE",
              help="A stamped-header revoke to lift (repeatable; the value is text).")
@click.option("--worker", default=None, help="Only this worker's set (default: every set).")
@click.option("--no-broadcast", is_flag=True, help="Only remove from Redis; do not tell live workers.")
@click.pass_context
@handles_errors
def restore_command(ctx: click.Context, task_ids: tuple[str, ...], stamps: tuple[str, ...], worker: str | None,
                    no_broadcast: bool) -> None:
    """Un-revoke: remove ids (or --stamp NAME=VALUE stamped-header revokes) from Redis and from live
    workers' memory, so the tasks can run again."""
    if not task_ids and not stamps:
        raise click.UsageError("give TASK_IDS to restore, or --stamp NAME=VALUE")
    if stamps:
        _restore_stamps(ctx, stamps, worker, no_broadcast)
    if not task_ids:
        return
    result = admin.restore_tasks(_app(ctx), task_ids, worker_name=worker, broadcast=not no_broadcast,
                                 redis_url=_url(ctx))
    click.echo(f"removed {result.removed} stored revocations")
    _echo_replies(result.replies)


@statedb.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--worker", required=True, help="Hostname of the worker whose keys receive the state.")
@click.option("--legacy-blob", is_flag=True,
              help="Read the celery-redis-statedb 0.2 blob at <prefix><worker>:zrevoked instead (it unpickles).")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@json_option
@click.pass_context
@handles_errors
def migrate(ctx: click.Context, path: str | None, worker: str, legacy_blob: bool, dry_run: bool,
            as_json: bool) -> None:
    """Merge a Celery file statedb at PATH (any layout, any dbm) into WORKER's keys; idempotent.

    The source is only read: never changed, deleted or renamed.
    """
    from celery_redis_statedb.migration import legacy_blob_key, migrate_file_statedb, migrate_legacy_blob

    if (path is None) == (not legacy_blob):
        raise click.UsageError("give the PATH of a file statedb, or --legacy-blob")
    config = admin.app_config(_app(ctx), _url(ctx))
    repository = SyncStateRepository.open(config, worker)
    try:
        with progress_bar("migrating", not as_json) as progress:
            if legacy_blob:
                click.echo("warning: --legacy-blob unpickles data read from Redis (restricted to "
                           "Celery's LimitedSet); use it only on a Redis you trust", err=True)
                report = migrate_legacy_blob(repository, key=legacy_blob_key(repository),
                                             dry_run=dry_run, progress=progress)
            else:
                assert path is not None
                report = migrate_file_statedb(path, repository, dry_run=dry_run, progress=progress)
    finally:
        repository.close()
    click.echo(json.dumps(dataclasses.asdict(report)) if as_json else report.summary())


# -- stamped-header revokes ------------------------------------------------------------


def shown(value: Any) -> str:
    """Data read from Redis (a name, an id, a header or value) for a terminal: printable text as it
    is, anything else escaped (repr: no control character, ESC or newline reaches the terminal)."""
    if isinstance(value, str) and value.isprintable() and value.strip() == value and value:
        return value
    return repr(value)


def _ls_stamps(ctx: click.Context, worker: str | None, limit: int | None, as_json: bool) -> None:
    bad = BadMembers()
    rows = admin.stamp_rows(_app(ctx), worker, redis_url=_url(ctx), limit=limit, bad=bad)
    if as_json:
        click.echo(json.dumps([{"header": header, "value": value, "revoked_at": when}
                               for header, value, when in rows]))
    else:
        for header, value, when in rows:
            click.echo(f"{_when(when)}  {shown(header)}={shown(value)}")
    _flag_bad(bad)


def parse_stamp(text: str) -> tuple[str, str]:
    """NAME=VALUE (split at the first ``=``); the value is text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not of the form NAME=VALUE", param_hint="--stamp")
    return name, value


def _restore_stamps(ctx: click.Context, stamps: tuple[str, ...], worker: str | None, no_broadcast: bool) -> None:
    pairs = [parse_stamp(text) for text in stamps]
    result = admin.restore_stamps(_app(ctx), pairs, worker_name=worker, broadcast=not no_broadcast,
                                  redis_url=_url(ctx))
    click.echo(f"removed {result.removed} stored stamped-header revokes")
    _echo_replies(result.replies)


def _echo_replies(replies: list[dict[str, Any]]) -> None:
    """Each live worker's answer to a broadcast, one line each."""
    for reply in replies:
        for node, answer in reply.items():
            click.echo(f"  {node}: {answer.get('ok') or answer.get('error')}")
