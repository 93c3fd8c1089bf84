"""Moves existing worker state into Redis: Celery's file statedb, or the 0.2.0 pickled blob.

Both sources are pickles (that is how Celery and 0.2.0 wrote them), so this is the
one module allowed to unpickle, and only through :class:`RestrictedUnpickler`: a
LimitedSet becomes a harmless stand-in holding its constructor arguments, plain
containers and scalars load as usual, and any other global is refused before
anything runs.

A migration only adds: ids go in with ZADD LT (the earliest revocation time
wins), the clock only moves forward, and the source is opened read-only and never
written, renamed or deleted. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import dbm
import importlib
import io
import logging
import os
import pickle
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from statedb._sync.repository import SyncStateRepository
from statedb.admin import Progress
from statedb.commands import MAX_CLOCK, parse_clock
from statedb.errors import (
    ConfigurationError,
    CorruptValueError,
    InvalidInputError,
    StateDBError,
    WrongKeyTypeError,
)
from statedb.keys import CLOCK_SUFFIX, LEGACY_BLOB_SUFFIX
from statedb.names import is_storable_task_id
from statedb.translate import REDIS_FAILURES, translate_exception

__all__ = [
    "MigrationReport",
    "MigrationSourceError",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "legacy_blob_key",
    "migrate_file_statedb",
    "migrate_legacy_blob",
    "read_file_statedb",
    "restricted_loads",
]

logger = logging.getLogger("celery_redis_statedb")


LAYOUT_V1, LAYOUT_V2, LAYOUT_V3 = "v1-dict", "v2-limitedset", "v3-zrevoked"
LAYOUT_LEGACY_BLOB, LAYOUT_EMPTY = "legacy-0.2-blob", "empty"
# Far above any real statedb: this only stops a zlib bomb.
MAX_INFLATED_BYTES = 1 << 30

# Suffixes the dbm flavours append to the name they are given (dumb: .dat/.dir/.bak,
# ndbm: .db with Berkeley DB, .pag/.dir with classic ndbm): a path naming one of these
# files is retried without it.
_DBM_SUFFIXES = (".dat", ".dir", ".bak", ".db", ".pag")
_BERKELEY_MAGICS = (0x00061561, 0x00053162)  # hash, btree (at offset 12 of the file)
_SQLITE_HEADER = b"SQLite format 3\x00"
_INSTALL_HINTS = {
    "dbm.gnu": "install python3-gdbm, or use a Python built with GNU dbm",
    "dbm.ndbm": "use a Python built with ndbm (the _dbm module)",
    "sqlite3": "use a Python built with sqlite3 (the _sqlite3 module)",
}


class MigrationSourceError(StateDBError, ValueError):
    """The file statedb holds something a migration cannot read (corrupt, unsafe or unknown data)."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


@dataclass(frozen=True)
class MigrationReport:
    """What one migration read and changed; ``ids_added`` counts ids new in Redis."""

    source: str
    layout: str
    dbm_flavour: str | None
    ids_found: int
    ids_added: int
    clock_found: int | None
    clock_before: int
    clock_after: int
    dry_run: bool
    ids_skipped: int = 0
    revoked_key: str = ""

    def summary(self) -> str:
        """One line for a log or a terminal."""
        verb = "would add" if self.dry_run else "added"
        flavour = f", {self.dbm_flavour}" if self.dbm_flavour else ""
        found = "no clock" if self.clock_found is None else f"clock {self.clock_found}"
        return (
            f"{self.source} ({self.layout}{flavour}): {self.ids_found} ids found, {verb} {self.ids_added} "
            f"to {self.revoked_key}, {self.ids_skipped} skipped; {found}, stored clock "
            f"{self.clock_before} -> {self.clock_after}" + (" (dry run: nothing written)" if self.dry_run else "")
        )


# -- restricted unpickling ---------------------------------------------------------------------


class PickledLimitedSet:
    """What a pickled ``LimitedSet`` becomes here: its pickled arguments, no Celery code run.

    Every Celery version pickles it as ``LimitedSet(maxlen, expires, data, ...)`` with
    ``data`` a dict ``{task id: stamp}``; ``state`` covers a BUILD opcode, should one appear.
    """

    def __init__(self, *args: object) -> None:
        self.args = args
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def data(self) -> object:
        args: tuple[object, ...] = getattr(self, "args", ())
        if len(args) > 2:
            return args[2]
        if isinstance(self.state, dict):
            return self.state.get("_data")
        return None


