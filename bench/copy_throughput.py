"""Copy throughput: `orgmove copy` of the large organization against the best hand-written
baseline, two parallel `psql \\copy ... TO STDOUT (FORMAT binary) | psql \\copy ... FROM STDIN
(FORMAT binary)` pipes over the same rows, each into an identical empty target, in turns.

A third turn runs the same pipes with the target psql under
``PGOPTIONS='-c session_replication_role=replica'`` (what orgmove's copy sessions set), and the
set-based FK check that the cutover runs before the flip is timed on orgmove's target.

Usage: python bench/copy_throughput.py [--runs 3] [--scale large]
Prints fk_check_s=, then ratio_replica_pipe=<orgmove rows/s / replica-pipe rows/s> (goal >= 1.0)
and last ratio=<orgmove rows/s / plain-pipe rows/s> (goal >= 1.3 on a 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    BenchCells,
    make_plan,
    median,
    orgmove_argv,
    run_measured,
    start_cells,
)
from psycopg import sql

from orgmove.chunking import WHOLE, KeyRange, boundaries_query, select_chunk
from orgmove.plan import Plan, Step, split_table


def _halves(cells: BenchCells, plan: Plan, step: Step) -> list[KeyRange]:
    """Split a table's org rows in two by key, as a careful operator would for two pipes."""
    import psycopg

    if not step.key or step.self_referencing:
        return [WHOLE]
    with psycopg.connect(cells.dsn("cell-1", "gitlab")) as conn:
        whole = select_chunk(step, plan.root, plan.org, WHOLE)
        row = conn.execute(sql.SQL("SELECT count(*) FROM ({}) s").format(whole)).fetchone()
        n = row[0] if row else 0
        if n < 2:
            return [WHOLE]
        rows = conn.execute(boundaries_query(step, plan.root, plan.org, (n + 1) // 2)).fetchall()
    middle = tuple(rows[0]) if rows else None
    return [KeyRange(None, middle), KeyRange(middle, None)] if middle else [WHOLE]


def baseline_jobs(cells: BenchCells, plan: Plan) -> list[tuple[Step, str]]:
    jobs = []
    for step in plan.steps:
        for r in _halves(cells, plan, step):
            jobs.append((step, select_chunk(step, plan.root, plan.org, r).as_string(None)))
    return jobs


def run_baseline(cells: BenchCells, plan: Plan, jobs: list[tuple[Step, str]], target_db: str,
                 replica: bool = False) -> float:
    """Two pipes at a time; a table starts when the tables it references are complete.
    ``replica``: the loading psql runs with session_replication_role = replica."""
    env = dict(os.environ)
    if not replica:
        # A plain client fires the fixture's assign_p_ci_builds_id_value, which gives every build
        # a new id: the artifacts' FK to the builds would then fail, so the plain pipe loads with
        # that one trigger disabled (it still pays the FK triggers and the AFTER counter trigger).
        import psycopg

        with psycopg.connect(cells.dsn("cell-2", target_db), autocommit=True) as conn:
            conn.execute("ALTER TABLE public.p_ci_builds DISABLE TRIGGER assign_p_ci_builds_id_value")
    if replica:
        env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " -c session_replication_role=replica").strip()
    src = cells.dsn("cell-1", "gitlab")
    dst = cells.dsn("cell-2", target_db)
    remaining = {s.table: sum(1 for j in jobs if j[0].table == s.table) for s in plan.steps}
    planned = set(remaining)
    pending = list(jobs)
    running: list[tuple[Step, subprocess.Popen[bytes], subprocess.Popen[bytes]]] = []
    t = time.monotonic()
    while pending or running:
        for item in list(running):
            step, p1, p2 = item
            if p2.poll() is not None:
                p1.wait()
                if p1.returncode or p2.returncode:
                    raise SystemExit(f"baseline pipe for {step.table} failed")
                running.remove(item)
                remaining[step.table] -= 1
        while len(running) < 2:
            ready = [j for j in pending
                     if all(remaining[d] == 0 for d in j[0].depends_on if d in planned and d != j[0].table)]
            if not ready:
                break
            job = ready[0]
            pending.remove(job)
            step, select = job
            schema, name = split_table(step.table)
            cols = ", ".join(f'"{c}"' for c in step.columns)
            out_cmd = ["psql", "-X", "-q", src, "-c", f"\\copy ({select}) TO STDOUT (FORMAT binary)"]
            in_cmd = ["psql", "-X", "-q", dst, "-c", f'\\copy "{schema}"."{name}" ({cols}) FROM STDIN (FORMAT binary)']
            p1 = subprocess.Popen(out_cmd, stdout=subprocess.PIPE)
            p2 = subprocess.Popen(in_cmd, stdin=p1.stdout, stdout=subprocess.DEVNULL, env=env)
            assert p1.stdout is not None
            p1.stdout.close()
            running.append((step, p1, p2))
        time.sleep(0.002)
    return time.monotonic() - t


def _fk_check_seconds(cells: BenchCells, plan: Plan, target_db: str) -> float:
    """The set-based FK check over the org's rows on a target orgmove just copied into."""
    import psycopg

    from orgmove.fkcheck import check_foreign_keys

    with psycopg.connect(cells.dsn("cell-2", target_db), autocommit=True) as conn:
        report = check_foreign_keys(conn, plan)
    if not report.clean:
        raise SystemExit(f"FK check found dangling references: {report.to_json()}")
    return report.seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", default="large")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["orgmove", "baseline", "replica_pipe"],
                        help="run one side once into a fresh target (for timing with an external tool)")
    args = parser.parse_args()
    cells = start_cells(args.scale)
    work = Path(tempfile.mkdtemp(prefix="orgmove-bench-copy-"))
    plan, plan_path = make_plan(cells, work)
    jobs = baseline_jobs(cells, plan)
    if args.only:  # the same set-up on both sides, so that only the copy differs
        target = f"bench_only_{args.only}"
        cells.fresh_target(target)
        if args.only == "orgmove":
            cfg = cells.config_for(target, work / "only.toml")
            run_measured(orgmove_argv("--config", str(cfg), "copy", str(plan_path), "--workers", str(args.workers)))
        else:
            run_baseline(cells, plan, jobs, target, replica=args.only == "replica_pipe")
        cells.drop(target)
        return 0
    rows = sum(s.estimated_rows for s in plan.steps)
    om_times: list[float] = []
    base_times: list[float] = []
    ratios: list[float] = []
    replica_times: list[float] = []
    replica_ratios: list[float] = []
    fk_times: list[float] = []
    peak_rss = 0
    copied_rows = 0
    copied_bytes = 0
    for i in range(args.runs):
        cells.fresh_target("bench_om")
        cfg = cells.config_for("bench_om", work / "om.toml")
        wall, rss, out, _ = run_measured(orgmove_argv("--config", str(cfg), "copy", str(plan_path),
                                                      "--workers", str(args.workers), "--json"))
        import json

        doc = json.loads(out)
        copied_rows, copied_bytes = doc["rows"], doc["bytes"]
        peak_rss = max(peak_rss, rss)
        fk_times.append(_fk_check_seconds(cells, plan, "bench_om"))
        cells.drop("bench_om")
        cells.fresh_target("bench_base")
        base = run_baseline(cells, plan, jobs, "bench_base")
        cells.drop("bench_base")
        cells.fresh_target("bench_replica")
        rep = run_baseline(cells, plan, jobs, "bench_replica", replica=True)
        cells.drop("bench_replica")
        om_times.append(wall)
        base_times.append(base)
        replica_times.append(rep)
        ratios.append(base / wall)
        replica_ratios.append(rep / wall)
        print(f"run {i + 1}: orgmove {wall:.2f}s ({copied_rows / wall:,.0f} rows/s), "
              f"psql pipes {base:.2f}s ({copied_rows / base:,.0f} rows/s), replica pipes {rep:.2f}s, "
              f"FK check {fk_times[-1]:.2f}s, ratio {base / wall:.3f}, "
              f"ratio_replica_pipe {rep / wall:.3f}")
    om, base = median(om_times), median(base_times)
    mb = copied_bytes / 1e6
    print(f"rows={copied_rows} (plan estimate {rows}) bytes={copied_bytes}")
    print(f"orgmove:  median {om:.2f}s  {copied_rows / om:,.0f} rows/s  {mb / om:,.1f} MB/s  peak_rss={peak_rss}MB")
    print(f"baseline: median {base:.2f}s  {copied_rows / base:,.0f} rows/s  {mb / base:,.1f} MB/s")
    print(f"replica pipes: median {median(replica_times):.2f}s")
    fk = median(fk_times)
    print(f"FK check (cutover, before the flip): median {fk:.2f}s = {fk / om:.1%} of the copy; "
          f"orgmove copy + FK check vs plain pipes: {base / (om + fk):.3f}")
    print(f"peak_rss_mb={peak_rss}")
    print(f"fk_check_s={fk:.3f}")
    print(f"ratio_replica_pipe={median(replica_ratios):.3f}")
    print(f"ratio={median(ratios):.3f}")
    cells.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
