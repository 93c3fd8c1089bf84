"""Measure proposed library patches without touching the library: ``run_all.py --proposed``.

The patches in ``benchmarks/proposed/*.diff`` (unified diffs against the working tree, paths
``a/statedb/...``, ``a/adapters/...``) are applied with ``patch -p1`` to a temporary COPY of
``statedb/`` and ``adapters/``, which is then put first on ``sys.path`` (the editable install's
finder comes after ``sys.path``) and on ``PYTHONPATH`` (for the worker subprocesses). This must
run before anything imports ``statedb`` or ``celery_redis_statedb``.

A patch that no longer applies (already merged, or the file moved on) is reported and skipped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PATCHES = HERE / "proposed"


def available(names: list[str] | None = None) -> list[Path]:
    found = sorted(PATCHES.glob("*.diff"))
    if names:
        found = [p for p in found if any(p.name.startswith(n) or p.stem == n for n in names)]
    return found


def activate(names: list[str] | None = None) -> tuple[Path, list[str]]:
    """Copy the library, apply the patches, put the copy first; returns (copy, report lines)."""
    if "statedb" in sys.modules or "celery_redis_statedb" in sys.modules:
        raise RuntimeError("activate() must run before the library is imported")
    copy = Path(tempfile.mkdtemp(prefix="statedb-proposed-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    shutil.copytree(REPO / "statedb", copy / "statedb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "adapters", copy / "adapters", ignore=shutil.ignore_patterns("__pycache__"))
    report = []
    for patch in available(names):
        check = subprocess.run(["patch", "-p1", "--dry-run", "--forward", "--batch", "-s", "-d", str(copy),
                                "-i", str(patch)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            report.append(f"{patch.name}: NOT applied ({(check.stdout + check.stderr).strip().splitlines()[:1]})")
            continue
        subprocess.run(["patch", "-p1", "--forward", "--batch", "-s", "-d", str(copy), "-i", str(patch)], check=True)
        report.append(f"{patch.name}: applied")
    paths = [str(copy), str(copy / "adapters")]
    sys.path[0:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return copy, report
