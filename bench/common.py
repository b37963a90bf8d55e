"""Shared set-up of the benchmarks: two local Cells under .orgmove/bench (kept between runs, so
the large org is seeded once), fresh empty target databases, and a plan for organization 1.
Uses only public tools: PostgreSQL's own binaries, psql, and orgmove."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orgmove import planner, state  # noqa: E402
from orgmove.config import load_config  # noqa: E402
from orgmove.plan import Plan, read_plan, write_plan  # noqa: E402
from orgmove.sandbox.pgcluster import LocalCluster, free_port  # noqa: E402
from orgmove.sandbox.seed import install_schema, seed  # noqa: E402

BENCH_DIR = REPO / ".orgmove" / "bench"
RULES = str(REPO / "plans" / "gitlab.rules.yaml")
SOURCE_DB = "gitlab"
TEMPLATE_DB = "empty_tpl"


@dataclass
class BenchCells:
    clusters: dict[str, LocalCluster]
    scale: str

    def dsn(self, cell: str, db: str) -> str:
        return self.clusters[cell].dsn(db)

    def fresh_target(self, name: str) -> str:
        admin = self.dsn("cell-2", "postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)))
        return self.dsn("cell-2", name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.dsn("cell-2", "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def config_for(self, target_db: str, path: Path, extra: str = "") -> Path:
        text = (f'[cells."cell-1"]\ndsn = "{self.dsn("cell-1", SOURCE_DB)}"\n'
                f'[cells."cell-2"]\ndsn = "{self.dsn("cell-2", target_db)}"\n{extra}')
        path.write_text(text)
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        for c in self.clusters.values():
            c.stop()


def _ensure_db(admin_dsn: str, name: str) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def start_cells(scale: str = "large") -> BenchCells:
    """Start (and on the first run create and seed) the benchmark Cells."""
    marker = BENCH_DIR / f"seeded-{scale}.json"
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    ports_file = BENCH_DIR / "ports.json"
    if ports_file.exists():
        ports = json.loads(ports_file.read_text())
    else:
        ports = {"cell-1": free_port(), "cell-2": free_port()}
        ports_file.write_text(json.dumps(ports))
    clusters = {name: LocalCluster(BENCH_DIR / name, ports[name]) for name in ("cell-1", "cell-2")}
    for c in clusters.values():
        c.start()
    cells = BenchCells(clusters, scale)
    if not marker.exists():
        for c in clusters.values():
            admin = c.dsn("postgres")
            with psycopg.connect(admin, autocommit=True) as conn:
                for db in (SOURCE_DB, TEMPLATE_DB):
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            _ensure_db(admin, SOURCE_DB)
        t = time.monotonic()
        report = seed({n: c.dsn(SOURCE_DB) for n, c in clusters.items()}, orgs=3, scale=scale)
        print(f"seeded {report.total_rows:,} rows in {time.monotonic() - t:.1f}s", file=sys.stderr)
        with psycopg.connect(clusters["cell-1"].dsn(SOURCE_DB), autocommit=True) as conn:
            state.install_cell_schema(conn)
        _ensure_db(clusters["cell-2"].dsn("postgres"), TEMPLATE_DB)
        install_schema(clusters["cell-2"].dsn(TEMPLATE_DB), 2, cell="cell-2")
        with psycopg.connect(clusters["cell-2"].dsn(TEMPLATE_DB), autocommit=True) as conn:
            state.install_cell_schema(conn)
        # Cluster-wide rows exist in every Cell: the empty target gets them too.
        with psycopg.connect(clusters["cell-1"].dsn(SOURCE_DB)) as src, \
                psycopg.connect(clusters["cell-2"].dsn(TEMPLATE_DB)) as dst:
            for table in ("users", "lfs_objects"):
                with src.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(
                        sql.Identifier(table))) as out, dst.cursor().copy(
                        sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(sql.Identifier(table))) as inp:
                    for block in out:
                        inp.write(block)
        marker.write_text(json.dumps({"rows": report.total_rows}))
    return cells


def make_plan(cells: BenchCells, workdir: Path) -> tuple[Plan, Path]:
    target = cells.fresh_target("plan_target")
    try:
        config = load_config(cells.config_for("plan_target", workdir / "plan.toml"))
        plan = planner.make_plan(config, "1", "cell-1", "cell-2", RULES)
    finally:
        cells.drop("plan_target")
    del target
    path = write_plan(plan, workdir / "org-1.plan.json")
    return read_plan(path), path


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str, str]:
    """(wall seconds, peak RSS in MB of that one process, stdout, stderr)."""
    import tempfile

    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, text=True, env=full_env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss // 1024, out, err


def orgmove_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "orgmove", *args]


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def json_of(out: str) -> Any:
    return json.loads(out)
