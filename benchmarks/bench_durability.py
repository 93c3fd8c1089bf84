"""What a revoke costs when it must reach a replica: ``redis_state_min_replicas=1`` (WAIT) vs 0.

Run on demand (not collected by pytest):

    .venv/bin/python benchmarks/bench_durability.py [--server redis-server] [--quick]

A replica is needed, so this benchmark starts its own topology (``SentinelTopology``: 1 primary,
1 replica, 3 Sentinels, loopback; ``--server`` picks the kind) whatever ``--redis-url`` says.
Four workers' write-throughs (``WorkerStatePersistence`` booted, then ``state.revoked.update(ids)``,
what Celery's revoke command does) take turns, the order rotating every round:

- ``redis://`` to the primary, min_replicas 0 and 1;
- ``redis+sentinel://`` (the client Sentinel points at the primary), min_replicas 0 and 1.

One id per revoke (p50 and p99), and batches of 100 ids (median). WAIT follows the write on the
same connection, in the same pipeline: one round trip still, plus the time the replica takes to
acknowledge (it is asked at once, not at its next once-a-second report).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import _common as c
from celery.utils.collections import LimitedSet
from kombu.clocks import LamportClock

from celery_redis_statedb import StateDBConfig, WorkerStatePersistence
from celery_redis_statedb.local_servers import SentinelTopology, ServerUnavailable, default_kind, delete_prefixed

NAMES = ("durability",)
MAXLEN, EXPIRES = 50_000, 10800.0


def run(url: str, args: argparse.Namespace, only: set[str] | None = None) -> list[c.Table]:
    if only is not None and "durability" not in only:
        return []
    kind = default_kind(prefer="embedded") if args.server == "auto" else c.SERVER_CHOICES[args.server]
    try:
        with SentinelTopology(kind=kind) as topology:
            return [_measure(topology, args)]
    except ServerUnavailable as exc:
        raise SystemExit(f"{exc} (use --server)") from None


def _measure(topology: SentinelTopology, args: argparse.Namespace) -> c.Table:
    singles, batch_rounds = (300, 30) if args.quick else (2000, 300)
    prefix = c.new_prefix("durability")
    counter = itertools.count()
    urls = {"primary": topology.primary().url, "sentinel": topology.url}
    workers: dict[str, WorkerStatePersistence] = {}
    for (via, target), replicas in itertools.product(urls.items(), (0, 1)):
        config = StateDBConfig(url=target, key_prefix=prefix, min_replicas=replicas)
        workers[f"{via}, min_replicas={replicas}"] = persistence = WorkerStatePersistence(
            config, f"bench-{via}-{replicas}@host", revoked=LimitedSet(maxlen=MAXLEN, expires=EXPIRES),
            clock=LamportClock())
        persistence.boot()

    def fresh(n: int) -> list[str]:
        return [f"{next(counter):08d}-0000-4000-8000-durable{prefix[-12:]}" for _ in range(n)]

    contenders: list[tuple[str, Callable[[list[str]], None]]] = [
        (name, persistence.revoked.update) for name, persistence in workers.items()]

    try:
        single = c.alternating(contenders, fresh, 1, singles)
        batch = c.alternating(contenders, fresh, 100, batch_rounds)
        pending = sum(len(persistence.pending) for persistence in workers.values())
    finally:
        for persistence in workers.values():
            persistence.save()
        delete_prefixed(topology.primary().url, prefix)

    table = c.Table("10. Durability: a revoke's write-through with redis_state_min_replicas=1 (WAIT 1) vs 0",
                    ["case", "samples", "via", "min_replicas=0 ms", "min_replicas=1 ms", "1 vs 0", "added us"])
    for via in urls:
        without, with_wait = single[f"{via}, min_replicas=0"], single[f"{via}, min_replicas=1"]
        for label, q in (("1 id, p50", 0.5), ("1 id, p99", 0.99)):
            a, b = c.percentile(without, q), c.percentile(with_wait, q)
            table.add(label, len(with_wait), via, c.ms(a), c.ms(b), c.ratio(b, a), f"{(b - a) * 1e6:+.0f}")
        a = c.median(batch[f"{via}, min_replicas=0"])
        b = c.median(batch[f"{via}, min_replicas=1"])
        table.add("batch of 100, median", len(batch[f"{via}, min_replicas=1"]), via, c.ms(a), c.ms(b),
                  c.ratio(b, a), f"{(b - a) * 1e6:+.0f}")
    table.notes.append(f"{topology.kind} topology started by the benchmark: 1 primary, 1 replica, 3 Sentinels, "
                       "loopback; every contender a booted WorkerStatePersistence, state.revoked.update(ids)")
    table.notes.append("via primary = redis://primary; via sentinel = redis+sentinel://s1,s2,s3/statedb/0 "
                       "(Sentinel is asked only when a connection opens: same cost per revoke)")
    table.notes.append(f"ids left pending at the end (a write no replica acknowledged in time): {pending}")
    return table


if __name__ == "__main__":
    c.standalone(run, argparse.ArgumentParser(description=__doc__.split("\n")[0]))
