"""``celery -A app statedb ...``: the ``celery.commands`` entry point.

Celery imports this module while building its command line, before ``-A``
loads the app; importing it is what makes ``--statedb=redis://...`` work with
no code change (the worker options, the worker_init hook and the library's
control commands are registered here), and so is making the revokes of apps created
afterwards durable when a statedb URL is configured (see ``durable_control``). Keep the
import cheap and free of failures.

Every subcommand takes ``--url``, ``--key-prefix`` and ``--scope`` (before or after its
name) and resolves the rest as a worker of the app does; every command that prints takes
``--json``, one shape per object (``statedb.admin``'s ``as_dict()``). Errors are one line,
exit code 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from celery_redis_statedb.admin import SyncStateAdmin
from celery_redis_statedb.control import offer_to_celerys_cli
from celery_redis_statedb.durable_control import use_durable_control_by_default
from celery_redis_statedb.install import connect_worker_hook, register_worker_options
from statedb import admin_commands as ops
from statedb._sync.repository import SyncStateRepository
from statedb.admin import FLEET, Progress, SetChange, WorkerState
from statedb.commands import BadMembers
from statedb.errors import StateDBError, UnknownWorkerError
from statedb.timeframes import below_expiry, format_duration, parse_duration

register_worker_options()
connect_worker_hook()
use_durable_control_by_default()
offer_to_celerys_cli()

F = TypeVar("F", bound=Callable[..., Any])
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
fleet_option = click.option("--fleet", is_flag=True, help="The fleet-wide set (shared scope, producer revokes).")
yes_option = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
timeout_option = click.option("--timeout", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
                              help="Seconds to wait for the live workers' answers.")


# -- text helpers ------------------------------------------------------------------------------


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 id``, ``2 ids``, ``0 ids``."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def _when(moment: datetime | float | None) -> str:
    if moment is None:
        return "-"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def shown(value: Any) -> str:
    """Data read from Redis (a name, an id, a header or value) for a terminal: printable text as it
    is, anything else escaped (repr: no control character, ESC or newline reaches the terminal)."""
    if isinstance(value, str) and value.isprintable() and value.strip() == value and value:
        return value
    return repr(value)


def _owner(worker: str) -> str:
    return "(fleet)" if worker == FLEET else shown(worker)


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value))


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


def interactive() -> bool:
    return sys.stdin.isatty()


def _confirm(question: str, yes: bool) -> None:
    """Ask before removing data; refuse without a terminal unless --yes."""
    if yes:
        return
    if not interactive():
        raise click.UsageError("this removes data: confirm with --yes (or look first with --dry-run)")
    click.confirm(question, abort=True)


# -- where: --url, --key-prefix, --scope on the group and on every subcommand ------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.meta[f"statedb_{param.name}"] = value
    return value


TARGET_OPTIONS = (
    click.option("--url", default=None, expose_value=False, callback=_remember,
                 help="Redis URL (default: as the workers find it: $CELERY_WORKER_STATEDB, worker_state_db, "
                      "$REDIS_STATEDB_URL; the broker only when none is set)."),
    click.option("--key-prefix", default=None, expose_value=False, callback=_remember,
                 help="Key prefix (default: redis_state_key_prefix, $CELERY_REDIS_STATE_KEY_PREFIX)."),
    click.option("--scope", type=click.Choice(["worker", "shared"]), default=None, expose_value=False,
                 callback=_remember, help="The workers' scope (default: redis_state_scope, "
                                          "$CELERY_REDIS_STATE_SCOPE, worker)."),
)


def _target_options(command: F) -> F:
    for option in reversed(TARGET_OPTIONS):  # on a function: each one goes first
        command = option(command)
    return command


def _admin(ctx: click.Context, node: str | None = None) -> SyncStateAdmin:
    meta = ctx.meta
    return SyncStateAdmin.for_app(ctx.obj.app, meta.get("statedb_url"), key_prefix=meta.get("statedb_key_prefix"),
                                  scope=meta.get("statedb_scope"), node=node,
                                  labels=("--url", "--key-prefix", "--scope"))


class _Group(click.Group):
    """Every subcommand gets the target options too, so they work after its name."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        for option in TARGET_OPTIONS:  # on a command: each one goes last
            option(cmd)
        super().add_command(cmd, name)


