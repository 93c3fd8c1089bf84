"""The README's first command must keep telling the truth."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.e2e
def test_demo_shows_the_revoke_surviving_only_in_redis(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery_redis_statedb.demo", "--redis-url", redis_url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plain Celery (file)   yes                   task RAN" in done.stdout
    assert "redis statedb         yes                   task DISCARDED" in done.stdout
    assert "Traceback" not in done.stderr
