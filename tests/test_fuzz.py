"""Property-based tests (hypothesis) of the key schema, the names and the sans-I/O command layer.

Pure properties run many examples; the ones against a real server (a private one, flushed
between examples) run a bounded number, so the file stays fast in CI.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from celery_redis_statedb import SyncStateRepository
from celery_redis_statedb.local_servers import PrivateServer
from statedb import (
    ConfigurationError,
    InvalidInputError,
    KeySchema,
    Scope,
    StateDBConfig,
    StateDBError,
    commands,
    cursors,
    mask_url,
)
from statedb import admin as async_admin
from statedb.errors import CorruptValueError, StateDataError, WrongKeyTypeError
from statedb.keys import CLOCK_SUFFIX, REVOKED_SUFFIX, glob_escape
from statedb.names import MAX_NAME_CHARS, MAX_TASK_ID_BYTES, check_name, encode_task_id
from tests.recording_pipeline import staged

PURE = settings(max_examples=300, deadline=None)
SERVER = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text without control characters or lone surrogates: what a name may be.
name_chars = st.characters(blacklist_categories=("Cc", "Cs"))
names = st.text(name_chars, min_size=1, max_size=40)
# Glob-heavy names: the characters a SCAN pattern would otherwise interpret.
globby = st.text(st.sampled_from("*?[]\\^-!:@ab"), min_size=1, max_size=12)
any_names = st.one_of(names, globby)
# What an id may be: any text without control characters, line separators or lone surrogates (issue 12:
# ids that break a line-oriented output are refused).
task_ids = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=30)
any_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=20),
                     st.text(max_size=20), st.lists(st.integers(), max_size=3))


# -- names and keys ------------------------------------------------------------------------------


@PURE
@given(prefix=any_names, worker=any_names)
def test_worker_keys_are_the_documented_layout_and_parse_back(prefix: str, worker: str) -> None:
    schema = KeySchema(prefix)
    keys = schema.for_worker(worker)
    assert keys.revoked == f"{prefix}{worker}{REVOKED_SUFFIX}"
    assert keys.clock == f"{prefix}{worker}{CLOCK_SUFFIX}"
    assert keys.shared == schema.shared_revoked_key == f"{prefix}shared:fleet-revoked"
    assert schema.parse(keys.revoked) == (worker, "revoked")
    assert schema.parse(keys.clock) == (worker, "clock")
    assert schema.parse(keys.shared) is None
    assert keys.info == f"{prefix}{worker}:info" and schema.parse(keys.info) == (worker, "info")
    assert len({keys.revoked, keys.clock, keys.shared, keys.info}) == 4
    shared = schema.for_worker(worker, Scope.SHARED)
    assert shared.revoked == keys.shared and shared.clock == keys.clock and shared.info == keys.info


@PURE
@given(prefix=any_names, first=any_names, second=any_names)
def test_different_workers_never_share_a_key(prefix: str, first: str, second: str) -> None:
    assume(first != second)
    schema = KeySchema(prefix)
    a, b = schema.for_worker(first), schema.for_worker(second)
    assert not {a.revoked, a.clock} & {b.revoked, b.clock}


@PURE
@given(value=st.one_of(anything, st.text(max_size=MAX_NAME_CHARS + 5)))
def test_check_name_accepts_text_or_raises_invalid_input(value: object) -> None:
    try:
        result = check_name(value, "worker name")
    except InvalidInputError as exc:
        assert "worker name" in str(exc) and len(str(exc)) < 300
        return
    assert isinstance(value, str) and result == value
    assert 0 < len(value) <= MAX_NAME_CHARS
    assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def _breaks_lines(value: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


@PURE
@given(value=st.one_of(anything, task_ids, any_text, st.text(max_size=10)))
def test_encode_task_id_round_trips_or_raises_invalid_input(value: object) -> None:
    try:
        raw = encode_task_id(value)
    except InvalidInputError as exc:
        assert len(str(exc)) < 300
        assert (not isinstance(value, str) or not value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
                or _breaks_lines(value))
        return
    assert isinstance(value, str) and raw.decode("utf-8") == value and 0 < len(raw) <= MAX_TASK_ID_BYTES
    assert not _breaks_lines(value)


@PURE
@given(value=any_text)
def test_the_fast_path_and_the_full_check_agree(value: str) -> None:
    """commands' ASCII fast path refuses exactly what encode_task_id refuses (control characters are ASCII)."""
    try:
        expected: bytes | None = encode_task_id(value)
    except InvalidInputError:
        expected = None
    try:
        (got,) = commands.encode_task_ids([value])
    except InvalidInputError:
        assert expected is None
    else:
        assert got == expected


