"""A real ``celery worker`` on a Sentinel-managed Redis (issue 13): a revoke stream while the primary is
SIGKILLed, and separately while ``SENTINEL FAILOVER`` demotes it.

The topology (1 primary, 1 replica, 3 Sentinels) is the suite's own; the broker stays on the run's
server. A revoke counts as *acknowledged* when the worker's reply reached the sender.

What is measured, in one ``GUARANTEE`` line per scenario:
- ``unaccounted_at_switch``: when the Sentinels name the new primary (the stream paused), acknowledged
  ids that are neither in the new primary nor waiting in the worker's pending buffer (counted first):
  ids the worker believes stored that the old primary took with it. Only its in-memory resync on the
  new connection repairs them, so a worker that dies now loses them;
- ``write_to_new_primary_s``: from then until a revoke acknowledged after it is in the new primary;
- ``lost``: acknowledged ids missing from the new primary once the worker has had time to repair.
With ``redis_state_min_replicas=1`` the first and the last must be 0; without it they are reported.
"""

from __future__ import annotations

import time

import pytest
import redis

from celery_redis_statedb.local_servers import PrivateServer, SentinelTopology
from tests.guarantees import guarantee, missing_from
from tests.keys import revoked_key
from tests.revoke_streams import RevokeStream, assert_clean
from tests.workers import WorkerHarness, WorkerProcess, fast_env, wait_until

pytestmark = pytest.mark.e2e

SWITCH_TIMEOUT = 120.0  # liveness bounds: a few seconds on an idle host; Sentinel's TILT mode adds 30 s
REPAIR_TIMEOUT = 90.0


def start_worker(harness: WorkerHarness, topology: SentinelTopology, env: dict[str, str], *, kombu: bool
                 ) -> WorkerProcess:
    """A worker on ``topology``: its redis+sentinel URL with --statedb, or kombu's form (as a reused broker
    URL would be) from Celery's own variable."""
    app = harness.app(install=True)
    if kombu:
        worker = harness.worker(app, None, env={**env, "CELERY_WORKER_STATEDB": topology.kombu_url})
    else:
        worker = harness.worker(app, topology.url, env=env)
    worker.start()
    harness.wait_reachable(worker)
    return worker


def fail_over(topology: SentinelTopology, fault: str) -> tuple[PrivateServer, PrivateServer]:
    """SIGKILL the primary or SENTINEL FAILOVER; (the old primary, the new one once the Sentinels name it)."""
    old = topology.primary()
    if fault == "sigkill":
        old.kill()
    else:
        topology.failover()
    return old, topology.wait_primary(SWITCH_TIMEOUT, not_port=old.port, in_sync=False)


def wait_repaired(harness: WorkerHarness, worker: WorkerProcess, client: redis.Redis, key: str, acked: list[str],
                  *, durable: bool) -> None:
    """Until every acknowledged id is in ``key`` (and, if ``durable``, nothing waits in the worker: every
    write was acknowledged by a replica); a timeout is raised only if ``durable``."""

    def repaired() -> bool:
        return not missing_from(client, key, acked) and (not durable or harness.statedb_status(worker)["pending"] == 0)

    try:
        wait_until(repaired, REPAIR_TIMEOUT, "every acknowledged revoke stored", interval=0.3)
    except TimeoutError:
        if durable:
            raise


@pytest.mark.slow
@pytest.mark.parametrize("min_replicas", [1, 0])
@pytest.mark.parametrize("fault", ["sigkill", "failover"])
def test_acknowledged_revokes_survive_a_sentinel_failover(
    harness: WorkerHarness, state_prefix: str, streams: list[RevokeStream], capsys: pytest.CaptureFixture[str],
    fault: str, min_replicas: int,
) -> None:
    with SentinelTopology() as topology:
        env = {**fast_env(state_prefix, clock_interval=1),
               "CELERY_REDIS_STATE_MIN_REPLICAS": str(min_replicas)}
        worker = start_worker(harness, topology, env, kombu=fault == "sigkill")
        key = revoked_key(state_prefix, worker.name)
        before = RevokeStream(harness, worker, reply_timeout=2.0).start()
        streams.append(before)
        before.wait_acked(60)

        old, new = fail_over(topology, fault)
        switched = time.monotonic()
        before.stop()
        pending = harness.statedb_status(worker)["pending"]  # first: what is pending then is missing or stored
        client = new.client()
        try:
            unaccounted = len(missing_from(client, key, list(before.acked))) - pending
            if fault == "sigkill":
                old.start()  # back empty: the Sentinels make it a replica of the new primary
            after = RevokeStream(harness, worker, reply_timeout=2.0).start()
            streams.append(after)
            after.wait_acked(3, timeout=SWITCH_TIMEOUT)  # a worker in an outage answers, but a loaded host is slow
            wait_until(lambda: not missing_from(client, key, after.acked[:1]), SWITCH_TIMEOUT,
                       "a revoke acknowledged after the switch in the new primary", interval=0.05)
            to_new_primary = time.monotonic() - switched
            after.wait_acked(len(after.acked) + 60, timeout=SWITCH_TIMEOUT)
            after.stop()
            acked = [*before.acked, *after.acked]
            wait_repaired(harness, worker, client, key, acked, durable=bool(min_replicas))
            lost = len(missing_from(client, key, acked))
        finally:
            client.close()
        guarantee(capsys, f"sentinel-{fault}-min-replicas-{min_replicas}", acked=len(acked),
                  acked_before_switch=len(before.acked), unaccounted_at_switch=max(unaccounted, 0),
                  pending_at_switch=pending, write_to_new_primary_s=f"{to_new_primary:.2f}", lost=lost)
        if min_replicas:
            assert unaccounted <= 0, f"{unaccounted} acknowledged ids neither durable nor pending at the switch"
            assert lost == 0
        # The new connection (to the new primary) made the worker write its in-memory set back.
        assert "revoked ids held in memory back to" in worker.log()
        assert worker.running
        assert_clean(worker)