@click.group(name="statedb", cls=_Group)
@_target_options
def statedb() -> None:
    """Inspect and manage the workers' revoked tasks in Redis (celery-redis-statedb)."""


# -- reads -------------------------------------------------------------------------------------


@statedb.command()
@click.option("--worker", default=None, help="Worker hostname (default: this host's celery@host).")
@json_option
@click.pass_context
@handles_errors
def check(ctx: click.Context, worker: str | None, as_json: bool) -> None:
    """Resolve the configuration, say where the URL came from, reach Redis, show one worker's keys."""
    from celery.utils.nodenames import default_nodename

    name = worker or default_nodename(None)
    admin = _admin(ctx, node=name)
    config = admin.config
    repository = SyncStateRepository.open(config, name)
    try:
        started = time.perf_counter()
        repository.ping()
        latency_ms = (time.perf_counter() - started) * 1000
        (facts,) = repository.run(ops.describe([ops.Probe(info=repository.keys.info)]))
        seen = (facts.info or {}).get("last_seen")
        report = {
            "url": config.safe_url, "url_source": admin.url_source.source if admin.url_source else "-",
            "worker": name, "scope": config.scope.value,
            "horizon": "no limit" if config.horizon is None else format_duration(config.horizon),
            "revoked_key": repository.keys.revoked, "clock_key": repository.keys.clock,
            "info_key": repository.keys.info, "revoked_count": repository.count_revoked(),
            "clock": repository.read_clock(), "last_seen": _when(float(seen)) + " UTC" if seen else "unknown",
            "ping_ms": round(latency_ms, 2),
        }
    finally:
        repository.close()
    if as_json:
        _echo_json(report)
        return
    for key, value in report.items():
        click.echo(f"{key:>14}: {value}")
    if admin.url_source is not None and admin.url_source.broker:
        click.echo("note: this is the broker: set the statedb URL the workers use (CELERY_WORKER_STATEDB, "
                   "worker_state_db) or pass --url", err=True)


def _worker_rows(states: Sequence[WorkerState]) -> list[list[str]]:
    rows = []
    for state in states:
        own = "(fleet)" if state.scope == "shared" and not state.revoked_count else str(state.revoked_count)
        rows.append([_owner(state.worker), "-" if state.is_fleet else state.scope or "?", own,
                     _when(state.oldest), _when(state.newest), "-" if state.clock is None else str(state.clock),
                     _when(state.last_seen), _size(state.memory_bytes) if state.revoked_count else "-"])
    return rows


@statedb.command()
@json_option
@click.pass_context
@handles_errors
def workers(ctx: click.Context, as_json: bool) -> None:
    """Every worker under the prefix (a revoked set, a clock, an info hash or stamps) and the fleet set:
    scope, revoked ids, oldest and newest, clock, last seen, memory."""
    with progress_bar("reading workers", not as_json) as progress:
        states = _admin(ctx).inspect_workers(progress=progress)
    if as_json:
        _echo_json([state.as_dict() for state in states])
        return
    _table(["WORKER", "SCOPE", "REVOKED", "OLDEST (UTC)", "NEWEST (UTC)", "CLOCK", "LAST SEEN (UTC)", "MEMORY"],
           _worker_rows(states))
    named = [s for s in states if not s.is_fleet]
    shared = sum(s.scope == "shared" for s in named)
    sets = [s for s in states if s.revoked_count]
    fleet = " and the fleet set" if any(s.is_fleet for s in states) else ""
    in_shared = f" ({shared} in the shared scope)" if shared else ""
    click.echo(f"{plural(len(named), 'worker')}{in_shared}{fleet}: "
               f"{plural(sum(s.revoked_count for s in sets), 'revoked id')} in {plural(len(sets), 'set')}")


def _worker_or_fleet(worker: str | None, fleet: bool) -> str | None:
    if fleet == (worker is not None):
        raise click.UsageError("name a WORKER, or pass --fleet")
    return worker


