"""The sync twin (statedb/_sync) is exactly what statedb/_async generates: the two cannot drift."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import statedb
from tests import unasync


def test_the_sync_twin_is_generated_from_the_async_source() -> None:
    assert unasync.stale() == [], "run `python -m tests.unasync` and commit statedb/_sync"


def test_the_check_fails_when_a_method_is_added_to_one_twin_only(tmp_path: Path) -> None:
    source, target = tmp_path / "_async", tmp_path / "_sync"
    shutil.copytree(unasync.SOURCE, source)
    shutil.copytree(unasync.TARGET, target)
    assert unasync.stale(source, target) == []
    sync_file = target / "repository.py"
    sync_file.write_text(sync_file.read_text() + "\n    def only_here(self) -> None:\n        pass\n")
    assert unasync.stale(source, target) == ["_sync/repository.py is out of date"]
    sync_file.write_text(unasync.expected(source, target)[sync_file])
    async_file = source / "repository.py"
    async_file.write_text(async_file.read_text() + "\n    async def only_here(self) -> None:\n        pass\n")
    assert unasync.stale(source, target) == ["_sync/repository.py is out of date"]


def test_the_command_line_check_passes_on_this_tree() -> None:
    done = subprocess.run([sys.executable, "-m", "tests.unasync", "--check"], capture_output=True, text=True,
                          cwd=unasync.ROOT, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_public_methods_match_one_for_one() -> None:
    """Every public method of one twin exists in the other with the same parameters."""
    def methods(cls: type) -> dict[str, list[str]]:
        renamed = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
        dunders = {"__init__", *renamed, *renamed.values()}
        return {renamed.get(name, name): list(inspect.signature(member).parameters)
                for name, member in vars(cls).items()
                if callable(member) and (not name.startswith("_") or name in dunders)}

    assert methods(statedb.AsyncStateRepository) == methods(statedb.SyncStateRepository)
    assert "iter_revoked_windows" in methods(statedb.AsyncStateRepository)
