"""The write-through set: Celery's object, changed in place, recording additions only."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from celery.utils.collections import LimitedSet
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_redis_statedb import revoked_set
from celery_redis_statedb.revoked_set import (
    WriteThroughLimitedSet,
    attach,
    detach,
    merge_unrecorded_pages,
)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def record(self, task_ids: Sequence[object]) -> None:
        self.batches.append(list(task_ids))


def make() -> tuple[LimitedSet, Recorder]:
    revoked, recorder = LimitedSet(maxlen=100, expires=3600), Recorder()
    attach(revoked, recorder)
    return revoked, recorder


def test_attach_keeps_the_same_object() -> None:
    revoked = LimitedSet(maxlen=10)
    revoked.add("before")
    alias = revoked  # what celery.worker.request bound at import time
    attach(revoked, Recorder())
    assert alias is revoked
    assert isinstance(alias, WriteThroughLimitedSet)
    assert "before" in alias


def test_add_records_one_id() -> None:
    revoked, recorder = make()
    revoked.add("a")
    assert "a" in revoked
    assert recorder.batches == [["a"]]


def test_a_nested_recording_pause_keeps_recording_off_until_the_outer_one_ends() -> None:
    revoked, recorder = make()
    with revoked_set._recording_paused():
        with revoked_set._recording_paused():
            revoked.add("inner")
        revoked.add("between")  # the inner pause ended: the outer one still holds
    revoked.add("after")
    assert recorder.batches == [["after"]]


def test_update_with_many_ids_records_one_batch() -> None:
    revoked, recorder = make()
    revoked.update(iter(["a", "b", "c"]))
    assert recorder.batches == [["a", "b", "c"]]
    assert all(task_id in revoked for task_id in "abc")


def test_update_from_a_limited_set_or_dict_records_their_ids() -> None:
    revoked, recorder = make()
    other = LimitedSet()
    other.add("x")
    revoked.update(other)
    revoked.update({"y": 1.0})
    assert recorder.batches == [["x"], ["y"]]


def test_empty_update_records_nothing() -> None:
    revoked, recorder = make()
    revoked.update([])
    assert recorder.batches == []


def test_clear_discard_and_purge_never_record() -> None:
    revoked, recorder = make()
    revoked.add("a")
    recorder.batches.clear()
    revoked.discard("a")
    revoked.purge()
    revoked.clear()  # every prefork child does this
    assert recorder.batches == []


def test_loaded_ids_are_not_written_back() -> None:
    revoked, recorder = make()
    assert merge_unrecorded_pages(revoked, [(90.0, ["older"]), (99.0, ["from-redis"])], wall=100.0, mono=1000.0) == 2
    assert "from-redis" in revoked
    assert recorder.batches == []
    assert revoked._data["older"][0] == 990.0  # stamped as old as it really is


def test_loaded_stamps_are_never_in_the_future() -> None:
    revoked, _ = make()
    merge_unrecorded_pages(revoked, [(150.0, ["skewed"])], wall=100.0, mono=1000.0)
    assert revoked._data["skewed"][0] == 1000.0


def test_limits_still_apply() -> None:
    revoked, _ = make()
    revoked.maxlen = 3
    for task_id in "abcde":
        revoked.add(task_id)
    assert len(revoked) == 3
    assert "e" in revoked


def test_detach_restores_the_plain_class() -> None:
    revoked, recorder = make()
    detach(revoked)
    revoked.add("a")
    assert type(revoked) is LimitedSet
    assert recorder.batches == []


def test_a_copy_without_recorder_still_works() -> None:
    revoked = WriteThroughLimitedSet(maxlen=5)
    revoked.add("a")
    assert "a" in revoked


def test_celery_call_paths_reach_the_recorder_on_the_real_state_object() -> None:
    """The identity trap: modules that bound state.revoked at import see the write-through too."""
    from celery.worker import request, state

    recorder = Recorder()
    saved = dict(state.revoked._data)
    attach(state.revoked, recorder)
    try:
        assert request.revoked_tasks is state.revoked
        # mingle: state.merge_revoked from Celery 5.7 on, revoked.update before
        getattr(state, "merge_revoked", state.revoked.update)(["m1", "m2"])
        request.revoked_tasks.add("expired-1")  # Request.maybe_expire
        assert recorder.batches == [["m1", "m2"], ["expired-1"]]
        assert "m1" in request.revoked_tasks
        state.reset_state()  # what every prefork child runs
        assert recorder.batches == [["m1", "m2"], ["expired-1"]]
    finally:
        detach(state.revoked)
        state.revoked.clear()
        state.revoked.update(saved)


# (wall-clock time, ids newest first), oldest page first: what boot hands over.
PAGES = [(40.0, ["c", "b", "a"]), (70.0, ["f", "e", "d"]), (100.0, ["h", "g"]), (100.0, ["i"])]


def drained(revoked: LimitedSet) -> list[tuple[object, float]]:
    """Every id with its stamp, in the order the set lets them go (oldest first)."""
    stamps = {item: entry[0] for item, entry in revoked._data.items()}
    order = []
    while (item := revoked.pop()) is not None:
        order.append((item, stamps[item]))
    return order


def loaded(pages: list[tuple[float, list[str]]], *, bulk: bool, monkeypatch: pytest.MonkeyPatch,
           mono: float = 1000.0, **limits: float) -> LimitedSet:
    revoked = LimitedSet(**limits)
    with monkeypatch.context() as patch:
        if not bulk:
            patch.setattr(revoked_set, "_entry_shape", lambda: None)  # a shape it does not know: add()
        merge_unrecorded_pages(revoked, pages, wall=100.0, mono=mono)
    return revoked


@pytest.mark.parametrize("limits", [{}, {"maxlen": 4}, {"expires": 45.0}, {"maxlen": 7, "expires": 100.0},
                                    {"maxlen": 5, "expires": 45.0}])  # the last expires a page on the way
def test_the_bulk_load_builds_the_set_add_would_build(monkeypatch: pytest.MonkeyPatch,
                                                       limits: dict[str, float]) -> None:
    mono = time.monotonic()  # expiry is checked against the real clock
    bulk = loaded(PAGES, bulk=True, monkeypatch=monkeypatch, mono=mono, **limits)
    added = loaded(PAGES, bulk=False, monkeypatch=monkeypatch, mono=mono, **limits)
    assert bulk._data.keys() == added._data.keys()
    bulk.add("new", mono)  # and it goes on working as a LimitedSet
    added.add("new", mono)
    assert drained(bulk) == drained(added)


def test_the_bulk_load_stamps_each_page_as_old_as_its_time() -> None:
    revoked = LimitedSet()
    assert merge_unrecorded_pages(revoked, PAGES, wall=100.0, mono=1000.0) == 9
    assert drained(revoked)[:4] == [("a", 940.0), ("b", 940.0), ("c", 940.0), ("d", 970.0)]


def test_an_id_in_two_pages_falls_back_to_add_and_keeps_the_newest_stamp(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = [(40.0, ["b", "a"]), (70.0, ["a"])]
    bulk = loaded(pages, bulk=True, monkeypatch=monkeypatch)
    assert drained(bulk) == drained(loaded(pages, bulk=False, monkeypatch=monkeypatch)) == [("b", 940.0),
                                                                                            ("a", 970.0)]


def test_a_set_that_holds_ids_is_merged_into_with_add() -> None:
    revoked = LimitedSet()
    revoked.add("kept", 999.0)
    assert merge_unrecorded_pages(revoked, PAGES, wall=100.0, mono=1000.0) == 9
    assert len(revoked) == 10 and drained(revoked)[6] == ("kept", 999.0)


@settings(max_examples=300, deadline=None)
@given(pages=st.lists(st.tuples(st.integers(0, 100).map(float),
                                st.lists(st.text("abcdefgh", min_size=1, max_size=3), max_size=8)), max_size=6),
       maxlen=st.integers(0, 12), expires=st.sampled_from([0.0, 30.0, 90.0]))
def test_the_bulk_load_equals_add_for_any_pages(pages: list[tuple[float, list[str]]], maxlen: int,
                                                expires: float) -> None:
    pages = sorted(pages, key=lambda page: page[0])  # oldest page first, ids in any order (and repeated)
    # The boot's windows start after the expiry horizon: no page is already expired. (Given expired
    # pages, add() keeps some until the set fills, the bulk load drops them at once.)
    pages = [(revoked_at, ids) for revoked_at, ids in pages if not expires or revoked_at > 100.0 - expires]
    mono = time.monotonic()
    merged = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        for bulk in (True, False):
            revoked = LimitedSet(maxlen=maxlen, expires=expires)
            if not bulk:
                monkeypatch.setattr(revoked_set, "_entry_shape", lambda: None)
            count = merge_unrecorded_pages(revoked, pages, wall=100.0, mono=mono)
            merged.append((count, drained(revoked)))
    assert merged[0] == merged[1]
