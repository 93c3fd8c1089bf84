"""Generates ``statedb/_sync`` from ``statedb/_async`` (as httpcore does), or checks it is current.

    python -m tests.unasync          # rewrite statedb/_sync from statedb/_async
    python -m tests.unasync --check  # exit 1, naming the files, if they differ (run by the tests)

The twins differ only by these token rewrites; anything else in the sync flavour
(a method added to it alone, say) makes the check fail.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "statedb" / "_async", ROOT / "statedb" / "_sync"
HEADER = "# Generated from statedb/_async/{name} by `python -m tests.unasync`: edit that file, not this one.\n"

# (pattern, replacement), applied in order; word boundaries keep identifiers whole.
RULES: tuple[tuple[str, str], ...] = (
    (r"\bstatedb\._async\b", "statedb._sync"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncIterable\b", "Iterable"),
    (r"\bAsyncStateRepository\b", "SyncStateRepository"),
    (r"\bopen_async_client\b", "open_sync_client"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\bAwaitable\[None\]", "None"),
    (r"\bAwaitable, ", ""),
    (r"\basync def\b", "def"),
    (r"\basync for\b", "for"),
    (r"\basync with\b", "with"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\basyncio flavour\b", "sync flavour"),
)


def unasync(text: str) -> str:
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text)
    return text


def expected(source: Path = SOURCE, target: Path = TARGET) -> dict[Path, str]:
    """Each file of statedb/_sync as it must be."""
    return {target / path.name: HEADER.format(name=path.name) + unasync(path.read_text())
            for path in sorted(source.glob("*.py"))}


def stale(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    """Files of statedb/_sync that differ from what statedb/_async generates (or should not be there)."""
    wanted = expected(source, target)
    present = set(target.glob("*.py"))
    problems = [f"{target.name}/{path.name} is out of date" for path, text in wanted.items()
                if not path.exists() or path.read_text() != text]
    problems += [f"{target.name}/{path.name} has no async source" for path in sorted(present - set(wanted))]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="Only check; write nothing.")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for problem in problems:
            print(f"{problem}: run `python -m tests.unasync`", file=sys.stderr)
        return 1 if problems else 0
    TARGET.mkdir(exist_ok=True)
    for path, text in expected().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
