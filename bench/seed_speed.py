"""Seed speed: two fresh local Cells, ``seed(..., scale="large")``, rows per second.

Usage: ``python bench/seed_speed.py [--scale large] [--orgs 3] [--seed 42]``

Starts its own two PostgreSQL clusters in a temporary directory (not the test fixtures), seeds them,
prints rows per cell and organization, and ``rows_per_s=<x>`` on the last line, then stops and
removes the clusters. Target (issue 2): >= 100,000 rows/s for ``large``, and org 1 >= 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from orgmove.sandbox.pgcluster import LocalCluster, free_port
from orgmove.sandbox.seed import SCALES, seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", default="large", choices=sorted(SCALES))
    parser.add_argument("--orgs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="orgmove-bench-seed-"))
    clusters = {name: LocalCluster(base / name, free_port()) for name in ("cell-1", "cell-2")}
    try:
        for cluster in clusters.values():
            cluster.start()
        dsns = {name: cluster.dsn() for name, cluster in clusters.items()}
        report = seed(dsns, orgs=args.orgs, scale=args.scale, seed=args.seed)
    finally:
        for cluster in clusters.values():
            cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)

    for cell, tables in report.rows.items():
        print(f"{cell}: {sum(tables.values())} rows")
        for table, rows in tables.items():
            print(f"  {table:<24} {rows:>10}")
    for org in report.orgs:
        print(f"org {org.id} on {org.cell}: {org.rows} rows")
    print(f"scale={report.scale} orgs={args.orgs} rows={report.total_rows} "
          f"seconds={report.seconds:.2f}")
    ok = report.rows_per_s >= 100_000 if args.scale == "large" else True
    if args.scale == "large" and report.orgs[0].rows < 1_000_000:
        print(f"warning: org 1 has {report.orgs[0].rows} rows, below 1,000,000", file=sys.stderr)
        ok = False
    if not ok:
        print("warning: below the target of 100,000 rows/s", file=sys.stderr)
    print(f"rows_per_s={report.rows_per_s:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
