"""What the fault and loss scenarios measure: ids missing from Redis, and the ``GUARANTEE`` line they print."""

from __future__ import annotations

import pytest
import redis


def guarantee(capsys: pytest.CaptureFixture[str], scenario: str, **figures: object) -> None:
    """One ``GUARANTEE`` line, shown even when output is captured."""
    line = " ".join(["GUARANTEE", f"scenario={scenario}", *(f"{k}={v}" for k, v in figures.items())])
    with capsys.disabled():
        print(f"\n{line}")


def missing_from(client: redis.Redis, key: str, task_ids: list[str]) -> list[str]:
    """The ids of ``task_ids`` that ``key`` does not hold (pipelined ZSCOREs)."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.zscore(key, task_id)
    return [task_id for task_id, score in zip(task_ids, pipe.execute(), strict=True) if score is None]
