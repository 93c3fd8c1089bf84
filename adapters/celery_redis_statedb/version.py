"""The version of the installed distribution: ``pyproject.toml`` is its one source."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "celery-redis-statedb"
UNKNOWN = "0+unknown"  # a valid version that sorts below every release


def installed_version(distribution: str = DISTRIBUTION) -> str:
    """What the package metadata records; ``UNKNOWN`` when the code runs from a tree never installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNKNOWN
