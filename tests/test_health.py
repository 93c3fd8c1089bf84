"""``celery statedb health`` and ``metrics`` on simulated ``statedb_status`` replies (decision 4's shape)
and a real Redis; the real workers' proof is in test_e2e_operator.py."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.control import Control
from celery.bin.celery import celery
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from celery_redis_statedb import SyncStateAdmin
from celery_redis_statedb.health import check_health, metric_samples, metrics_text, status_problems
from celery_redis_statedb.local_servers import free_port
from statedb.keys import KeySchema

HEALTHY = {"hostname": "w1@h", "version": "0.6.0", "url": "redis://127.0.0.1:6379/0", "scope": "worker",
           "keys": {}, "loaded": True, "in_memory": 3, "index_size": 0, "pending": 0, "failing": False,
           "failing_since": None, "last_clock_save": None,
           "boot": {"duration_s": 0.01, "merged_in_memory": 3, "merged_in_index": 0},
           "unstorable": 0, "last_unstorable": None, "bad_members": 0, "unreadable_keys": []}


def status(**changes: Any) -> dict[str, Any]:
    return {**HEALTHY, **changes}


class Replies:
    """What the simulated workers answer to broadcasts (statedb_status, ping)."""

    def __init__(self) -> None:
        self.status: dict[str, dict[str, Any]] = {}
        self.error: Exception | None = None
        self.calls: list[tuple[str, Any]] = []

    def broadcast(self, control: Control, command: str, arguments: Any = None, destination: Any = None,
                  reply: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append((command, destination))
        if self.error is not None:
            raise self.error
        answers = {"statedb_status": self.status, "ping": {name: {"ok": "pong"} for name in self.status}}[command]
        return [{name: answer} for name, answer in answers.items() if destination is None or name in destination]


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> Iterator[Replies]:
    simulated = Replies()
    # A function, not the bound method: Control's instances pass themselves.
    monkeypatch.setattr(Control, "broadcast", lambda self, *a, **k: simulated.broadcast(self, *a, **k))  # noqa: PLW0108
    yield simulated


@pytest.fixture
def admin(redis_url: str, key_prefix: str) -> SyncStateAdmin:
    return SyncStateAdmin.for_app(Celery("health", set_as_current=False), redis_url, key_prefix=key_prefix)


def test_healthy_when_redis_answers_and_nothing_is_pending(admin: SyncStateAdmin, replies: Replies) -> None:
    replies.status = {"w1@h": status(), "w2@h": status(hostname="w2@h")}
    report = check_health(admin)
    assert report.healthy and report.problems == () and [w.hostname for w in report.workers] == ["w1@h", "w2@h"]
    json.dumps(report.as_dict())


def test_one_problem_per_line(admin: SyncStateAdmin, replies: Replies) -> None:
    replies.status = {"w1@h": status(pending=3, failing=True, failing_since=1_800_000_000.0),
                      "w2@h": status(pending=1), "w3@h": status(loaded=False),
                      "other@h": {"error": "no Redis statedb on this worker"}}
    report = check_health(admin)
    assert not report.healthy
    assert report.problems == (
        "w1@h: 3 revoked ids waiting to be written to Redis", "w1@h: Redis failing since 2027-01-15T08:00:00Z",
        "w2@h: 1 revoked id waiting to be written to Redis",
        "w3@h: the stored state is not loaded yet (Redis unreachable since boot)")


def test_a_named_worker_must_answer_and_have_the_statedb(admin: SyncStateAdmin, replies: Replies) -> None:
    replies.status = {"w1@h": status(), "plain@h": {"error": "no Redis statedb on this worker"}}
    assert check_health(admin, worker="w1@h").healthy
    assert replies.calls[-1] == ("statedb_status", ["w1@h"])
    assert check_health(admin, worker="plain@h").problems == ("plain@h: no Redis statedb on this worker",)
    missing = check_health(admin, worker="gone@h", timeout=0.5)
    assert missing.problems == ("gone@h: did not answer statedb_status within 0.5 s (not running, or not reachable "
                                "through the broker)",)


def test_redis_down_or_the_broker_down_are_problems(redis_url: str, key_prefix: str, replies: Replies) -> None:
    dead = SyncStateAdmin.for_app(Celery("h", set_as_current=False), f"redis://:pw@127.0.0.1:{free_port()}/0",
                                  key_prefix=key_prefix)
    replies.status = {"w1@h": status()}
    (problem,) = check_health(dead).problems
    assert problem.startswith("Redis: cannot reach Redis at redis://:***@127.0.0.1:") and "pw" not in problem
    replies.error = OSError("broker gone")
    alive = SyncStateAdmin.for_app(Celery("h", set_as_current=False), redis_url, key_prefix=key_prefix)
    assert check_health(alive).problems == (
        "cannot ask the workers (Celery's broadcast through the broker failed: broker gone)",)


def test_a_status_before_0_6_is_read_too() -> None:
    """A worker of the 0.5 control command: no 'failing', but 'failing_since'."""
    old = {"pending": 0, "unstorable": 0, "failing_since": 1_800_000_000.0, "index_size": 0, "loaded": True}
    assert status_problems("w@h", old, named=False) == ["w@h: Redis failing since 2027-01-15T08:00:00Z"]
    assert status_problems("w@h", {"ok": "no Redis statedb on this worker"}, named=True) == [
        "w@h: no Redis statedb on this worker"]


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> Callable[..., Result]:
    for name in [n for n in os.environ if n.startswith(("CELERY_", "REDIS_STATEDB_"))]:
        monkeypatch.delenv(name)
    module = f"healthapp_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('healthapp', broker={redis_url!r}, set_as_current=False)\n"
        f"app.conf.redis_state_key_prefix = {key_prefix!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(*args: str) -> Result:
        return CliRunner().invoke(celery, ["-A", module, "statedb", "--url", redis_url, *args],
                                  catch_exceptions=False)

    return run


def test_health_exit_codes_and_lines(cli: Callable[..., Result], replies: Replies) -> None:
    replies.status = {"w1@h": status(), "w2@h": status(hostname="w2@h")}
    healthy = cli("health")
    assert healthy.exit_code == 0 and "with nothing pending" in healthy.output and "2 live workers" in healthy.output
    replies.status["w2@h"] = status(pending=2, failing=True)
    sick = cli("health")
    assert sick.exit_code == 1
    assert sick.output.splitlines() == ["w2@h: 2 revoked ids waiting to be written to Redis", "w2@h: Redis failing"]
    assert cli("health", "--worker", "w1@h").exit_code == 0
    report = json.loads(cli("health", "--worker", "w2@h", "--json").output)
    assert report["healthy"] is False and report["workers"][0]["status"]["pending"] == 2


def test_metrics_in_the_prometheus_text_format(cli: Callable[..., Result], replies: Replies,
                                               redis_client: redis.Redis, key_prefix: str, tmp_path: Path) -> None:
    schema, now = KeySchema(key_prefix), float(redis_client.time()[0])
    redis_client.zadd(schema.revoked_key("w1@h"), {"a": now - 100, "b": now - 10})
    redis_client.hset(schema.info_key("w1@h"), mapping={"last_seen": f"{now - 20}", "scope": "worker"})
    redis_client.zadd(schema.shared_revoked_key, {"c": now - 1000})
    replies.status = {"w1@h": status(pending=4, failing=True, last_clock_save=now - 30, unstorable=2)}
    result = cli("metrics")
    assert result.exit_code == 0, result.output
    samples = {(s.name, s.labels.get("hostname")): s.value
               for family in text_string_to_metric_families(result.output) for s in family.samples}
    assert samples[("celery_statedb_revoked_ids", "w1@h")] == 2
    assert samples[("celery_statedb_revoked_ids", "fleet")] == 1
    assert samples[("celery_statedb_oldest_revoked_age_seconds", "fleet")] >= 1000
    assert samples[("celery_statedb_revoked_set_memory_bytes", "w1@h")] > 0
    assert samples[("celery_statedb_last_seen_age_seconds", "w1@h")] >= 20
    assert samples[("celery_statedb_pending_ids", "w1@h")] == 4 and samples[("celery_statedb_failing", "w1@h")] == 1
    assert samples[("celery_statedb_clock_save_age_seconds", "w1@h")] >= 30
    assert samples[("celery_statedb_unstorable_ids_total", "w1@h")] == 2
    assert samples[("celery_statedb_redis_up", None)] == 1
    kinds = {family.name: family.type for family in text_string_to_metric_families(result.output)}
    assert kinds["celery_statedb_unstorable_ids"] == "counter" and kinds["celery_statedb_pending_ids"] == "gauge"
    out = tmp_path / "statedb.prom"
    assert cli("metrics", "--output", str(out)).exit_code == 0  # for a textfile collector: renamed into place
    written = {family.name for family in text_string_to_metric_families(out.read_text())}
    assert written == set(kinds) and not list(tmp_path.glob("*.tmp"))


def test_metrics_of_a_redis_that_is_down_say_so(tmp_path: Path, replies: Replies) -> None:
    samples = list(metric_samples([], {"w@h": status(failing=True)}, 0.0, redis_up=False))
    text = metrics_text(iter(samples))
    assert "celery_statedb_redis_up 0.0" in text and 'celery_statedb_failing{hostname="w@h"} 1.0' in text
