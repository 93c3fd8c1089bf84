"""The dashboard's JSON shapes (pydantic, so ``/docs`` shows them): times as ISO 8601 UTC text
with epoch seconds beside them, the fleet set named ``"fleet"``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class LiveStatus(BaseModel):
    """What a live worker said about its statedb (the ``statedb_status`` inspect command)."""

    pending: int = 0
    failing: bool = False
    failing_since: str | None = None
    failing_since_epoch: float | None = None
    in_memory: int | None = None
    index_size: int | None = None
    last_clock_save: str | None = None
    last_clock_save_epoch: float | None = None
    version: str | None = None
    error: str | None = None


class Worker(BaseModel):
    """A worker's revoked set, clock and last sign of life, or the fleet set (``worker == "fleet"``)."""

    worker: str
    key: str
    revoked_count: int
    oldest: str | None
    oldest_epoch: float | None
    newest: str | None
    newest_epoch: float | None
    clock: int | None
    memory_bytes: int | None
    scope: str | None = None
    last_seen: str | None = None
    last_seen_epoch: float | None = None
    version: str | None = None
    stamps_count: int = 0
    live: LiveStatus | None = None


class Workers(BaseModel):
    workers: list[Worker]
    live: bool = Field(description="Whether live workers were asked for their status.")


class RevokedItem(BaseModel):
    task_id: str
    revoked_at: str
    revoked_at_epoch: float


class RevokedPage(BaseModel):
    worker: str
    key: str
    items: list[RevokedItem]
    next_before: str | None = Field(
        None, description="Pass as ?before= for the next (older) page; null when this is the last one.")


class Revocation(BaseModel):
    task_id: str
    worker: str
    key: str
    revoked_at: str
    revoked_at_epoch: float


class TaskPlaces(BaseModel):
    task_id: str
    revoked: bool
    places: list[Revocation]


class SetChange(BaseModel):
    worker: str
    key: str
    count: int


class PurgeRequest(BaseModel):
    older_than: str | float = Field(description="An age: 90s, 15m, 12h, 30d, 2w, or seconds.")
    worker: str | None = Field(None, description="Only this worker's set (\"fleet\": the fleet set); all if null.")
    dry_run: bool = True
    force: bool = Field(False, description="Purge even ids younger than the workers' in-memory expiry "
                                           "(refused otherwise: see the preview's warning).")


class PurgeResult(BaseModel):
    older_than: str
    cutoff: str
    cutoff_epoch: float
    dry_run: bool
    removed: int
    sets: list[SetChange]
    sets_scanned: int
    stamps_removed: int
    message: str
    warning: str | None = Field(None, description="Set when older_than is below the workers' in-memory expiry: "
                                                  "the purge itself then needs force.")


class RevokeRequest(BaseModel):
    task_ids: list[str] = Field(min_length=1, max_length=10_000)
    broadcast: bool = Field(True, description="Also tell live workers now (needs the Celery dashboard).")


class RevokeResult(BaseModel):
    task_ids: list[str]
    added: int
    key: str
    revoked_at: str
    revoked_at_epoch: float
    broadcast: bool
    message: str


class RestoreRequest(BaseModel):
    task_ids: list[str] = Field(min_length=1, max_length=10_000)
    worker: str | None = Field(None, description="Only this worker's set (and the fleet set, which binds it); "
                                                 "every set if null.")


class RestoreResult(BaseModel):
    task_ids: list[str]
    removed: int
    sets: list[SetChange]
    fleet_removed: int
    note: str | None
    broadcast: bool
    message: str


class Config(BaseModel):
    redis: str = Field(description="The Redis URL, password masked.")
    key_prefix: str
    scope: str
    read_only: bool
    live: bool
    broadcast: bool


def model_of(model: type[BaseModel], data: dict[str, Any], **extra: Any) -> Any:
    """``model`` from an ``as_dict()`` of the admin API, with extra fields (fields it lacks are ignored)."""
    fields = model.model_fields
    return model(**{name: value for name, value in {**data, **extra}.items() if name in fields})
