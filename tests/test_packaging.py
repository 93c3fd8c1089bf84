"""What users install: two import packages with py.typed, the entry point, and no 'adapters'."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    (path,) = out.glob("celery_redis_statedb-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_ships_both_packages_typed_and_nothing_named_adapters(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"statedb", "celery_redis_statedb"}
    assert "statedb/py.typed" in names
    assert "celery_redis_statedb/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "[celery.commands]" in text
    assert "statedb = celery_redis_statedb.cli:statedb" in text


def test_the_core_never_imports_celery() -> None:
    code = ("import importlib, pkgutil, sys, statedb\n"
            "for module in pkgutil.walk_packages(statedb.__path__, 'statedb.'):\n"
            "    importlib.import_module(module.name)\n"
            "print('celery' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert done.stdout.strip() == "False"


def test_adapters_is_not_importable_from_the_install() -> None:
    done = subprocess.run([sys.executable, "-c", "import adapters"], capture_output=True, text=True,
                          check=False, cwd="/")
    assert done.returncode != 0
    assert "No module named 'adapters'" in done.stderr


def test_the_version_is_the_one_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    import celery_redis_statedb

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert celery_redis_statedb.__version__ == declared


def test_the_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    """Installed metadata of another version, found first: __version__ follows it (no copy in the code)."""
    info = tmp_path / "celery_redis_statedb-9.8.7.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: celery-redis-statedb\nVersion: 9.8.7\n")
    code = "import celery_redis_statedb; print(celery_redis_statedb.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.stdout.strip() == "9.8.7"


def test_a_tree_never_installed_has_a_version_below_every_release() -> None:
    from packaging.version import Version

    from celery_redis_statedb.version import UNKNOWN, installed_version

    assert installed_version("celery-redis-statedb-never-installed") == UNKNOWN
    assert Version(UNKNOWN) < Version("0.0.1")
