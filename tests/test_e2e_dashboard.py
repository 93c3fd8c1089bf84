"""The dashboard of a Celery app (``celery_redis_statedb.dashboard.make_router``) with a real worker:
its live status in the workers table, a revoke and a restore from the dashboard reaching it at once,
and the Prometheus exposition."""

from __future__ import annotations

import pytest
from celery import Celery
from fastapi import FastAPI

from celery_redis_statedb.dashboard import make_router
from tests.asgi import mounted
from tests.workers import WorkerHarness, assert_discarded, new_task_id

pytestmark = pytest.mark.e2e


async def test_a_live_worker_in_the_dashboard(harness: WorkerHarness, redis_url: str, state_prefix: str) -> None:
    app = Celery("dashboard-host", broker=harness.broker_url, set_as_current=False)
    app.conf.update(broker_transport_options={"global_keyprefix": harness.broker_prefix},
                    worker_state_db=redis_url, redis_state_key_prefix=state_prefix)
    worker = harness.worker(harness.app(install=True, conf={"redis_state_key_prefix": state_prefix}),
                            redis_url).start()
    harness.wait_reachable(worker)
    task_id = new_task_id()
    async with mounted(make_router(app, status_timeout=2.0), "/statedb", FastAPI()) as client:
        body = (await client.get("/api/workers")).json()
        row = next(w for w in body["workers"] if w["worker"] == worker.name)
        assert body["live"] is True
        assert row["live"]["pending"] == 0 and row["live"]["failing"] is False and row["live"]["version"]
        assert row["scope"] == "worker" and row["last_seen"] is not None

        stored = (await client.post("/api/revoke", json={"task_ids": [task_id]})).json()
        assert stored["broadcast"] is True and stored["added"] == 1
        assert_discarded(harness, worker, task_id)  # told at once, not only at its next boot

        restored = (await client.post("/api/restore", json={"task_ids": [task_id]})).json()
        assert restored["broadcast"] is True and "live workers told" in restored["message"]
        harness.send(worker, task_id, marker="after-restore")
        harness.wait_ran(worker, "after-restore")

        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert f'celery_statedb_pending_ids{{hostname="{worker.name}"}} 0.0' in metrics.text
    assert "celery_statedb_redis_up 1.0" in metrics.text
