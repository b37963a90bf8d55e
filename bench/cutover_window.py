"""Cutover freeze window: copy the large organization, then cut over while a writer workload
(4 threads, classify -> write with assert_writable -> retry on read_only) keeps writing.
The freeze window is fence to commit; the writers see it as read-only refusals.

Usage: python bench/cutover_window.py
Prints writer_tps=<acknowledged org writes per second from copy start to cutover end>, then
last line freeze_s=<seconds>.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import psycopg
from common import make_plan, orgmove_argv, run_measured, start_cells
from psycopg import sql

from orgmove.topology.client import TopologyClient, seed_claims
from orgmove.topology.server import run_in_thread
from tests.workload import Workload

TOKEN = "bench-token"


def main() -> int:
    cells = start_cells("large")
    work = Path(tempfile.mkdtemp(prefix="orgmove-bench-cutover-"))
    _, plan_path = make_plan(cells, work)
    source = cells.dsn("cell-1", "gitlab")
    # The bench source is reused between runs: take back any move of an earlier run.
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("DELETE FROM orgmove.fences")
        conn.execute("DELETE FROM issues WHERE iid >= 10000000")
    target = cells.fresh_target("bench_cutover")
    admin = cells.dsn("cell-1", "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_topology WITH (FORCE)")
        conn.execute(sql.SQL("CREATE DATABASE bench_topology"))
    with run_in_thread(cells.dsn("cell-1", "bench_topology"), TOKEN) as url:
        with TopologyClient(url, TOKEN) as client:
            client.register_cell("cell-1", "cell-1:5432")
            client.register_cell("cell-2", "cell-2:5432")
            seed_claims(client, {"cell-1": source})
        cfg = cells.config_for("bench_cutover", work / "cutover.toml",
                               extra=f'[topology]\nurl = "{url}"\ntoken = "{TOKEN}"\n')
        with psycopg.connect(source) as conn:
            project_id, user_id = conn.execute(
                "SELECT p.id, p.creator_id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
                "WHERE n.organization_id = 1 ORDER BY p.id LIMIT 1").fetchone()  # type: ignore[misc]
        client = TopologyClient(url, TOKEN)

        def classify() -> tuple[str, str]:
            c = client.classify("organization_id", "1")
            return str(c.cell), str(c.org_state)

        load = Workload(org=1, classify=classify, dsns={"cell-1": source, "cell-2": target},
                        project_id=project_id, author_id=user_id, threads=6, slow_writer_hold_s=0.05,
                        classify_ttl_s=0.2, pause_s=0.0)
        load.start()
        try:
            started = time.monotonic()
            copy_s, _, _, _ = run_measured(orgmove_argv("--config", str(cfg), "copy", str(plan_path)))
            sync_s, _, _, _ = run_measured(orgmove_argv("--config", str(cfg), "sync", str(plan_path),
                                                        "--until-caught-up", "--max-lag-s", "1"))
            cut_s, _, out, _ = run_measured(orgmove_argv("--config", str(cfg), "cutover", str(plan_path),
                                                         "--yes", "--json"))
            window_s = time.monotonic() - started
            acked_in_window = len(load.acks)
            time.sleep(1)
        finally:
            load.stop()
            client.close()
    doc = json.loads(out)
    print(f"copy {copy_s:.2f}s; sync {sync_s:.2f}s; cutover {cut_s:.2f}s in all (pre-sync while writable included)")
    for step in doc["steps"]:
        print(f"  {step['step']:<9} {step['seconds']:>7.3f}s  {step.get('detail', '')}")
    print(f"writes acknowledged: {len(load.acks)} ({sum(a.cell == 'cell-2' for a in load.acks)} on the "
          f"new owner); read-only refusals during the freeze: {load.read_only_refusals}; "
          f"writer errors: {len(load.errors)}")
    cells.drop("bench_cutover")
    cells.stop()
    print(f"writer_tps={acked_in_window / window_s:.1f}")
    print(f"freeze_s={doc['freeze_window_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
