"""Worker remote-control commands of the library: live workers lift restored and purged
revokes, and say how their statedb fares.

Registered in every process that imports this package (the ``celery.commands`` entry
point and ``install_redis_statedb`` both do): in workers, so ``restore_tasks`` and a purge
make a task runnable again at once, without a restart; in ``celery inspect``, which
refuses command names it does not know, so ``celery -A app inspect statedb_status``
works. ``app.control.inspect().statedb_status()`` is added to Celery's ``Inspect``.
"""

from __future__ import annotations

import math
from typing import Any

from celery.app.control import Inspect
from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import control_command, inspect_command, ok

COMMAND = "statedb_restore"
STATUS_COMMAND = "statedb_status"
PURGE_COMMAND = "statedb_purge"
NO_STATEDB = "no Redis statedb on this worker"


def _persistence() -> Any:
    """The worker's WorkerStatePersistence, when it keeps its state in Redis."""
    return worker_state.revoked.__dict__.get("_statedb_recorder")


@control_command(variadic="task_id", signature="[id1 [id2 [... [idN]]]]")  # type: ignore[untyped-decorator]
def statedb_restore(state: Any, task_id: Any, fleet: Any = False, worker: Any = None, **kwargs: Any
                    ) -> dict[str, str]:
    """Un-revoke task ids on this worker: memory, the index of stored revokes, the pending buffer
    (Redis is left to the caller).

    ``fleet=True``: the fleet set no longer holds them (a restore for ``worker``, or of the fleet set),
    so every worker lifts those bound on it only through the fleet set, and ``worker`` lifts them all.
    """
    task_ids = [tid for tid in dict.fromkeys(maybe_list(task_id) or []) if isinstance(tid, str)]
    persistence = _persistence()
    if fleet and worker != getattr(state, "hostname", None):
        if persistence is None or not hasattr(persistence, "lift_fleet_entries"):
            return ok(f"0 of {len(task_ids)} ids restored (no Redis statedb on this worker)")  # type: ignore[no-any-return]
        lifted = persistence.lift_fleet_entries(task_ids)
        return ok(f"{len(lifted)} of {len(task_ids)} ids restored "  # type: ignore[no-any-return]
                  "(those bound here only through the fleet set)")
    present = [tid for tid in task_ids if tid in worker_state.revoked._data]
    if persistence is not None and hasattr(persistence, "lift"):
        persistence.lift(task_ids)
    else:
        for tid in present:
            worker_state.revoked.discard(tid)
    return ok(f"{len(present)} of {len(task_ids)} ids restored")  # type: ignore[no-any-return]


@control_command(args=[("before", float)], signature="<wall-clock time>")  # type: ignore[untyped-decorator]
def statedb_purge(state: Any, before: Any = None, **kwargs: Any) -> dict[str, str]:
    """A purge removed from Redis the ids revoked before ``before``: drop from memory those
    Redis no longer holds (each checked in Redis)."""
    try:
        cutoff = float(before)
    except (TypeError, ValueError):
        return {"error": f"before must be a wall-clock time in seconds, got {before!r:.60}"}
    if not math.isfinite(cutoff):
        return {"error": f"before must be finite, got {cutoff!r}"}
    persistence = _persistence()
    if persistence is None or not hasattr(persistence, "purged_before"):
        return ok(NO_STATEDB)  # type: ignore[no-any-return]
    dropped = persistence.purged_before(cutoff)
    return ok(f"{dropped} purged ids dropped from memory")  # type: ignore[no-any-return]


@inspect_command()  # type: ignore[untyped-decorator]
def statedb_status(state: Any, **kwargs: Any) -> dict[str, Any]:
    """This worker's statedb at a glance (JSON-able, no password): masked URL, scope, keys, ids in memory,
    in the index and waiting to be written, whether Redis is failing and since when, the last clock save,
    the boot merge, and what could not be stored or read."""
    persistence = _persistence()
    if persistence is None or not hasattr(persistence, "status"):
        return {"error": NO_STATEDB}
    status: dict[str, Any] = persistence.status()
    return status


def inspect_statedb_status(self: Inspect) -> dict[str, Any] | None:
    """``app.control.inspect().statedb_status()``: {hostname: reply} of the workers that answered."""
    replies: dict[str, Any] | None = self._request(STATUS_COMMAND)
    return replies


if not hasattr(Inspect, STATUS_COMMAND):
    Inspect.statedb_status = inspect_statedb_status


def offer_to_celerys_cli() -> None:
    """Let ``celery inspect`` and ``celery control`` accept the commands registered here.

    Celery 5.3 fixes the names its CLI accepts when ``celery.bin.control`` is imported, before any
    ``celery.commands`` entry point (this package's) registers a command; later versions read the
    registry when the command line is parsed. Nothing to do when that module is not loaded (a worker).
    """
    import sys

    import click
    from celery.worker.control import Panel

    module = sys.modules.get("celery.bin.control")
    for name in ("inspect", "control"):
        command = getattr(module, name, None)
        for param in getattr(command, "params", ()):
            if param.name == "action" and isinstance(param.type, click.Choice):
                ours = [command_name for command_name, info in Panel.meta.items()
                        if info.type == name and info.visible]
                param.type.choices = tuple(dict.fromkeys([*param.type.choices, *ours]))

