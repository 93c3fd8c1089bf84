"""Celery's own file statedb, written by Celery's ``Persistent``: what the migration reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

from celery.utils.collections import LimitedSet
from celery.worker.state import Persistent
from kombu.clocks import LamportClock


def write_celery_statedb(path: Path, ids: Iterable[str], clock: int) -> int:
    """Save ``ids`` and a clock at ``clock`` as a worker's ``--statedb`` file (v3 layout, this Python's dbm).

    Returns the clock stored: ``save()`` stores ``clock.forward()``, more than ``clock``.
    """
    revoked = LimitedSet(maxlen=50_000, expires=10_800)
    for task_id in ids:
        revoked.add(task_id)
    lamport = LamportClock(initial_value=clock)
    Persistent(SimpleNamespace(revoked=revoked, merge_revoked=revoked.update), str(path), lamport).save()
    return lamport.value