@statedb.command(name="inspect")
@click.argument("worker", required=False)
@fleet_option
@json_option
@click.pass_context
@handles_errors
def inspect_command(ctx: click.Context, worker: str | None, fleet: bool, as_json: bool) -> None:
    """One worker's revoked set, clock, last seen and stamps (or the fleet set with --fleet)."""
    name = _worker_or_fleet(worker, fleet)
    admin = _admin(ctx)
    state = admin.inspect_worker(name)
    (stamps,) = admin.inspect_stamps([name])
    if as_json:
        _echo_json({**state.as_dict(), "stamps": stamps.as_dict()})
        return
    for label, value in (("worker", _owner(state.worker)), ("scope", state.scope or "-"),
                         ("key", shown(state.key)), ("revoked", state.revoked_count),
                         ("oldest (UTC)", _when(state.oldest)), ("newest (UTC)", _when(state.newest)),
                         ("clock", state.clock), ("last seen (UTC)", _when(state.last_seen)),
                         ("version", state.version), ("memory", _size(state.memory_bytes)),
                         ("stamps", stamps.stamps_count), ("stamps key", shown(stamps.key)),
                         ("stamps oldest", _when(stamps.oldest)), ("stamps newest", _when(stamps.newest))):
        click.echo(f"{label:>15}: {value if value is not None else '-'}")


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
    name = _worker_or_fleet(worker, fleet)
    admin, bad = _admin(ctx), BadMembers()
    if stamps:
        _ls_stamps(admin, name, limit, as_json, bad)
    else:
        rows = admin.iter_revoked(name, limit=limit, bad=bad)
        if as_json:
            _echo_json([row.as_dict() for row in rows])
        else:
            click.echo("REVOKED AT (UTC)     TASK ID")
            for row in rows:
                click.echo(f"{_when(row.revoked_at)}  {shown(row.task_id)}")
    _flag_bad(bad)


def _ls_stamps(admin: SyncStateAdmin, worker: str | None, limit: int | None, as_json: bool, bad: BadMembers) -> None:
    (where,) = admin.inspect_stamps([worker])
    rows = admin.stamp_rows(worker, limit=limit, bad=bad)
    if as_json:
        from statedb.admin import iso, utc

        _echo_json([{"header": header, "value": value, "worker": where.worker, "key": where.key,
                     "revoked_at": iso(utc(when)), "revoked_at_epoch": when}
                    for header, value, when in rows])
        return
    click.echo("REVOKED AT (UTC)     HEADER=VALUE")
    for header, value, when in rows:
        click.echo(f"{_when(when)}  {shown(header)}={shown(value)}")


def _flag_bad(bad: BadMembers) -> None:
    """Bad members skipped by a listing: one line on stderr (the listing itself is what could be read)."""
    if bad.count:
        click.echo(f"error: skipped {plural(bad.count, 'bad member')} (left in Redis; remove them with ZREM), "
                   f"the first: {str(bad.errors[0])!r}", err=True)


