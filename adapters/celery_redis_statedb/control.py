"""Worker control commands of the library: live workers lift restored and purged revokes.

Registered in every worker that imports this package (the ``celery.commands`` entry
point and ``install_redis_statedb`` both do), so ``restore_tasks`` and a purge make a
task runnable again at once, without a restart.
"""

from __future__ import annotations

import math
from typing import Any

from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import control_command, ok

COMMAND = "statedb_restore"
STATUS_COMMAND = "statedb_status"
PURGE_COMMAND = "statedb_purge"


def _persistence() -> Any:
    """The worker's WorkerStatePersistence, when it keeps its state in Redis."""
    return worker_state.revoked.__dict__.get("_statedb_recorder")


@control_command(variadic="task_id", signature="[id1 [id2 [... [idN]]]]")  # type: ignore[untyped-decorator]
def statedb_restore(state: Any, task_id: Any, **kwargs: Any) -> dict[str, str]:
    """Un-revoke task ids on this worker: memory, the index of stored revokes, the pending buffer
    (Redis is left to the caller)."""
    task_ids = [tid for tid in dict.fromkeys(maybe_list(task_id) or []) if isinstance(tid, str)]
    present = [tid for tid in task_ids if tid in worker_state.revoked._data]
    persistence = _persistence()
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
        return ok("no Redis statedb on this worker")  # type: ignore[no-any-return]
    dropped = persistence.purged_before(cutoff)
    return ok(f"{dropped} purged ids dropped from memory")  # type: ignore[no-any-return]


@control_command()  # type: ignore[untyped-decorator]
def statedb_status(state: Any, **kwargs: Any) -> dict[str, Any]:
    """This worker's statedb at a glance (JSON-able): ids waiting to be written, ids honoured in memory
    only (not storable), bad members skipped at boot, keys that could not be read, since when Redis
    has been failing (wall clock, or None), and the size of the index of stored revokes."""
    persistence = _persistence()
    if persistence is None or not hasattr(persistence, "status"):
        return ok("no Redis statedb on this worker")  # type: ignore[no-any-return]
    status: dict[str, Any] = persistence.status()
    return status
