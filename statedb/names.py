"""Validation of the strings that become parts of keys or members: worker names, prefixes, task ids."""

from __future__ import annotations

import math
import re
import unicodedata

from statedb.errors import InvalidInputError

# The longest task id (and stamped header, encoded) stored. Redis takes members up to 512 MB, but
# every id is carried whole by one write command (5 000 ids a ZADD: at most 320 MiB at this limit,
# under Redis's 1 GB query buffer) and one boot page (10 000 ids: 640 MiB at most), so the limit is
# far above any real id (a UUID is 36 bytes) and far below what would strain one command. Longer
# ids are honoured in memory only, counted (``statedb_status``) and logged: lost at a restart.
MAX_TASK_ID_BYTES = 65_536
MAX_NAME_CHARS = 1024


def _shown(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _has_control_chars(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


# What breaks a line-oriented output: the control characters (category Cc: C0, DEL, C1, among them
# newline, tab, ESC and U+0085 NEL) and the line and paragraph separators U+2028 and U+2029.
# Celery's ids (UUIDs, or any id a caller chose) never hold them.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_name(value: object, what: str) -> str:
    """A worker name or key prefix: any non-empty text without control characters.

    Glob characters, spaces and unicode are fine: names are data, never patterns.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInputError(f"{what} must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidInputError(f"{what} is {len(value)} characters long (limit {MAX_NAME_CHARS})")
    if _has_control_chars(value):
        raise InvalidInputError(f"{what} {_shown(value)} contains control characters (newline, tab...)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} {_shown(value)} is not valid unicode") from None
    return value


def encode_task_id(task_id: object) -> bytes:
    """The UTF-8 form stored in Redis; raises InvalidInputError naming what is wrong."""
    if not isinstance(task_id, str):
        raise InvalidInputError(f"task id must be a string, got {type(task_id).__name__}: {task_id!r:.80}")
    if not task_id:
        raise InvalidInputError("task id must not be empty")
    if _LINE_BREAKING.search(task_id):
        raise InvalidInputError(f"task id {_shown(task_id)} contains control characters (newline, tab, ESC...) "
                                "or line separators: no Celery id holds them")
    try:
        raw = task_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"task id {_shown(task_id)} is not valid unicode") from None
    if len(raw) > MAX_TASK_ID_BYTES:
        raise InvalidInputError(
            f"task id {_shown(task_id)} is {len(raw)} bytes long (limit {MAX_TASK_ID_BYTES})"
        )
    return raw


def is_storable_task_id(task_id: object) -> bool:
    try:
        encode_task_id(task_id)
    except InvalidInputError:
        return False
    return True


def check_timestamp(value: object, what: str) -> float:
    """A finite, non-negative wall-clock time in seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{what} must be a number of seconds, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise InvalidInputError(f"{what} must be finite and not negative, got {value!r}")
    return result
