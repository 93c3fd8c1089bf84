"""Pickles that run code when loaded: planted where the library reads, they must never run.

Two payloads, so that a refusal can be checked to name the global it refused: :class:`Exploit`
calls ``os.system`` (``posix.system``), :class:`Evil` calls ``exec`` (``builtins.exec``). Each
creates ``marker`` if it ever runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest


class Exploit:
    """A pickle that, if ever loaded, creates ``marker`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def payloads(marker: Path) -> tuple[bytes, bytes]:
    """:class:`Exploit` pickled twice: (protocol 0: ASCII, valid UTF-8 text; protocol 5: binary, not UTF-8)."""
    text, binary = pickle.dumps(Exploit(marker), protocol=0), pickle.dumps(Exploit(marker), protocol=5)
    text.decode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        binary.decode("utf-8")
    return text, binary


class Evil:
    """A pickle that runs code when loaded: creates ``marker`` through ``exec``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(Evil(marker), protocol=4)
