"""The sans-I/O layer on its own: what gets staged, and how replies are read."""

from __future__ import annotations

import pytest
from redis.exceptions import NoPermissionError, OutOfMemoryError, ReadOnlyError, ResponseError

from statedb import commands, cursors
from statedb.errors import (
    AccessDeniedError,
    ConfigurationError,
    CorruptValueError,
    InvalidInputError,
    RedisUnavailableError,
    StateDataError,
    WrongKeyTypeError,
)
from tests.recording_pipeline import staged


def test_add_revoked_is_one_zadd_lt_per_chunk_with_one_score() -> None:
    op = commands.add_revoked("k", [f"id{i}" for i in range(12)] + ["id0"], 1700.5, chunk_size=5)
    calls = staged(op)
    assert [name for name, _, _ in calls] == ["zadd"] * 3
    members = [m for _, (_, mapping), kwargs in calls for m in mapping if kwargs == {"lt": True}]
    assert members == [f"id{i}".encode() for i in range(12)]
    assert {score for _, (_, mapping), _ in calls for score in mapping.values()} == {1700.5}
    assert op.result([5, 5, 1]) == 11


def test_add_revoked_validates_every_id_before_staging_anything() -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        commands.add_revoked("k", ["ok", 7], 1.0, chunk_size=10)
    with pytest.raises(InvalidInputError, match="revocation time"):
        commands.add_revoked("k", ["ok"], float("nan"), chunk_size=10)


def test_add_revoked_at_keeps_the_earliest_time_per_id() -> None:
    op = commands.add_revoked_at("k", [("a", 5.0), ("b", 1.0), ("a", 3.0)], chunk_size=10)
    ((_, (_, mapping), kwargs),) = staged(op)
    assert mapping == {b"a": 3.0, b"b": 1.0}
    assert kwargs == {"lt": True}


def test_empty_batches_stage_nothing() -> None:
    assert staged(commands.add_revoked("k", [], 1.0, chunk_size=10)) == []
    assert commands.add_revoked("k", [], 1.0, chunk_size=10).result([]) == 0


def test_revoked_page_reads_newest_first_from_a_lower_bound() -> None:
    ((name, args, kwargs),) = staged(commands.revoked_page("k", newer_than=100.0, offset=20, count=10))
    assert (name, args) == ("zrevrangebyscore", ("k", "+inf", 100.0))
    assert kwargs == {"start": 20, "num": 10, "withscores": True}
    ((_, args, _),) = staged(commands.revoked_page("k", newer_than=None, offset=0, count=10))
    assert args[2] == "-inf"


def test_page_decoding_skips_bad_rows_into_a_collector() -> None:
    bad = commands.BadMembers()
    rows = [(b"a", 3.0), (b"\xff\xfe", 2.0), (b"b", float("inf")), (b"c", 1.0)]
    assert commands.decode_revoked_page("k", rows, bad) == [("a", 3.0), ("c", 1.0)]
    assert commands.decode_task_ids("k", [b"a", b"\xff", b"c"], bad) == ["a", "c"]
    assert bad.count == 3 and all(error.key == "k" for error in bad.errors)
    assert len(bad.unreported()) == 3 and bad.unreported() == []


def test_a_page_cursor_pages_on_past_skipped_members() -> None:
    """A page whose members are all bad is still a full page: the cursor reads on, never loops."""
    bad = commands.BadMembers()
    cursor = cursors.PageCursor("k", newer_than=None, limit=None, chunk_size=2, bad=bad)
    replies = [[(b"\xff", 3.0), (b"\xfe", 2.0)], [(b"ok", 1.0)]]
    read = []
    while (op := cursor.next_operation()) is not None:
        read.extend(cursor.feed(op.result([replies.pop(0)])))
    assert read == [("ok", 1.0)] and bad.count == 2


def test_page_decoding_names_the_key_for_corrupt_rows() -> None:
    assert commands.decode_revoked_page("k", [(b"t\xc3\xa2che", 2.0)]) == [("tâche", 2.0)]
    with pytest.raises(CorruptValueError, match="'k' holds a member that is not UTF-8"):
        commands.decode_revoked_page("k", [(b"\xff\xfe", 1.0)])
    with pytest.raises(CorruptValueError, match="non-finite score"):
        commands.decode_revoked_page("k", [(b"a", float("inf"))])


def test_page_cursor_walks_until_a_short_page() -> None:
    cursor = cursors.PageCursor("k", newer_than=None, limit=None, chunk_size=2)
    starts = []
    pages = [[("a", 3.0), ("b", 2.0)], [("c", 2.0), ("d", 2.0)], [("e", 1.0)]]
    while (op := cursor.next_operation()) is not None:
        ((_, (_, high, _), kwargs),) = staged(op)
        starts.append((high, kwargs["start"]))
        cursor.feed(pages.pop(0))
    # each page starts where the last ended, skipping only the ids read at that score
    assert starts == [("+inf", 0), (2.0, 1), (2.0, 3)]


