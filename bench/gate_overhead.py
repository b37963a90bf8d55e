"""The write gate's cost (ADR 0008): in the same run, on the source Cell, the same writer
workload (single-row INSERT, UPDATE and DELETE transactions on issues, a two-hop join-path table)
without the gate and with it, in turns; once for the moving organization's rows (membership
test + shared advisory lock + fence-row lookup) and once for another organization's rows
(membership test only).

Usage: python bench/gate_overhead.py [--runs 3] [--txns 2000] [--scale small]
Last line: ratio=<gated tx/s / ungated tx/s for the moving org> ratio_other_org=<same, other org>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg
from common import make_plan, median, start_cells

from orgmove import fence, state


def _project(conn: psycopg.Connection[object], org: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT p.id, p.creator_id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
        "WHERE n.organization_id = %s AND p.creator_id IS NOT NULL ORDER BY p.id LIMIT 1", (org,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _workload(dsn: str, project: int, user: int, txns: int, iid_base: int) -> float:
    """Transactions per second of INSERT, UPDATE, DELETE, one row each, autocommit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        t = time.perf_counter()
        for i in range(txns // 3):
            row = conn.execute(
                "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                "VALUES (%s, %s, %s, 'bench', 1, now()) RETURNING id", (project, user, iid_base + i)).fetchone()
            assert row is not None
            conn.execute("UPDATE issues SET title = 'bench-u' WHERE id = %s", (row[0],))
            conn.execute("DELETE FROM issues WHERE id = %s", (row[0],))
        return (txns // 3) * 3 / (time.perf_counter() - t)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--txns", type=int, default=2000)
    parser.add_argument("--scale", default="small")
    args = parser.parse_args()
    cells = start_cells(args.scale)
    work = Path(tempfile.mkdtemp(prefix="orgmove-bench-gate-"))
    plan, _ = make_plan(cells, work)
    dsn = cells.dsn("cell-1", "gitlab")
    with psycopg.connect(dsn, autocommit=True) as conn:
        state.install_cell_schema(conn)
        fence.drop_gate(conn, plan)
        org_project, org_user = _project(conn, int(plan.org))
        other_project, other_user = _project(conn, 3)
    ratios: list[float] = []
    other_ratios: list[float] = []
    base = 50_000_000
    for run in range(args.runs):
        plain = _workload(dsn, org_project, org_user, args.txns, base + run * 4 * args.txns)
        plain_other = _workload(dsn, other_project, other_user, args.txns, base + (run * 4 + 1) * args.txns)
        with psycopg.connect(dsn, autocommit=True) as conn:
            fence.install_gate(conn, plan)
        gated = _workload(dsn, org_project, org_user, args.txns, base + (run * 4 + 2) * args.txns)
        gated_other = _workload(dsn, other_project, other_user, args.txns, base + (run * 4 + 3) * args.txns)
        with psycopg.connect(dsn, autocommit=True) as conn:
            fence.drop_gate(conn, plan)
        ratios.append(gated / plain)
        other_ratios.append(gated_other / plain_other)
        print(f"run {run + 1}: org tx/s {plain:.0f} -> {gated:.0f} gated; "
              f"other org tx/s {plain_other:.0f} -> {gated_other:.0f} gated", flush=True)
    print(f"ratio={median(ratios):.3f} ratio_other_org={median(other_ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