@statedb.command()
@click.argument("task_id")
@json_option
@click.pass_context
@handles_errors
def where(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Which revoked sets hold TASK_ID, and since when."""
    places = _admin(ctx).where_revoked(task_id)
    if as_json:
        _echo_json([place.as_dict() for place in places])
        return
    if not places:
        click.echo(f"{shown(task_id)} is not revoked anywhere")
        return
    _table(["REVOKED AT (UTC)", "WORKER"], [[_when(p.revoked_at), _owner(p.worker)] for p in places])


# -- changes -------------------------------------------------------------------------------------


def _sets_text(sets: Sequence[SetChange]) -> str:
    return ", ".join(f"{_owner(change.worker)}: {change.count}" for change in sets)


@statedb.command()
@click.option("--older-than", "older_than", required=True, help="Age, e.g. 90s, 15m, 12h, 30d, 2w.")
@click.option("--worker", default=None, help="Only this worker's set (default: every set and the fleet set).")
@click.option("--missing-ok", is_flag=True, help="A --worker with no state is not an error.")
@click.option("--force", is_flag=True, help="Purge even below the workers' in-memory expiry.")
@dry_run_option
@yes_option
@json_option
@click.pass_context
@handles_errors
def purge(ctx: click.Context, older_than: str, worker: str | None, missing_ok: bool, force: bool, dry_run: bool,
          yes: bool, as_json: bool) -> None:
    """Remove revoked ids (and stamped-header revokes) older than a duration, from every set or one
    worker's, then tell live workers."""
    try:
        seconds = parse_duration(older_than)
    except StateDBError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    admin = _admin(ctx)
    expiry = admin.in_memory_expiry
    warning = f"--older-than {older_than} {below_expiry(expiry)}" if seconds < expiry else None
    if warning and not (force or dry_run):
        raise click.ClickException(f"{warning}; purge older ids, or pass --force")
    where_text = f"{shown(worker)}'s set" if worker else "every set"
    try:
        if not dry_run and not yes:
            planned = admin.purge_old_revoked(seconds, worker, dry_run=True, broadcast=False)
            _confirm(f"Remove {plural(planned.removed, 'revoked id')} older than {older_than} from "
                     f"{plural(len(planned.sets), 'set')} ({where_text}), and "
                     f"{plural(planned.stamps_removed, 'stamped-header revoke')}?", yes)
        with progress_bar("purging", not as_json) as progress:
            report = admin.purge_old_revoked(seconds, worker, dry_run=dry_run, progress=progress)
    except UnknownWorkerError as exc:
        if not missing_ok:
            raise
        _echo_json({"missing": str(exc)}) if as_json else click.echo(f"{exc}: nothing to purge")
        return
    if as_json:
        _echo_json({**report.as_dict(), "broadcast": not dry_run, "warning": warning})
        return
    verb = "would remove" if dry_run else "removed"
    scope = where_text if worker else f"{len(report.sets)} of {plural(report.sets_scanned, 'set')}"
    click.echo(f"{verb} {plural(report.removed, 'revoked id')} older than {older_than} from {scope}"
               + (f" ({_sets_text(report.sets)})" if report.sets and not worker else "")
               + f", and {plural(report.stamps_removed, 'stamped-header revoke')} as old")
    if warning and dry_run and not force:
        click.echo(f"warning: {warning}; the purge itself needs --force", err=True)


@statedb.command(name="revoke")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--no-broadcast", is_flag=True, help="Only store the revoke; do not tell live workers now.")
@click.option("--terminate", is_flag=True, help="Also terminate the tasks if they are running.")
@click.option("--signal", default=None, help="Signal for --terminate (default TERM).")
@json_option
@click.pass_context
@handles_errors
def revoke_command(ctx: click.Context, task_ids: tuple[str, ...], no_broadcast: bool, terminate: bool,
                   signal: str | None, as_json: bool) -> None:
    """Durable revoke: stored in the fleet set (honoured at every boot), then broadcast to live workers."""
    report = _admin(ctx).revoke(task_ids, broadcast=not no_broadcast, terminate=terminate, signal=signal)
    if as_json:
        _echo_json({**report.as_dict(), "broadcast": not no_broadcast})
        return
    click.echo(f"stored {plural(len(report.task_ids), 'id')} in the fleet set ({report.added} new)"
               + ("" if no_broadcast else "; revoke broadcast to live workers"))


def parse_stamp(text: str) -> tuple[str, str]:
    """NAME=VALUE (split at the first ``=``); the value is text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not of the form NAME=VALUE", param_hint="--stamp")
    return name, value


def _echo_replies(replies: list[dict[str, Any]]) -> None:
    """Each live worker's answer to a broadcast, one line each."""
    for reply in replies:
        for node, answer in reply.items():
            click.echo(f"  {shown(node)}: {answer.get('ok') or answer.get('error')}")


@statedb.command(name="restore")
@click.argument("task_ids", nargs=-1, required=False)
@click.option("--stamp", "stamps", multiple=True, metavar="NAME=VALUE",
              help="A stamped-header revoke to lift (repeatable; the value is text).")
@click.option("--worker", default=None,
              help="Only for this worker: its set, and the fleet set (which binds it at boot too).")
@click.option("--no-broadcast", is_flag=True, help="Only remove from Redis; do not tell live workers.")
@json_option
@click.pass_context
@handles_errors
def restore_command(ctx: click.Context, task_ids: tuple[str, ...], stamps: tuple[str, ...], worker: str | None,
                    no_broadcast: bool, as_json: bool) -> None:
    """Un-revoke: remove ids (or --stamp NAME=VALUE stamped-header revokes) from Redis and from live
    workers' memory, so the tasks can run again."""
    if not task_ids and not stamps:
        raise click.UsageError("give TASK_IDS to restore, or --stamp NAME=VALUE")
    admin = _admin(ctx)
    out: dict[str, Any] = {"broadcast": not no_broadcast}
    if stamps:
        lifted = admin.restore_stamps([parse_stamp(text) for text in stamps], worker=worker,
                                      broadcast=not no_broadcast)
        out["stamps_removed"], out["stamps_replies"] = lifted.removed, lifted.replies
        if not as_json:
            click.echo(f"removed {plural(lifted.removed, 'stored stamped-header revoke')}")
            _echo_replies(lifted.replies)
    if task_ids:
        result = admin.restore(task_ids, worker=worker, broadcast=not no_broadcast)
        assert result.report is not None
        out.update(result.report.as_dict(), replies=result.replies)
        if not as_json:
            click.echo(f"removed {plural(result.removed, 'stored revocation')}"
                       + (f" ({_sets_text(result.report.sets)})" if result.report.sets else ""))
            if result.report.note:
                click.echo(f"note: {result.report.note}")
            _echo_replies(result.replies)
    if as_json:
        _echo_json(out)


@statedb.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--worker", required=True, help="Hostname of the worker whose keys receive the state.")
@click.option("--legacy-blob", is_flag=True,
              help="Read the celery-redis-statedb 0.2 blob at <prefix><worker>:zrevoked instead (it unpickles).")
@dry_run_option
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
    repository = SyncStateRepository.open(_admin(ctx, node=worker).config, worker)
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
    click.echo(json.dumps(report.as_dict()) if as_json else report.summary())


# -- dead workers ------------------------------------------------------------------------------


def _forgotten_text(report: Any, verb: str) -> None:
    for gone in report.workers:
        click.echo(f"  {shown(gone.worker)}: {plural(len(gone.keys), 'key')}, "
                   f"{plural(gone.revoked_count, 'revoked id')}, last seen {_when(gone.last_seen)} UTC")
    keys = sum(len(gone.keys) for gone in report.workers)
    click.echo(f"{verb} {plural(len(report.workers), 'worker')} ({plural(keys, 'key')})")


def removal_options(command: F) -> F:
    """--dry-run, --yes, --timeout (of the ping that finds live workers) and --json."""
    for option in (json_option, timeout_option, yes_option, dry_run_option):
        command = option(command)
    return command


@statedb.command()
@click.argument("workers", nargs=-1, required=True)
@removal_options
@click.pass_context
@handles_errors
def forget(ctx: click.Context, workers: tuple[str, ...], dry_run: bool, yes: bool, timeout: float,
           as_json: bool) -> None:
    """Remove every key of WORKERS gone for good: their own revoked and stamps sets, clock and info
    (never the fleet sets). A worker that answers a ping is refused; nothing is removed then."""
    admin = _admin(ctx)
    if not dry_run and not yes:
        planned = admin.forget(workers, dry_run=True, ping_timeout=timeout)
        keys = sum(len(gone.keys) for gone in planned.workers)
        ids = sum(gone.revoked_count for gone in planned.workers)
        _confirm(f"Remove {plural(keys, 'key')} of {plural(len(planned.workers), 'worker')} "
                 f"({plural(ids, 'revoked id')} they alone were bound by)?", yes)
    with progress_bar("forgetting", not as_json) as progress:
        report = admin.forget(workers, dry_run=dry_run, ping_timeout=timeout, progress=progress)
    if as_json:
        _echo_json(report.as_dict())
    else:
        _forgotten_text(report, "would forget" if dry_run else "forgot")


@statedb.command()
@click.option("--idle-for", "idle_for", required=True, help="Not seen for this long, e.g. 30d, 12h, 2w.")
@click.option("--include-unknown", is_flag=True,
              help="Also workers whose last clock save is unknown (a worker of an earlier version: no info hash).")
@removal_options
@click.pass_context
@handles_errors
def prune(ctx: click.Context, idle_for: str, include_unknown: bool, dry_run: bool, yes: bool, timeout: float,
          as_json: bool) -> None:
    """Forget the workers whose clock was not saved for --idle-for: every key of theirs but the fleet
    sets. Workers that answer a ping are never touched."""
    try:
        seconds = parse_duration(idle_for)
    except StateDBError as exc:
        raise click.BadParameter(str(exc), param_hint="--idle-for") from None
    if seconds <= 0:
        raise click.BadParameter("must be greater than zero", param_hint="--idle-for")
    admin = _admin(ctx)
    if not dry_run and not yes:
        planned = admin.prune(seconds, include_unknown=include_unknown, dry_run=True, ping_timeout=timeout)
        _confirm(f"Forget {plural(len(planned.workers), 'worker')} not seen for {idle_for} "
                 f"({plural(sum(len(g.keys) for g in planned.workers), 'key')})?", yes)
    with progress_bar("pruning", not as_json) as progress:
        report = admin.prune(seconds, include_unknown=include_unknown, dry_run=dry_run, ping_timeout=timeout,
                             progress=progress)
    if as_json:
        _echo_json(report.as_dict())
        return
    _forgotten_text(report, "would forget" if dry_run else "forgot")
    if report.kept_live:
        click.echo(f"kept {plural(len(report.kept_live), 'idle worker')} that answered a ping: "
                   f"{', '.join(map(shown, report.kept_live))}")
    if report.kept_unknown:
        click.echo(f"kept {plural(len(report.kept_unknown), 'worker')} whose last clock save is unknown "
                   f"(--include-unknown to prune them too)")


# -- health and metrics --------------------------------------------------------------------------


@statedb.command()
@click.option("--worker", default=None, help="Only this worker (default: every live worker).")
@timeout_option
@json_option
@click.pass_context
@handles_errors
def health(ctx: click.Context, worker: str | None, timeout: float, as_json: bool) -> None:
    """Exit 0 when Redis answers and every live worker (or --worker) has nothing waiting to be written and
    Redis is not failing for it; else exit 1, one line per problem (Kubernetes probes, cron)."""
    from celery_redis_statedb.health import check_health

    report = check_health(_admin(ctx), worker=worker, timeout=timeout)
    if as_json:
        _echo_json(report.as_dict())
    elif report.healthy:
        click.echo(f"ok: Redis at {report.url} answers; "
                   + (f"{plural(len(report.workers), 'live worker')} with nothing pending" if report.workers
                      else "no live worker answered"))
    else:
        for problem in report.problems:
            click.echo(problem)
    ctx.exit(0 if report.healthy else 1)


@statedb.command()
@timeout_option
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file (atomically, for a node_exporter textfile collector) instead of stdout.")
@click.pass_context
@handles_errors
def metrics(ctx: click.Context, timeout: float, output: str | None) -> None:
    """The Prometheus text exposition format: ids, age and memory of every set, last seen of every worker
    (from Redis); pending ids, failing and clock-save age of live workers (statedb_status)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise click.ClickException("celery statedb metrics needs prometheus_client: "
                                   "pip install 'celery-redis-statedb[metrics]'") from None
    from celery_redis_statedb.health import metric_samples, metrics_text, worker_statuses

    admin = _admin(ctx)
    try:
        now, states, redis_up = admin.server_time(), admin.inspect_workers(), True
    except StateDBError as exc:  # still exported: celery_statedb_redis_up 0, and the live workers' view
        click.echo(f"error: {exc}", err=True)
        now, states, redis_up = time.time(), [], False
    try:
        statuses = worker_statuses(admin, timeout=timeout)
    except StateDBError as exc:
        click.echo(f"error: {exc}", err=True)
        statuses = {}
    text = metrics_text(metric_samples(states, statuses, now, redis_up))
    if output is None:
        click.echo(text, nl=False)
        return
    partial = f"{output}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, output)