def test_page_cursor_stops_at_the_limit_and_asks_for_no_more() -> None:
    cursor = cursors.PageCursor("k", newer_than=None, limit=3, chunk_size=2)
    asked = []
    while (op := cursor.next_operation()) is not None:
        ((_, _, kwargs),) = staged(op)
        asked.append(kwargs["num"])
        cursor.feed([("x", 1.0)] * kwargs["num"])
    assert asked == [2, 1]
    assert cursors.PageCursor("k", newer_than=None, limit=0, chunk_size=2).next_operation() is None


@pytest.mark.parametrize(("raw", "value"), [(None, 0), (b"0", 0), (b"42", 42), (b"007", 7),
                                            (b"9007199254740992", 2**53), (str(2**60).encode(), 2**60),
                                            (b"1" * 40, int("1" * 40)), (b"9" * 4000, int("9" * 4000))])
def test_parse_clock_reads_any_non_negative_integer(raw: bytes | None, value: int) -> None:
    assert commands.parse_clock("c", raw) == value


@pytest.mark.parametrize("raw", [b"", b"-1", b"1.5", b"abc", b" 1", b"1\n", b"\x80", b"1e9", b"9" * 4001])
def test_parse_clock_refuses_non_digits_naming_the_key(raw: bytes) -> None:
    with pytest.raises(CorruptValueError, match="'c' does not hold"):
        commands.parse_clock("c", raw)


@pytest.mark.parametrize("value", [-1, 1.0, True, "5", 2 ** 12001])
def test_advance_clock_refuses_bad_values(value: object) -> None:
    with pytest.raises(InvalidInputError):
        commands.advance_clock("c", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [2**53, 2**60, 10**3000])
def test_advance_clock_stores_any_size_as_decimal_text(value: int) -> None:
    ((name, args, _),) = staged(commands.advance_clock("c", value))
    assert (name, args[1:]) == ("eval", (1, "c", str(value)))
    assert commands.advance_clock("c", value).result([[str(value).encode(), 0]]).stored == value


def test_implausible_clocks_are_named_never_refused() -> None:
    assert commands.implausible_clock(5, None) is None
    assert commands.implausible_clock(2**53 - 1, 2**53 - 5) is None
    assert "above 2**53" in (commands.implausible_clock(2**60, None) or "")
    assert "jumped" in (commands.implausible_clock(2**33, 10) or "")
    assert commands.implausible_clock(2**32, 0) is None


def test_advance_clock_reports_whether_the_key_was_created() -> None:
    op = commands.advance_clock("c", 7)
    assert op.result([[b"7", 1]]) == commands.ClockAdvance(7, True)
    assert op.result([[b"9", 0]]) == commands.ClockAdvance(9, False)


def test_save_clock_stages_the_info_hash_after_the_advance_and_never_fails_for_it() -> None:
    info = commands.WorkerInfo(1e9 + 0.5, "worker", "1.0")
    op = commands.save_clock("c", 7, "i", info)
    calls = staged(op)
    assert [name for name, _, _ in calls] == ["eval", "hset"]
    assert calls[1][1:] == (("i",), {"mapping": {"last_seen": "1000000000.500000", "scope": "worker",
                                                 "version": "1.0"}})
    assert op.result([[b"7", 0], 3]) == commands.ClockSave(commands.ClockAdvance(7, False), None)
    refused = op.result([[b"7", 0], NoPermissionError("this user has no permissions to run the 'hset' command")])
    assert refused.advance == commands.ClockAdvance(7, False)
    assert isinstance(refused.info_error, AccessDeniedError) and "'i'" in str(refused.info_error)
    with pytest.raises(CorruptValueError):
        op.result([ResponseError(f"ERR {commands.CLOCK_CORRUPT_MARKER}"), 3])
    assert [name for name, _, _ in staged(commands.save_clock("c", 7))] == ["eval"]


@pytest.mark.parametrize("when", [float("nan"), float("inf"), -1.0])
def test_the_info_hash_refuses_a_last_seen_that_is_no_time(when: float) -> None:
    with pytest.raises(InvalidInputError, match="last seen time"):
        commands.write_info("i", commands.WorkerInfo(when, "worker", "1.0"))


def test_error_replies_become_library_errors_naming_the_key() -> None:
    op = commands.count_revoked("the:key")
    with pytest.raises(WrongKeyTypeError, match="'the:key'") as info:
        op.result([ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")])
    assert info.value.key == "the:key"
    with pytest.raises(StateDataError, match="'the:key'"):
        op.result([ResponseError("ERR something else")])


@pytest.mark.parametrize(
    "error",
    [ReadOnlyError("You can't write against a read only replica."), ResponseError("MASTERDOWN Link is down"),
     ResponseError("MISCONF Errors writing to the AOF file"), OutOfMemoryError("command not allowed"),
     ResponseError("TRYAGAIN Multiple keys request during rehashing")],
)
def test_transient_server_errors_are_outages_not_data_errors(error: Exception) -> None:
    with pytest.raises(RedisUnavailableError):
        commands.count_revoked("k").result([error])


def test_an_old_server_is_named_as_the_problem() -> None:
    with pytest.raises(ConfigurationError, match=r"Redis >= 6.2 or Valkey is required"):
        commands.check_zadd_lt("k").result([ResponseError("ERR syntax error")])
