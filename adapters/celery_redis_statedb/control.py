"""The ``statedb_restore`` worker control command: live workers forget restored ids.

Registered in every worker that imports this package (the ``celery.commands``
entry point and ``install_redis_statedb`` both do), so ``restore_tasks`` can make
a restored task runnable again without a restart.
"""

from __future__ import annotations

from typing import Any

from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import control_command, ok

COMMAND = "statedb_restore"


@control_command(variadic="task_id", signature="[id1 [id2 [... [idN]]]]")  # type: ignore[untyped-decorator]
def statedb_restore(state: Any, task_id: Any, **kwargs: Any) -> dict[str, str]:
    """Drop task ids from this worker's revoked set in memory (Redis is left to the caller)."""
    task_ids = list(dict.fromkeys(maybe_list(task_id) or []))
    present = [tid for tid in task_ids if tid in worker_state.revoked]
    for tid in present:
        worker_state.revoked.discard(tid)
    return ok(f"{len(present)} of {len(task_ids)} ids restored")  # type: ignore[no-any-return]