_LIMITED_SET_NAMES = {
    ("celery.utils.collections", "LimitedSet"),
    ("celery.datastructures", "LimitedSet"),  # Celery 3.x
}
_SAFE_BUILTINS: dict[str, type] = {"set": set, "frozenset": frozenset, "dict": dict, "list": list, "tuple": tuple}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that a Celery statedb never contains."""


class RestrictedUnpickler(pickle.Unpickler):
    """Loads only what a Celery statedb holds; any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _LIMITED_SET_NAMES:
            return PickledLimitedSet
        # Protocols 0-2 pickle a set as builtins.set (__builtin__.set from Python 2) and a list.
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        raise UnsafePickleError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to unpickle a persistent id")


def restricted_loads(data: bytes) -> object:
    """Unpickle ``data`` allowing only LimitedSet (as a stand-in), containers and scalars.

    Raises :class:`UnsafePickleError` for a refused global, :class:`pickle.UnpicklingError`
    for anything else that is not a readable pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError:
        raise
    # Malformed input can make the unpickler raise nearly anything (EOFError, ValueError,
    # KeyError from a bad memo index...); no code of the data runs, so wrapping all is safe.
    except Exception as exc:
        raise pickle.UnpicklingError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None


def inflate(data: bytes) -> bytes:
    """zlib-decompress, refusing output over MAX_INFLATED_BYTES; raises zlib.error or ValueError."""
    inflater = zlib.decompressobj()
    result = inflater.decompress(data, MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"inflates to more than {MAX_INFLATED_BYTES} bytes")
    if not inflater.eof:
        raise zlib.error("compressed data is truncated")
    return result


def task_ids_of(value: object) -> list[object]:
    """The task ids in a loaded revoked set (stamps dropped); ValueError if it is no such set."""
    if isinstance(value, PickledLimitedSet):
        value = value.data()
        if value is None:
            return []
    if isinstance(value, Mapping):
        return list(value.keys())
    if isinstance(value, (set, frozenset, list, tuple)):
        return list(value)
    raise ValueError(f"expected a LimitedSet, dict or set of task ids, found {type(value).__name__}")


# -- the file statedb -----------------------------------------------------------------------------


def _magic(path: str, size: int = 16) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


def _sniff(base: str) -> str:
    """Flavours dbm.whichdb misses: Berkeley-DB ndbm when this Python has no ndbm, and sqlite3 before 3.13."""
    head = _magic(base + ".db")
    # Berkeley DB writes its magic in the byte order of the host that created the file.
    if len(head) == 16 and any(int.from_bytes(head[12:], order) in _BERKELEY_MAGICS for order in ("little", "big")):
        return "dbm.ndbm"
    if _magic(base, len(_SQLITE_HEADER)) == _SQLITE_HEADER:
        return "dbm.sqlite3"
    return ""


def detect_flavour(path: str) -> tuple[str, str]:
    """(the name to open, its dbm flavour) for a statedb path given with or without a dbm suffix."""
    candidates = [path] + [path[: -len(ext)] for ext in _DBM_SUFFIXES if path.endswith(ext) and len(path) > len(ext)]
    for base in candidates:
        flavour = dbm.whichdb(base) or _sniff(base)
        if flavour:
            return base, flavour
    if not any(os.path.exists(base + ext) for base in candidates for ext in ("", *_DBM_SUFFIXES)):
        raise ConfigurationError(f"statedb file {path} does not exist (nor with a .dat, .dir, .db or .pag suffix)")
    raise ConfigurationError(f"{path} is not a dbm file this Python can recognise: not a Celery statedb")


def _reader_module(path: str, flavour: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        hint = _INSTALL_HINTS.get(name, "use a Python that has it")
        raise ConfigurationError(
            f"{path} is a {flavour} file but this Python has no {name} module "
            f"({hint}, or migrate with a Python that has it)"
        ) from None


def _open_errors(module: ModuleType) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, SyntaxError, *dbm.error]
    module_error = getattr(module, "error", None)
    if isinstance(module_error, type) and issubclass(module_error, BaseException):
        errors.append(module_error)
    return tuple(errors)


@contextmanager
def _open_read_only(path: str, base: str, flavour: str) -> Iterator[tuple[Any, tuple[type[BaseException], ...]]]:
    """The open database (flag 'r': nothing is ever written) and the errors reading it may raise."""
    module = _reader_module(path, flavour, flavour)
    errors = _open_errors(module)
    try:
        db = module.open(base, "r")
    except errors as exc:
        raise ConfigurationError(
            f"cannot open {path} read-only as a {flavour} file ({exc}); is a worker still running with it?"
        ) from None
    try:
        yield db, errors
    finally:
        db.close()


# Keys as shelve stores them (UTF-8 encoded); values are raw pickles, loaded by us rather than
# by shelve, whose Unpickler would run anything.
_SHELF_KEYS = (b"zrevoked", b"revoked", b"clock", b"__proto__")


def _read_raw(path: str, base: str, flavour: str) -> dict[str, bytes]:
    if flavour == "dbm.sqlite3":
        return _read_sqlite(path, base)
    with _open_read_only(path, base, flavour) as (db, errors):
        raw: dict[str, bytes] = {}
        for key in _SHELF_KEYS:
            try:
                value = db[key]
            except KeyError:
                continue
            except errors as exc:
                raise MigrationSourceError(f"cannot read key {key.decode()!r} of {path}: {exc}", source=path) from None
            raw[key.decode()] = bytes(value)
        return raw


def _read_sqlite(path: str, base: str) -> dict[str, bytes]:
    """A dbm.sqlite3 file, read through sqlite3 itself (so also before Python 3.13).

    dbm.sqlite3 keeps its file in WAL mode, where even its read-only open leaves -wal and
    -shm files behind; ``immutable=1`` reads the main file and creates nothing. Data still
    in a non-empty -wal (a worker running with the file, or killed) would be missed that
    way, so such a file is refused rather than read stale.
    """
    sqlite = _reader_module(path, "dbm.sqlite3", "sqlite3")
    wal = base + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise ConfigurationError(
            f"{path} has changes not yet written back from {wal}: stop the worker using it (a worker that "
            f"was killed leaves them too: open and close the file once with Python >= 3.13's dbm.sqlite3) "
            f"and migrate again"
        )
    uri = Path(base).absolute().as_uri() + "?mode=ro&immutable=1"
    raw: dict[str, bytes] = {}
    try:
        with closing(sqlite.connect(uri, uri=True)) as connection:
            for key in _SHELF_KEYS:
                row = connection.execute("SELECT value FROM Dict WHERE key = CAST(? AS BLOB)", (key,)).fetchone()
                if row is not None:
                    raw[key.decode()] = _blob(path, key, row[0])
    except sqlite.Error as exc:
        raise ConfigurationError(f"cannot read {path} as a dbm.sqlite3 file: {exc}") from None
    return raw


def _blob(path: str, key: bytes, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise MigrationSourceError(f"{path}: key {key.decode()!r} holds a {type(value).__name__}, not a pickle",
                                   source=path)
    return value


def _load_file_value(path: str, key: str, data: bytes) -> object:
    try:
        return restricted_loads(data)
    except UnsafePickleError as exc:
        raise MigrationSourceError(
            f"{path}: key {key!r} holds a pickle that is not Celery statedb data ({exc}); "
            f"nothing was migrated (has the file been tampered with?)", source=path,
        ) from None
    except pickle.UnpicklingError as exc:
        raise MigrationSourceError(f"{path}: key {key!r} is corrupt: {exc}", source=path) from None


@dataclass(frozen=True)
class SourceState:
    """What was read from a source, before anything is written.

    ``clock_origin`` says where the clock was read and ``refuse`` builds the error naming
    the source, for a value found there that cannot be written.
    """

    layout: str
    task_ids: list[object]
    clock: int | None
    clock_origin: str
    refuse: Callable[[str], StateDBError]


def _file_revoked(path: str, raw: dict[str, bytes]) -> tuple[str, object]:
    """Which layout, and the loaded revoked set; Celery's own order: 'zrevoked' first, then 'revoked'."""
    if "zrevoked" in raw:
        compressed = _load_file_value(path, "zrevoked", raw["zrevoked"])
        if not compressed:
            return LAYOUT_V3, []
        if not isinstance(compressed, bytes):
            raise MigrationSourceError(
                f"{path}: key 'zrevoked' holds a {type(compressed).__name__}, not compressed bytes", source=path
            )
        try:
            inflated = inflate(compressed)
        except (zlib.error, ValueError) as exc:
            raise MigrationSourceError(f"{path}: key 'zrevoked' is corrupt: {exc}", source=path) from None
        return LAYOUT_V3, _load_file_value(path, "zrevoked", inflated)
    if "revoked" in raw:
        saved = _load_file_value(path, "revoked", raw["revoked"])
        return (LAYOUT_V1 if isinstance(saved, Mapping) else LAYOUT_V2), saved
    return LAYOUT_EMPTY, []


