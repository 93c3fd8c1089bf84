from __future__ import annotations

import pytest

from statedb import InvalidInputError, KeySchema, Scope
from statedb.keys import CLOCK_SUFFIX, REVOKED_SUFFIX
from statedb.names import MAX_TASK_ID_BYTES, check_name, encode_task_id


def test_worker_keys_follow_the_documented_layout() -> None:
    keys = KeySchema().for_worker("celery@pod-7d9f")
    assert keys.revoked == "celery:worker:state:celery@pod-7d9f:revoked"
    assert keys.clock == "celery:worker:state:celery@pod-7d9f:clock"


def test_shared_scope_uses_one_fleet_key_and_keeps_the_clock_per_worker() -> None:
    schema = KeySchema("p:")
    a, b = schema.for_worker("a@h", Scope.SHARED), schema.for_worker("b@h", Scope.SHARED)
    assert a.revoked == b.revoked == schema.shared_revoked_key
    assert a.clock != b.clock


@pytest.mark.parametrize("worker", ["shared", "shared:fleet", "shared:fleet-revoked", "", "x:revoked"])
def test_no_worker_name_can_produce_the_shared_key(worker: str) -> None:
    schema = KeySchema("p:")
    shared = schema.shared_revoked_key
    assert not shared.endswith(REVOKED_SUFFIX)
    assert not shared.endswith(CLOCK_SUFFIX)
    if worker:
        assert shared not in (schema.revoked_key(worker), schema.clock_key(worker))


@pytest.mark.parametrize("worker", ["w*@h", "w?@h", "w[1]@h", "w\\@h", "wörker@höst", "w 1@h", "工人@主机"])
def test_odd_but_valid_worker_names_are_data(worker: str) -> None:
    assert KeySchema("p:").revoked_key(worker) == f"p:{worker}:revoked"


@pytest.mark.parametrize(
    ("worker", "fragment"),
    [("", "must not be empty"), ("a\nb", "control characters"), ("a\x00b", "control characters"),
     (123, "must be a string"), ("x" * 2000, "characters long"), ("\ud800", "not valid unicode")],
)
def test_bad_worker_names_are_refused_clearly(worker: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        check_name(worker, "worker name")


@pytest.mark.parametrize(
    ("task_id", "fragment"),
    [(None, "must be a string"), (42, "must be a string"), (b"abc", "must be a string"), ("", "must not be empty"),
     ("x" * (MAX_TASK_ID_BYTES + 1), "bytes long"), ("a\udcff", "not valid unicode")],
)
def test_bad_task_ids_are_refused_clearly(task_id: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        encode_task_id(task_id)


def test_one_megabyte_id_error_is_short() -> None:
    with pytest.raises(InvalidInputError) as info:
        encode_task_id("y" * 1_000_000)
    assert len(str(info.value)) < 200


def test_task_ids_keep_unicode() -> None:
    assert encode_task_id("tâche-1") == "tâche-1".encode()
