"""Reads in several round trips, sans-I/O: each cursor hands out the next operation, then
turns its replies into rows. A repository drives them (``_walk``); nothing here does I/O.

- :class:`PageCursor`: (task id, revocation time) rows, newest first, keyset paging.
- :class:`WindowCursor`: boot's read of the newest ids, by windows of revocation time.
- :class:`RankCursor`: the stored ids beyond them, by rank (ids only).

Each asks for a bounded number of rows a round trip (:class:`TripBudget`): Redis buffers a
trip's replies for its reader, so a boot never makes it hold more than about ``TRIP_BYTES``
for one worker, however many of them boot at once.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from statedb.commands import (
    BadMembers,
    Operation,
    PipelineLike,
    decode_revoked_page,
    decode_task_ids,
    revoked_page,
)
from statedb.errors import CorruptValueError, InvalidInputError

R_co = TypeVar("R_co", covariant=True)
MAX_RANK_PAGES_PER_TRIP = 4
# About this many bytes of replies a round trip: the rows asked for times the mean size of those read so far.
TRIP_BYTES = 1 << 20
# Rows asked for while no row has been read yet (their size unknown).
FIRST_TRIP_ROWS = 1024
ROW_OVERHEAD = 8  # RESP framing of one member ("$36\r\n...\r\n")
SCORE_BYTES = 24  # a score as RESP2 text, framing included


class TripBudget:
    """How many rows one round trip may ask for: ``trip_bytes`` of replies at the mean size of
    the rows read so far (``FIRST_TRIP_ROWS`` before any). ``trip_bytes=None``: no bound."""

    def __init__(self, trip_bytes: int | None = TRIP_BYTES) -> None:
        if trip_bytes is not None and (isinstance(trip_bytes, bool) or not isinstance(trip_bytes, int)
                                       or trip_bytes < 1):
            raise InvalidInputError(f"trip bytes must be a positive integer or None, got {trip_bytes!r}")
        self.trip_bytes = trip_bytes
        self.rows_seen = 0
        self.bytes_seen = 0

    def rows(self) -> int | None:
        if self.trip_bytes is None:
            return None
        if not self.rows_seen:
            return FIRST_TRIP_ROWS
        return max(1, self.trip_bytes * self.rows_seen // self.bytes_seen)

    def saw(self, rows: int, nbytes: int) -> None:
        """``rows`` rows came back, ``nbytes`` bytes of members (and scores) in all."""
        self.rows_seen += rows
        self.bytes_seen += nbytes + rows * ROW_OVERHEAD


def member_bytes(reply: Sequence[Any], *, scored: bool) -> int:
    """The bytes of a ZRANGE-style reply (members, or (member, score) rows) as the budget counts them."""
    if scored:
        return sum(map(len, map(operator.itemgetter(0), reply))) + SCORE_BYTES * len(reply)
    return sum(map(len, reply))


class Cursor(Protocol[R_co]):
    """A read in several round trips: the next operation (None when done), then what its reply yields."""

    def next_operation(self) -> Operation[Any] | None: ...
    def feed(self, reply: Any, /) -> Sequence[R_co]: ...


class KeysetCursor(Generic[R_co]):
    """Walks a sorted set newest first, page by page, up to ``limit`` rows (keyset paging).

    Each page starts at the score where the previous one ended and skips only the
    rows already read at that very score: the server never walks the pages read
    before, which a LIMIT offset does (N rows in pages then cost O(N^2 / page) on
    the server). Rows added meanwhile with a newer score are not read; rows purged
    below the cursor shift nothing. Subclasses say how a page is read and where a
    row's score is.
    """

    def __init__(self, key: str, *, newer_than: float | None, limit: int | None, chunk_size: int,
                 bad: BadMembers | None = None, trip_bytes: int | None = TRIP_BYTES) -> None:
        self.bad = bad  # where bad members are skipped to (None: raised)
        self.budget = TripBudget(trip_bytes)
        if chunk_size < 1:
            raise InvalidInputError(f"chunk size must be at least 1, got {chunk_size!r}")
        self.key, self.newer_than, self.limit, self.chunk_size = key, newer_than, limit, chunk_size
        self.rows_read = 0  # rows read so far, bad members included
        self.high: float | str = "+inf"  # the score the next page starts at
        self.skip = 0  # rows already read at exactly that score
        self._requested = 0
        self._raw: Sequence[Any] | None = None  # the last page's rows as read (set by its parse)
        self.done = limit is not None and limit <= 0

    def page(self, *, offset: int, count: int, high: float | str) -> Operation[list[R_co]]:
        raise NotImplementedError

    @staticmethod
    def score(row: Any) -> float:
        raise NotImplementedError

    def next_operation(self) -> Operation[list[R_co]] | None:
        if self.done:
            return None
        left = None if self.limit is None else self.limit - self.rows_read
        rows = self.budget.rows()
        self._requested = min([self.chunk_size, *(n for n in (left, rows) if n is not None)])
        self._raw = None
        operation = self.page(offset=self.skip, count=self._requested, high=self.high)
        parse = operation.parse

        def keep_raw(replies: Sequence[Any]) -> list[R_co]:
            self._raw = replies[0]  # the (member, score) rows as read, bad ones included
            self.budget.saw(len(replies[0]), member_bytes(replies[0], scored=True))
            return parse(replies)

        return Operation(operation.keys, operation.stage, keep_raw)

    def feed(self, page: list[R_co]) -> list[R_co]:
        # Paging follows the rows as read: a bad member skipped from the page still counts.
        raw = self._raw
        rows, score = (page, self.score) if raw is None else (raw, lambda row: float(row[1]))
        self.rows_read += len(rows)
        if len(rows) < self._requested or (self.limit is not None and self.rows_read >= self.limit):
            self.done = True
        elif rows:
            last = score(rows[-1])
            ties = 0
            for row in reversed(rows):
                if score(row) != last:
                    break
                ties += 1
            self.skip = self.skip + ties if last == self.high else ties
            self.high = last
        return page


class PageCursor(KeysetCursor[tuple[str, float]]):
    """(task id, revocation time) rows of a revoked set, newest first."""

    def page(self, *, offset: int, count: int, high: float | str) -> Operation[list[tuple[str, float]]]:
        return revoked_page(self.key, newer_than=self.newer_than, offset=offset, count=count, high=high,
                            bad=self.bad)

    @staticmethod
    def score(row: Any) -> float:
        return float(row[1])


MAX_WINDOWS = 1000


def window_bounds(now: float, newer_than: float, width: float, *, above: bool = False
                  ) -> list[tuple[str, str, float]]:
    """Score windows newest first: (now, +inf], then (now - width, now], ... down to newer_than
    (strictly above it if ``above``).

    Each is (max, min) in ZRANGE BYSCORE syntax and the wall-clock time its ids are
    stamped with: its newest bound (``now`` for ids stamped in the future). There are
    at most MAX_WINDOWS below ``now`` (wider ones if ``width`` asks for more), so a
    width too small for the float precision of the times still ends.
    """
    if not (math.isfinite(width) and width > 0):
        raise InvalidInputError(f"window width must be finite and greater than zero, got {width!r}")
    if not (math.isfinite(now) and math.isfinite(newer_than)):
        raise InvalidInputError(f"window bounds must be finite, got {now!r} and {newer_than!r}")
    if above and newer_than >= now:
        return [("+inf", f"({newer_than!r}", now)]
    windows = [("+inf", f"({now!r}", now)]
    span = now - newer_than
    if span < 0:
        return windows
    count = max(1, min(MAX_WINDOWS, math.ceil(span / width)))
    bounds = [now - span * i / count for i in range(count)]
    for high, low in itertools.pairwise(bounds):
        windows.append((repr(high), f"({low!r}", high))
    windows.append((repr(bounds[-1]), f"({newer_than!r}" if above else repr(newer_than), bounds[-1]))
    return windows


MAX_READ_AHEAD = 128
MIN_WINDOW_ASK = 16  # ids asked of a window (within the budget) however sparse the windows before it


class WindowCursor:
    """Walks a revoked set newest first by windows of revocation time, reading ids only.

    Boot's fast path: no score crosses the wire (formatting and parsing the scores
    costs more than the ids themselves), and every id is stamped with the newest
    bound of its window, so it is taken to be at most one window width younger than
    it is: it may stay in memory up to that much longer, never shorter. Up to
    ``chunk_size`` ids per command (a fuller window is read on with LIMIT offsets),
    ``per_trip`` commands per round trip at first, and ``limit`` ids in all, the
    newest. While windows come back less than full the read-ahead doubles (up to
    MAX_READ_AHEAD windows a trip), so an empty or sparse set costs a few round trips,
    not one per ``per_trip`` windows; the ids asked for in one trip stay within the
    trip budget (each window is asked for a quarter more than the most any window
    held so far). Windows are ranges of scores, so ids added or purged meanwhile in other
    windows shift nothing. ZREVRANGEBYSCORE only: the documented worker ACL fits.
    """

    def __init__(self, key: str, *, now: float, newer_than: float, width: float, limit: int | None,
                 chunk_size: int, per_trip: int = 8, bad: BadMembers | None = None,
                 trip_bytes: int | None = TRIP_BYTES, above: bool = False) -> None:
        self.key, self.limit, self.chunk_size, self.per_trip, self.bad = key, limit, chunk_size, per_trip, bad
        self.windows = window_bounds(now, newer_than, width, above=above)
        self.budget = TripBudget(trip_bytes)
        self.densest = 0  # the most ids read of one window so far
        self.expect = (0, 0)  # the (window, offset) page to hand out next
        self.received: dict[tuple[int, int], tuple[int, list[str], int]] = {}  # page -> (asked for, ids, read)
        self._raw_lengths: list[int] = []
        self.loaded = 0
        # Ranks of the set (newest first) the pages handed out cover, bad members skipped in them
        # included; a page cut short by the limit counts its ids kept only (never more than it covers).
        self.ranks = 0
        self.reach = per_trip  # windows read ahead in one trip
        self.done = limit is not None and limit <= 0
        self._plan: list[tuple[int, int, int]] = []  # (window, offset, ids asked for)

    def next_operation(self) -> Operation[list[list[str]]] | None:
        if self.done:
            return None
        window, offset = self.expect
        left = None if self.limit is None else self.limit - self.loaded
        count = self.chunk_size if left is None else min(self.chunk_size, left)
        rows = self.budget.rows()
        if rows is None:  # no bound: the read-ahead of 0.5
            if offset:  # this window holds more than a page: read on in it
                pages = self.per_trip if left is None else min(self.per_trip, -(-left // self.chunk_size))
                plan = [(window, offset + i * self.chunk_size, self.chunk_size) for i in range(pages)]
            else:
                plan = [(w, 0, count) for w in range(window, min(window + self.reach, len(self.windows)))]
        else:
            plan = self._plan_within(window, offset, count, left, rows)
        plan = self._plan = [page for page in plan if page[:2] not in self.received]
        key, windows, bad, budget = self.key, self.windows, self.bad, self.budget

        def stage(pipe: PipelineLike) -> None:
            for w, start, num in plan:
                high, low, _ = windows[w]
                # Window 0 (ids stamped in the future, normally none) is read with its
                # scores: +inf, the only corrupt score that can sort there, stops the boot.
                pipe.zrevrangebyscore(key, high, low, start=start, num=num, withscores=w == 0)

        def parse(replies: Sequence[Any]) -> list[list[str]]:
            self._raw_lengths = [len(reply) for reply in replies]  # bad members skipped still count
            budget.saw(sum(self._raw_lengths), sum(member_bytes(reply, scored=w == 0)
                                                   for (w, _, _), reply in zip(plan, replies, strict=True)))
            return [[task_id for task_id, _ in decode_revoked_page(key, reply, bad)] if w == 0
                    else decode_task_ids(key, reply, bad) for (w, _, _), reply in zip(plan, replies, strict=True)]

        return Operation((key,) * len(plan), stage, parse)

    def _plan_within(self, window: int, offset: int, count: int, left: int | None, rows: int
                     ) -> list[tuple[int, int, int]]:
        """One page for each of the next windows not read to their end, asking ``rows`` ids in all: a
        window not read yet for a quarter more than the most any window held so far, one read on (it
        held more than it was asked for) for as many again as were read of it."""
        guess = self.densest + self.densest // 4 if self.densest else rows // max(1, self.reach)
        plan: list[tuple[int, int, int]] = []
        budget, w = rows, window
        while w < len(self.windows) and budget > 0 and len(plan) < self.reach:
            at = offset if w == window else self._read_on_from(w)
            if at is not None:
                ask = max(MIN_WINDOW_ASK, at if at else guess)
                plan.append((w, at, max(1, min(count, budget, ask))))
                budget -= plan[-1][2]
            w += 1
        return plan

    def _read_on_from(self, window: int) -> int | None:
        """Where the next page of ``window`` starts, given the pages received (None: read to its end)."""
        at = 0
        while (window, at) in self.received:
            asked, _, got = self.received[window, at]
            if got < asked:
                return None
            at += asked
        return at

    def feed(self, pages: list[list[str]]) -> list[tuple[float, list[str]]]:
        """The pages now ready, in order: (wall-clock stamp, ids newest first)."""
        raw = self._raw_lengths if len(self._raw_lengths) == len(pages) else [len(ids) for ids in pages]
        self._raw_lengths = []
        for (w, start, num), ids, got in zip(self._plan, pages, raw, strict=True):
            self.received[w, start] = (num, ids, got)
        heads = [got < num for (_, start, num), got in zip(self._plan, raw, strict=True) if not start]
        self.densest = max([self.densest, *(start + got for (_, start, _), got in zip(self._plan, raw, strict=True))])
        if heads:  # windows read from their start: all short means a sparse stretch, read further ahead
            self.reach = min(MAX_READ_AHEAD, self.reach * 2) if all(heads) else self.per_trip
        ready: list[tuple[float, list[str]]] = []
        while not self.done and self.expect in self.received:
            window, offset = self.expect
            asked, ids, got = self.received.pop(self.expect)
            # A page cut short by the limit is "full" too: the limit then ends the walk below.
            full = got == asked
            if self.limit is not None and len(ids) > self.limit - self.loaded:
                ids = ids[: self.limit - self.loaded]
                self.ranks += len(ids)
            else:
                self.ranks += got
            if ids:
                ready.append((self.windows[window][2], ids))
                self.loaded += len(ids)
            if self.limit is not None and self.loaded >= self.limit:
                self.done = True
            elif full:
                self.expect = (window, offset + asked)
            elif window + 1 < len(self.windows):
                self.expect = (window + 1, 0)
            else:
                self.done = True
        # Pages read on past the end of a window are never handed out.
        self.received = {page: got for page, got in self.received.items() if page[0] > self.expect[0]}
        return ready


class RankCursor:
    """Ids (bytes, as stored) of ranks ``start`` to ``stop - 1``, newest first, ``chunk_size`` a command.

    Ranks are read as they are when each page is read: an id added meanwhile at the
    top shifts the rest down by one (an id read twice, harmless in a set, and the last
    one pushed past ``stop``: the boot reads those afterwards, see
    ``boot_merge._pushed_down``); one removed above the cursor shifts them up (one id
    not read until the next boot).
    """

    def __init__(self, key: str, *, start: int, stop: int, chunk_size: int,
                 per_trip: int = MAX_RANK_PAGES_PER_TRIP, bad: BadMembers | None = None,
                 trip_bytes: int | None = TRIP_BYTES) -> None:
        self.key, self.next, self.stop, self.chunk_size, self.per_trip = key, start, stop, chunk_size, per_trip
        self.bad = bad  # where members that are not UTF-8 are skipped to (None: kept, inert in the index)
        self.budget = TripBudget(trip_bytes)
        self._plan: list[tuple[int, int]] = []

    def next_operation(self) -> Operation[list[list[bytes]]] | None:
        if self.next >= self.stop:
            return None
        rows = self.budget.rows()
        size = self.chunk_size if rows is None else min(self.chunk_size, rows)
        per_trip = self.per_trip if rows is None else max(1, min(self.per_trip, rows // size))
        pages: list[tuple[int, int]] = []
        at = self.next
        while at < self.stop and len(pages) < per_trip:
            end = min(self.stop, at + size)
            pages.append((at, end - 1))
            at = end
        self.next = at
        self._plan = pages
        key, budget = self.key, self.budget

        def parse(replies: Sequence[Any]) -> list[list[bytes]]:
            budget.saw(sum(map(len, replies)), sum(member_bytes(reply, scored=False) for reply in replies))
            return [list(reply) for reply in replies]

        def stage(pipe: PipelineLike) -> None:
            for first, last in pages:
                pipe.zrevrange(key, first, last)

        return Operation((key,) * len(pages), stage, parse)

    def feed(self, pages: list[list[bytes]]) -> list[list[bytes]]:
        if any(len(page) < last - first + 1 for (first, last), page in zip(self._plan, pages, strict=True)):
            self.next = self.stop  # the set shrank meanwhile: nothing further down
        if self.bad is not None:
            pages = [page if b"".join(page).isascii() else self._text_only(page) for page in pages]
        return pages

    def _text_only(self, page: list[bytes]) -> list[bytes]:
        """The members of ``page`` that are UTF-8 (no task id can be any other); the rest are skipped."""
        kept = []
        for member in page:
            try:
                member.decode("utf-8")
            except UnicodeDecodeError:
                assert self.bad is not None
                self.bad.skip(CorruptValueError(
                    f"Redis key {self.key!r} holds a member that is not UTF-8 text: {member[:60]!r}", key=self.key))
                continue
            kept.append(member)
        return kept