def _shown_clock(value: object) -> str:
    # Python refuses to print an integer of more than 4 300 digits: a forged one is shown by its size.
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return f"{value!r:.60}"


def _checked_clock(value: object, where: str, make_error: Callable[[str], StateDBError]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CLOCK:
        raise make_error(f"{where} does not hold a clock (an integer in 0..{MAX_CLOCK}): {_shown_clock(value)}")
    return value


def read_file_statedb(path: str | os.PathLike[str]) -> tuple[str, SourceState]:
    """(dbm flavour, what the file holds), read-only; raises ConfigurationError or MigrationSourceError."""
    shown = os.fspath(path)
    if not isinstance(shown, str):
        raise ConfigurationError(f"statedb path must be text, got {shown!r}")
    base, flavour = detect_flavour(shown)
    raw = _read_raw(shown, base, flavour)
    layout, saved = _file_revoked(shown, raw)
    try:
        task_ids = task_ids_of(saved)
    except ValueError as exc:
        raise MigrationSourceError(f"{shown}: {exc}", source=shown) from None
    clock_value = _load_file_value(shown, "clock", raw["clock"]) if "clock" in raw else None

    def error(message: str) -> StateDBError:
        return MigrationSourceError(message, source=shown)

    origin = f"{shown}: key 'clock'"
    return flavour, SourceState(layout, task_ids, _checked_clock(clock_value, origin, error), origin, error)


# -- writing ----------------------------------------------------------------------------------------


def storable_ids(task_ids: Sequence[object]) -> tuple[list[str], int]:
    """(unique ids Redis can hold, in source order; how many entries were skipped)."""
    kept: dict[str, None] = {}
    skipped = 0
    for task_id in task_ids:
        if isinstance(task_id, str) and is_storable_task_id(task_id):
            kept[task_id] = None
        else:
            skipped += 1
    return list(kept), skipped


def _check_writable(repository: SyncStateRepository, state: SourceState) -> None:
    """Refuse now, naming the source, a value the writer would refuse once the ids are in.

    Ids are filtered by the writer's own rule (:func:`storable_ids`); the clock is checked by
    building the writer's very operation, which validates its value and runs nothing.
    """
    if not state.clock:
        return
    try:
        repository.operations.advance_clock(state.clock)
    except InvalidInputError:
        raise state.refuse(f"{state.clock_origin} holds a clock that cannot be stored "
                           f"({_shown_clock(state.clock)}); nothing was migrated") from None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _count_missing(repository: SyncStateRepository, chunk: list[str]) -> int:
    key = repository.keys.revoked
    try:
        scores = repository.client.zmscore(key, chunk)
    except REDIS_FAILURES as exc:
        raise translate_exception(exc, target=repository.operations.target, key=key) from exc
    return sum(score is None for score in scores)


def _store_ids(
    repository: SyncStateRepository, ids: list[str], *, dry_run: bool, progress: Progress | None, chunk_size: int
) -> int:
    """Adds ``ids`` stamped with the migration time; returns how many are (or would be) new."""
    revoked_at = time.time()
    added = done = 0
    for chunk in _chunks(ids, chunk_size):
        if dry_run:
            added += _count_missing(repository, chunk)
        else:
            added += repository.add_revoked_at([(task_id, revoked_at) for task_id in chunk])
        done += len(chunk)
        if progress is not None:
            progress(done, len(ids))
    return added


def _merge_into(
    repository: SyncStateRepository, state: SourceState, *, source: str, flavour: str | None,
    dry_run: bool, progress: Progress | None, chunk_size: int,
) -> MigrationReport:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise InvalidInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    _check_writable(repository, state)
    repository.check_server()
    ids, skipped = storable_ids(state.task_ids)
    clock_before = repository.read_clock()
    added = _store_ids(repository, ids, dry_run=dry_run, progress=progress, chunk_size=chunk_size)
    clock_after = clock_before
    if state.clock and not dry_run:
        clock_after = repository.advance_clock(state.clock).stored
    report = MigrationReport(
        source=source, layout=state.layout, dbm_flavour=flavour, ids_found=len(state.task_ids),
        ids_added=added, clock_found=state.clock, clock_before=clock_before, clock_after=clock_after,
        dry_run=dry_run, ids_skipped=skipped, revoked_key=repository.keys.revoked,
    )
    # The one summary line of a migration, wherever it runs (API, CLI, worker boot).
    logger.info("redis-statedb: %s %s", "would migrate" if dry_run else "migrated", report.summary())
    if skipped:
        logger.warning("redis-statedb: migration of %s skipped %d ids Redis cannot hold "
                       "(not text, empty or too long)", source, skipped)
    return report


def migrate_file_statedb(
    path: str | os.PathLike[str],
    repository: SyncStateRepository,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    chunk_size: int | None = None,
) -> MigrationReport:
    """Merge Celery's file statedb at ``path`` (any layout, any dbm flavour) into ``repository``.

    The file is opened read-only and never changed. Ids are stamped with the migration
    time (the file's monotonic stamps mean nothing after a reboot); the clock only moves
    forward. ``dry_run`` reads everything and writes nothing; a value that cannot be
    written is refused before anything is, dry run or not. ``chunk_size`` ids a command:
    the repository's ``write_chunk_size`` unless given.
    """
    flavour, state = read_file_statedb(path)
    return _merge_into(repository, state, source=os.fspath(path), flavour=flavour, dry_run=dry_run,
                       progress=progress,
                       chunk_size=repository.operations.write_chunk_size if chunk_size is None else chunk_size)


# -- the 0.2.0 blob in Redis -------------------------------------------------------------------------


def legacy_blob_key(repository: SyncStateRepository) -> str:
    """Where 0.2.0 kept this worker's blob: ``<prefix><worker>:zrevoked``, beside the clock key."""
    return repository.keys.clock.removesuffix(CLOCK_SUFFIX) + LEGACY_BLOB_SUFFIX


def _redis_call(repository: SyncStateRepository, key: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except REDIS_FAILURES as exc:
        raise translate_exception(exc, target=repository.operations.target, key=key) from exc


def _read_blob(repository: SyncStateRepository, key: str) -> bytes | None:
    kind = _redis_call(repository, key, lambda: repository.client.type(key))
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "none":
        return None
    if kind != "string":
        raise WrongKeyTypeError(
            f"Redis key {key!r} holds a {kind}, not the string blob celery-redis-statedb 0.2 wrote there", key=key
        )
    blob = _redis_call(repository, key, lambda: repository.client.get(key))
    return None if blob is None else bytes(blob)


def _load_blob(key: str, blob: bytes) -> list[object]:
    try:
        saved = restricted_loads(inflate(blob))
        return task_ids_of(saved)
    except UnsafePickleError as exc:
        raise CorruptValueError(
            f"Redis key {key!r} holds a pickle that is not a celery-redis-statedb 0.2 blob ({exc}); "
            f"nothing was migrated", key=key,
        ) from None
    except (zlib.error, pickle.UnpicklingError, ValueError) as exc:
        raise CorruptValueError(f"Redis key {key!r} is not a readable 0.2 blob: {exc}", key=key) from None


def _legacy_clock_key(blob_key: str) -> str | None:
    """The 0.2 clock beside the blob: the key this version uses too, unless the blob is another worker's."""
    if not blob_key.endswith(LEGACY_BLOB_SUFFIX):
        return None
    return blob_key.removesuffix(LEGACY_BLOB_SUFFIX) + CLOCK_SUFFIX


def _read_legacy_clock(repository: SyncStateRepository, clock_key: str | None) -> int | None:
    if clock_key is None:
        return None
    raw = _redis_call(repository, clock_key, lambda: repository.client.get(clock_key))
    return None if raw is None else parse_clock(clock_key, raw)


def migrate_legacy_blob(
    repository: SyncStateRepository,
    *,
    key: str,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MigrationReport:
    """Merge the 0.2.0 blob at ``key`` (zlib + pickled LimitedSet) into ``repository``; never deletes it.

    ``legacy_blob_key(repository)`` gives the key 0.2.0 used for the repository's worker.
    """
    blob = _read_blob(repository, key)
    task_ids: list[object] = []
    if blob is not None:
        logger.warning(
            "redis-statedb: migrating %s: unpickling data read from Redis (restricted to a LimitedSet of ids)", key
        )
        task_ids = _load_blob(key, blob)
    clock_key = _legacy_clock_key(key)

    def refuse(message: str) -> StateDBError:
        return CorruptValueError(message, key=clock_key or key)

    state = SourceState(LAYOUT_LEGACY_BLOB if blob is not None else LAYOUT_EMPTY, task_ids,
                        _read_legacy_clock(repository, clock_key), f"Redis key {clock_key!r}", refuse)
    return _merge_into(repository, state, source=key, flavour=None, dry_run=dry_run, progress=progress,
                       chunk_size=repository.operations.write_chunk_size)