@PURE
@given(size=st.integers(min_value=MAX_TASK_ID_BYTES - 3, max_value=MAX_TASK_ID_BYTES + 3), char=st.sampled_from("aé✓"))
def test_the_task_id_limit_is_in_bytes(size: int, char: str) -> None:
    task_id = char * (size // len(char.encode()))
    fits = len(task_id.encode()) <= MAX_TASK_ID_BYTES
    try:
        encode_task_id(task_id)
    except InvalidInputError as exc:
        assert not fits and "bytes long" in str(exc)
    else:
        assert fits


# -- URLs: masking and validation never show a password -----------------------------------------

# Random text around a marker no message of the library contains, so that finding it means a leak.
passwords = st.text(st.characters(blacklist_categories=("Cs",)), max_size=16).map(lambda text: f"Ω{text}Ω")
users = st.text(st.sampled_from("abcdefgh-_1"), max_size=6)
hosts = st.sampled_from(["127.0.0.1", "redis.example.com", "[::1]", "h", "h1,h2:26380"])
tails = st.sampled_from(["/0", "/1", "", "/abc", "/0?ssl_cert_reqs=required", "/0?db=x", ":notaport/0",
                         ":99999/0", "/0?socket_timeout=1", "/0?x=a@b", "/svc/0", "/svc?sentinel_password=x",
                         "/0?master_name=m", ";sentinel://h2/0?master_name=m"])


@PURE
@given(scheme=st.sampled_from(["redis", "rediss", "REDIS", "unix", "http", "redis+sentinel", "rediss+sentinel",
                               "sentinel"]), user=users, password=passwords,
       host=hosts, tail=tails, encode=st.booleans())
def test_no_url_shown_by_the_library_contains_its_password(
    scheme: str, user: str, password: str, host: str, tail: str, encode: bool
) -> None:
    written = quote(password, safe="") if encode else password
    url = f"{scheme}://{user}:{written}@{host}{tail}"
    visible = f"{scheme}://{user}:@{host}{tail}"
    assume(password not in visible and written not in visible)
    shown = [mask_url(url)]
    try:
        config = StateDBConfig(url=url)
    except ConfigurationError as exc:
        shown.append(str(exc))
    else:
        shown += [repr(config), str(config), config.safe_url]
    for text in shown:
        assert password not in text and written not in text, text


@PURE
@given(option=st.sampled_from(["password", "ssl_password", "ssl_keyfile_password", "token", "secret", "api_key"]),
       value=st.text(st.sampled_from("abcdefgXYZ0123456789-_."), min_size=6, max_size=20),
       before=st.sampled_from(["", "ssl_cert_reqs=required&", "db=1;"]))
def test_secret_query_values_are_masked(option: str, value: str, before: str) -> None:
    masked = mask_url(f"rediss://h:6380/0?{before}{option}={value}&x=1")
    assert value not in masked and f"{option}=***" in masked


# -- the command layer: staging and parsing ------------------------------------------------------


@PURE
@given(ids=st.lists(task_ids, max_size=40), when=times, chunk=st.integers(min_value=1, max_value=7))
def test_add_revoked_stages_every_distinct_id_once_in_chunks(ids: list[str], when: float, chunk: int) -> None:
    operation = commands.add_revoked("k", ids, when, chunk_size=chunk)
    calls = staged(operation)
    members = [member for _, (_, mapping), _ in calls for member in mapping]
    assert members == list(dict.fromkeys(i.encode() for i in ids))
    for name, (key, mapping), kwargs in calls:
        assert (name, key, kwargs) == ("zadd", "k", {"lt": True})
        assert 0 < len(mapping) <= chunk and set(mapping.values()) == {when}
    replies = [len(mapping) for _, (_, mapping), _ in calls]
    assert operation.result(replies) == len(members)


@PURE
@given(stamped=st.lists(st.tuples(task_ids, times), max_size=40), chunk=st.integers(min_value=1, max_value=7))
def test_add_revoked_at_keeps_the_earliest_time_per_id(stamped: list[tuple[str, float]], chunk: int) -> None:
    calls = staged(commands.add_revoked_at("k", stamped, chunk))
    sent = {member: score for _, (_, mapping), _ in calls for member, score in mapping.items()}
    expected: dict[bytes, float] = {}
    for task_id, when in stamped:
        expected[task_id.encode()] = min(when, expected.get(task_id.encode(), when))
    assert sent == expected
    assert all(kwargs == {"lt": True} and len(mapping) <= chunk for _, (_, mapping), kwargs in calls)


@PURE
@given(ids=st.lists(st.one_of(task_ids, anything), min_size=1, max_size=10), when=st.one_of(times, st.floats()))
def test_bad_input_stages_nothing(ids: list[object], when: float) -> None:
    try:
        operation = commands.add_revoked("k", ids, when, chunk_size=3)
    except InvalidInputError:
        bad_id = not all(isinstance(i, str) and i and encode_ok(i) for i in ids)
        assert bad_id or not (math.isfinite(when) and when >= 0)
        return
    assert all(isinstance(i, str) for i in ids)
    staged(operation)


def encode_ok(value: str) -> bool:
    try:
        encode_task_id(value)
    except InvalidInputError:
        return False
    return True


@PURE
@given(rows=st.lists(st.tuples(st.binary(max_size=12), st.floats(allow_nan=False)), max_size=10))
def test_decoding_a_page_returns_text_and_finite_times_or_names_the_key(rows: list[tuple[bytes, float]]) -> None:
    try:
        page = commands.decode_revoked_page("the-key", rows)
    except CorruptValueError as exc:
        assert exc.key == "the-key" and "'the-key'" in str(exc)
        assert any(not math.isfinite(score) or not utf8(member) for member, score in rows)
        return
    assert page == [(member.decode(), score) for member, score in rows]


def utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@PURE
@given(raw=st.one_of(st.none(), st.binary(max_size=24), st.integers(min_value=0, max_value=commands.MAX_CLOCK)
                     .map(lambda n: str(n).encode())))
def test_parse_clock_is_an_integer_in_range_or_corrupt(raw: bytes | None) -> None:
    try:
        value = commands.parse_clock("c", raw)
    except CorruptValueError as exc:
        assert exc.key == "c"
        return
    assert value >= 0
    assert raw is None or raw == str(value).encode() or raw.lstrip(b"0") == str(value).encode().lstrip(b"0")


@PURE
@given(value=st.one_of(st.integers(min_value=-5, max_value=commands.MAX_CLOCK + 5), anything))
def test_advance_clock_takes_only_integers_in_range(value: object) -> None:
    try:
        calls = staged(commands.advance_clock("c", value))  # type: ignore[arg-type]
    except InvalidInputError:
        assert isinstance(value, bool) or not isinstance(value, int) or value < 0
        return
    assert calls == [("eval", (commands.ADVANCE_CLOCK_SCRIPT, 1, "c", str(value)), {})]


def _score_bound(bound: float | str) -> tuple[float, bool]:
    """A ZRANGE BYSCORE bound as (value, exclusive): 3.5, "+inf", "(3.5"."""
    text = str(bound)
    exclusive = text.startswith("(")
    return float(text[1:] if exclusive else text), exclusive


def model_zrevrangebyscore(rows: dict[bytes, float], low: float | str, start: int, num: int,
                           high: float | str = "+inf") -> list[tuple[bytes, float]]:
    """What Redis replies: by score then member, descending; low <= scores <= high; LIMIT start num."""
    (floor, above), (ceiling, below) = _score_bound(low), _score_bound(high)
    ordered = sorted(((m, s) for m, s in rows.items()
                      if (s > floor if above else s >= floor) and (s < ceiling if below else s <= ceiling)),
                     key=lambda r: (r[1], r[0]), reverse=True)
    return ordered[start:start + num]


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def walk(cursor: cursors.WindowCursor, rows: dict[bytes, float]
         ) -> tuple[list[list[Call]], list[tuple[float, list[str]]]]:
    """Run the cursor against the model: the commands of each round trip, and the pages it handed out."""
    trips: list[list[Call]] = []
    pages: list[tuple[float, list[str]]] = []
    while (operation := cursor.next_operation()) is not None:
        calls = staged(operation)
        trips.append(calls)
        replies = []
        for _, (_, high, low), kwargs in calls:
            page = model_zrevrangebyscore(rows, low, kwargs["start"], kwargs["num"], high)
            replies.append(page if kwargs["withscores"] else [member for member, _ in page])
        pages.extend(cursor.feed(operation.result(replies)))
        assert len(trips) < 1000, "the cursor never finished"
    return trips, pages


@PURE
@given(rows=st.dictionaries(st.text(min_size=1, max_size=6).map(str.encode), st.integers(0, 20).map(float),
                            max_size=30),
       newer_than=st.one_of(st.none(), st.integers(0, 20).map(float)),
       limit=st.one_of(st.none(), st.integers(0, 35)), chunk=st.integers(1, 8),
       trip_bytes=st.one_of(st.none(), st.integers(1, 200)))
def test_the_page_cursor_reads_newest_first_up_to_the_limit(
    rows: dict[bytes, float], newer_than: float | None, limit: int | None, chunk: int, trip_bytes: int | None
) -> None:
    cursor = cursors.PageCursor("k", newer_than=newer_than, limit=limit, chunk_size=chunk, trip_bytes=trip_bytes)
    read: list[tuple[str, float]] = []
    for _ in range(100):
        operation = cursor.next_operation()
        if operation is None:
            break
        ((name, (key, high, low), kwargs),) = staged(operation)
        assert (name, key) == ("zrevrangebyscore", "k") and kwargs["withscores"] is True
        assert 0 < kwargs["num"] <= chunk
        replies = [model_zrevrangebyscore(rows, low, kwargs["start"], kwargs["num"], high)]
        read.extend(cursor.feed(operation.result(replies)))
    else:
        pytest.fail("the cursor never finished")
    expected = model_zrevrangebyscore(rows, "-inf" if newer_than is None else newer_than, 0, len(rows))
    expected = expected if limit is None else expected[:limit]
    assert read == [(m.decode(), s) for m, s in expected]


@PURE
@given(message=st.text(max_size=60), prefix=st.sampled_from(["", "WRONGTYPE ", "NOPERM ", "LOADING ", "ERR "]))
def test_every_error_reply_becomes_a_library_error_naming_the_key(message: str, prefix: str) -> None:
    operation = commands.count_revoked("the-key")
    with pytest.raises(StateDBError) as info:
        operation.result([ResponseError(prefix + message)])
    if prefix == "WRONGTYPE ":
        assert isinstance(info.value, WrongKeyTypeError) and info.value.key == "the-key"
    if isinstance(info.value, StateDataError):
        assert info.value.key == "the-key"


# -- against a real server (bounded) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[PrivateServer]:
    """A private server: flushed before every example."""
    with PrivateServer() as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_client(fuzz_server: PrivateServer) -> Iterator[redis.Redis]:
    client = fuzz_server.client()
    yield client
    client.close()


@SERVER
@given(prefix=any_names, inside=st.lists(st.text(max_size=8), max_size=5), outside=st.lists(any_names, max_size=5))
def test_the_scan_pattern_matches_exactly_the_keys_under_the_prefix(
    fuzz_server: PrivateServer, fuzz_client: redis.Redis, prefix: str, inside: list[str], outside: list[str]
) -> None:
    fuzz_client.flushall()
    ours = {prefix + rest for rest in inside}
    others = {key for key in outside if not key.startswith(prefix)}
    for key in ours | others:
        fuzz_client.set(key, 1)
    schema = KeySchema(prefix)
    assert schema.match_all == glob_escape(prefix) + "*"
    found = {raw.decode() for raw in fuzz_client.scan_iter(match=schema.match_all, count=1000)}
    assert found == ours


def expected_workers(prefix: str, keys: set[str]) -> set[str]:
    """The worker names the keys hold under ``prefix``, worked out independently of the library."""
    found = set()
    for key in keys:
        if not key.startswith(prefix) or key == prefix + "shared:fleet-revoked":
            continue
        rest = key[len(prefix):]
        for suffix in (":revoked", ":clock"):
            if rest.endswith(suffix) and len(rest) > len(suffix):
                found.add(rest[: -len(suffix)])
                break
    return found


@SERVER
@given(prefix=any_names, workers=st.lists(any_names, min_size=1, max_size=4, unique=True),
       decoy_prefix=any_names)
def test_listing_finds_exactly_the_workers_of_the_prefix(
    fuzz_server: PrivateServer, fuzz_client: redis.Redis, prefix: str, workers: list[str], decoy_prefix: str
) -> None:
    """Glob characters in the prefix or the names never widen the match (a decoy prefix may nest, though)."""
    fuzz_client.flushall()
    schema, decoy = KeySchema(prefix), KeySchema(decoy_prefix)
    keys = {schema.shared_revoked_key}
    for worker in workers:
        keys |= {schema.revoked_key(worker), schema.clock_key(worker), decoy.revoked_key(worker + "-d")}
    for key in keys:
        fuzz_client.zadd(key, {"t": 1.0})
    listed = anyio.run(lambda: async_admin.list_workers(fuzz_server.url, key_prefix=prefix))
    assert set(workers) <= set(listed)
    assert set(listed) == expected_workers(prefix, keys)
    assert listed == sorted(listed)


@SERVER
@given(prefix=any_names, worker=any_names, stamped=st.lists(st.tuples(task_ids, times), min_size=1, max_size=25),
       removed=st.integers(0, 5), clocks=st.lists(st.integers(0, 2**70), min_size=1, max_size=4))
def test_a_real_server_round_trip(
    fuzz_server: PrivateServer, fuzz_client: redis.Redis, prefix: str, worker: str,
    stamped: list[tuple[str, float]], removed: int, clocks: list[int],
) -> None:
    fuzz_client.flushall()
    config = StateDBConfig(url=fuzz_server.url, key_prefix=prefix, load_chunk_size=4, write_chunk_size=3)
    repository = SyncStateRepository.open(config, worker)
    try:
        expected: dict[str, float] = {}
        for task_id, when in stamped:
            expected[task_id] = min(when, expected.get(task_id, when))
        assert repository.add_revoked_at(stamped) == len(expected)
        assert repository.add_revoked_at(stamped) == 0  # idempotent
        rows = list(repository.iter_revoked())
        assert dict(rows) == expected and len(rows) == len(expected)
        assert [score for _, score in rows] == sorted(expected.values(), reverse=True)
        gone = list(expected)[:removed]
        assert repository.remove_revoked(gone) == len(gone)
        assert repository.count_revoked() == len(expected) - len(gone)
        highest = 0
        for value in clocks:
            highest = max(highest, value)
            assert repository.advance_clock(value).stored == highest
        assert repository.read_clock() == highest
        assert {raw.decode() for raw in fuzz_client.scan_iter(match=config.keys.match_all)} <= {
            repository.keys.revoked, repository.keys.clock}
    finally:
        repository.close()


@PURE
@given(rows=st.dictionaries(st.text(min_size=1, max_size=6).map(str.encode),
                            st.one_of(st.integers(0, 40).map(float), st.floats(0, 40)), max_size=40),
       now=st.floats(0, 40), span=st.floats(0.5, 40), share=st.floats(0.01, 1.5),
       limit=st.one_of(st.none(), st.integers(0, 45)), chunk=st.integers(1, 6), per_trip=st.integers(1, 4),
       trip_bytes=st.one_of(st.none(), st.integers(1, 200)))
def test_the_window_cursor_reads_newest_first_and_stamps_within_one_window(
    rows: dict[bytes, float], now: float, span: float, share: float, limit: int | None, chunk: int, per_trip: int,
    trip_bytes: int | None,
) -> None:
    width = span * share
    cursor = cursors.WindowCursor("k", now=now, newer_than=now - span, width=width, limit=limit,
                                   chunk_size=chunk, per_trip=per_trip, trip_bytes=trip_bytes)
    allowed: list[int | None] = []  # the ids the budget allowed when each trip was planned
    plan = cursor.next_operation
    cursor.next_operation = lambda: (allowed.append(cursor.budget.rows()), plan())[1]  # type: ignore[method-assign]
    trips, pages = walk(cursor, rows)
    for name, (key, _, _), kwargs in itertools.chain.from_iterable(trips):
        assert (name, key) == ("zrevrangebyscore", "k") and 0 < kwargs["num"] <= chunk
    for trip, most in zip(trips, allowed, strict=False):
        assert most is None or sum(kwargs["num"] for *_, kwargs in trip) <= most
    read = [(stamp, task_id) for stamp, ids in pages for task_id in ids]
    expected = model_zrevrangebyscore(rows, now - span, 0, len(rows))
    expected = expected if limit is None else expected[:limit]
    assert [task_id for _, task_id in read] == [member.decode() for member, _ in expected]
    for (stamp, _), (_, score) in zip(read, expected, strict=True):
        # never older than it is; at most one window younger; the future is stamped now
        assert stamp == now if score > now else 0 <= stamp - score <= width * (1 + 1e-9)


def test_windows_cover_the_span_once_and_end_for_any_width() -> None:
    windows = cursors.window_bounds(1_700_000_000.25, 1_699_989_200.25, 108.0)
    assert len(windows) == 1 + 100
    assert windows[0] == ("+inf", "(1700000000.25", 1_700_000_000.25)
    assert windows[-1][1] == "1699989200.25"  # the oldest bound is inclusive, the others exclusive
    assert all(low.startswith("(") and float(low[1:]) == float(nxt_high)
               for (_, low, _), (nxt_high, _, _) in itertools.pairwise(windows[1:]))
    # A width below the float precision of the times still ends, with wider windows.
    assert len(cursors.window_bounds(1_700_000_000.0, 1_699_999_000.0, 1e-12)) == 1 + cursors.MAX_WINDOWS
    assert len(cursors.window_bounds(5.0, 10.0, 1.0)) == 1  # nothing is old enough to be kept
    for width in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(InvalidInputError, match="window width"):
            cursors.window_bounds(10.0, 0.0, width)


def test_the_window_cursor_names_the_key_of_a_member_that_is_not_text() -> None:
    cursor = cursors.WindowCursor("k", now=10.0, newer_than=0.0, width=5.0, limit=None, chunk_size=4)
    operation = cursor.next_operation()
    assert operation is not None
    with pytest.raises(CorruptValueError, match="'k'"):
        operation.result([[(b"future", 11.0)], [b"ok", b"\xff\xfe"], []])
    with pytest.raises(CorruptValueError, match="non-finite"):
        operation.result([[(b"inf", math.inf)], [], []])


def test_an_empty_or_sparse_set_takes_a_few_round_trips_and_a_dense_one_reads_no_further_ahead() -> None:
    def cursor(limit: int | None = None) -> cursors.WindowCursor:
        return cursors.WindowCursor("k", now=10_000.0, newer_than=0.0, width=100.0, limit=limit,
                                     chunk_size=10, per_trip=8)

    # 101 windows, read 8, 16, 32 a trip while they come back short, then the 45 left
    assert [len(trip) for trip in walk(cursor(), {})[0]] == [8, 16, 32, 45]
    dense = {f"id{i}".encode(): 10_000.0 - i / 3 for i in range(30_000)}  # 300 ids a window: 30 pages each
    trips, _ = walk(cursor(), dense)
    assert all(len(trip) <= 8 for trip in trips)
    # the limit caps what is asked for: never more ids than are still wanted, per page
    assert all(kwargs["num"] <= 5 for trip in walk(cursor(limit=5), dense)[0] for _, _, kwargs in trip)
