"""Worker health through Celery's own remote control, and the Prometheus metrics built on it.

Each live worker answers ``statedb_status`` (``celery -A app inspect statedb_status``) with a
JSON dict: ids waiting to be written (``pending``), whether Redis is failing for it, its last
clock save... :func:`check_health` turns those answers and a ping of Redis into a verdict
with one line per problem (``celery statedb health``); :func:`metrics_text` into the
Prometheus text exposition format (``celery statedb metrics``, needs ``prometheus_client``:
the ``[metrics]`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery_redis_statedb.control import STATUS_COMMAND
from statedb.admin import FLEET, Result, WorkerState, iso, utc
from statedb.errors import ServiceError, StateDBError

if TYPE_CHECKING:
    from celery_redis_statedb.admin import SyncStateAdmin

NO_STATEDB = "no Redis statedb on this worker"


def worker_statuses(admin: SyncStateAdmin, *, worker: str | None = None, timeout: float = 1.0
                    ) -> dict[str, dict[str, Any]]:
    """Each live worker's ``statedb_status`` answer (all, or ``worker``), by hostname.

    A broadcast reaches inspect and control commands alike. ServiceError when the broker cannot
    be reached (then nothing is known of the workers).
    """
    try:
        replies = admin.app.control.broadcast(STATUS_COMMAND, reply=True, timeout=timeout,
                                              destination=[worker] if worker else None) or []
    except Exception as exc:  # kombu's OperationalError, OSError
        raise ServiceError(f"cannot ask the workers (Celery's broadcast through the broker failed: {exc})") from exc
    return {name: answer for reply in replies for name, answer in reply.items() if isinstance(answer, dict)}


def has_statedb(status: Mapping[str, Any]) -> bool:
    return "pending" in status


def _failing_since(status: Mapping[str, Any]) -> datetime | None:
    since = status.get("failing_since")
    return utc(float(since)) if isinstance(since, (int, float)) and not isinstance(since, bool) else None


def status_problems(name: str, status: Mapping[str, Any], *, named: bool) -> list[str]:
    """What is wrong with one worker's answer (nothing: healthy); a worker without the Redis statedb
    is a problem only when it was named."""
    if not has_statedb(status):
        return [f"{name}: {status.get('error') or status.get('ok') or NO_STATEDB}"] if named else []
    problems = []
    if status.get("loaded") is False:
        problems.append(f"{name}: the stored state is not loaded yet (Redis unreachable since boot)")
    pending = int(status.get("pending") or 0)
    if pending:
        problems.append(f"{name}: {pending} revoked id{'s' if pending != 1 else ''} waiting to be written to Redis")
    since = _failing_since(status)
    if status.get("failing") or since is not None:
        problems.append(f"{name}: Redis failing" + (f" since {iso(since.replace(microsecond=0))}" if since else ""))
    return problems


@dataclass(frozen=True)
class WorkerHealth(Result):
    hostname: str
    healthy: bool
    problems: tuple[str, ...]
    status: dict[str, Any]  # its statedb_status answer


@dataclass(frozen=True)
class HealthReport(Result):
    """Redis answers, and every live worker (or the named one) has nothing pending and is not failing."""

    healthy: bool
    url: str  # masked
    redis_ok: bool
    workers: tuple[WorkerHealth, ...]
    problems: tuple[str, ...]


def check_health(admin: SyncStateAdmin, *, worker: str | None = None, timeout: float = 1.0) -> HealthReport:
    problems: list[str] = []
    redis_ok = True
    try:
        admin.call(lambda state: state.server_time())
    except StateDBError as exc:
        redis_ok = False
        problems.append(f"Redis: {exc}")
    checked: list[WorkerHealth] = []
    try:
        statuses = worker_statuses(admin, worker=worker, timeout=timeout)
    except ServiceError as exc:
        statuses = {}
        problems.append(str(exc))
    else:
        if worker and worker not in statuses:
            problems.append(f"{worker}: did not answer {STATUS_COMMAND} within {timeout:g} s (not running, or "
                            "not reachable through the broker)")
    for name, status in sorted(statuses.items()):
        found = status_problems(name, status, named=bool(worker))
        problems.extend(found)
        checked.append(WorkerHealth(name, not found, tuple(found), dict(status)))
    return HealthReport(not problems, admin.config.safe_url, redis_ok, tuple(checked), tuple(problems))


# -- Prometheus ------------------------------------------------------------------------------------

METRICS = {
    # from Redis: every set and worker under the prefix
    "celery_statedb_revoked_ids": "Revoked task ids stored in the set (hostname=\"fleet\": the fleet set).",
    "celery_statedb_oldest_revoked_age_seconds": "Age of the oldest revocation stored in the set.",
    "celery_statedb_revoked_set_memory_bytes": "Redis memory used by the set (MEMORY USAGE).",
    "celery_statedb_last_seen_age_seconds": "Seconds since the worker last saved its clock, by what it stored.",
    "celery_statedb_redis_up": "1 when Redis answered this scrape.",
    # from live workers (statedb_status)
    "celery_statedb_pending_ids": "Revoked ids the worker holds that are waiting to be written to Redis.",
    "celery_statedb_failing": "1 while Redis is failing for the worker.",
    "celery_statedb_clock_save_age_seconds": "Seconds since the worker's last clock save.",
    "celery_statedb_unstorable_ids": "Revoked ids honoured in memory only since boot (not storable).",
}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_samples(states: list[WorkerState], statuses: Mapping[str, Mapping[str, Any]], now: float,
                   redis_up: bool) -> Iterator[tuple[str, str | None, float]]:
    """(metric, hostname label or None, value) for everything known."""
    yield "celery_statedb_redis_up", None, 1.0 if redis_up else 0.0
    for state in states:
        yield "celery_statedb_revoked_ids", state.worker, float(state.revoked_count)
        if state.oldest is not None:
            yield "celery_statedb_oldest_revoked_age_seconds", state.worker, max(0.0, now - state.oldest.timestamp())
        if state.memory_bytes is not None:
            yield "celery_statedb_revoked_set_memory_bytes", state.worker, float(state.memory_bytes)
        if state.last_seen is not None and state.worker != FLEET:
            yield "celery_statedb_last_seen_age_seconds", state.worker, max(0.0, now - state.last_seen.timestamp())
    for name, status in sorted(statuses.items()):
        if not has_statedb(status):
            continue
        yield "celery_statedb_pending_ids", name, float(status.get("pending") or 0)
        failing = bool(status.get("failing")) or _failing_since(status) is not None
        yield "celery_statedb_failing", name, 1.0 if failing else 0.0
        saved = _number(status.get("last_clock_save"))
        if saved is not None:
            yield "celery_statedb_clock_save_age_seconds", name, max(0.0, now - saved)
        unstorable = _number(status.get("unstorable"))
        if unstorable is not None:
            yield "celery_statedb_unstorable_ids", name, unstorable


def metrics_text(samples: Iterator[tuple[str, str | None, float]]) -> str:
    """The Prometheus text exposition format, through ``prometheus_client``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: dict[str, Any] = {}
    for name, hostname, value in samples:
        family = families.get(name)
        if family is None:
            labels = [] if hostname is None else ["hostname"]
            kind = CounterMetricFamily if name == "celery_statedb_unstorable_ids" else GaugeMetricFamily
            family = families[name] = kind(name, METRICS[name], labels=labels)
        family.add_metric([] if hostname is None else [hostname], value)

    class Collected:
        def collect(self) -> Iterator[Any]:
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collected())
    text: bytes = generate_latest(registry)
    return text.decode()
