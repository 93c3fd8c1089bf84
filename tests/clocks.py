"""A host whose wall clock is off: for the tests of revocation times on the server's clock."""

from __future__ import annotations

import time
import types


class SkewedTime(types.SimpleNamespace):
    """A ``time`` module whose wall clock is ``skew`` seconds off (monotonic untouched)."""

    def __init__(self, skew: float) -> None:
        super().__init__(time=lambda: time.time() + skew, monotonic=time.monotonic, sleep=time.sleep)
