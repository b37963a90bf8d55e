"""Assertions on real databases: row counts and checksums of both Cells."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orgmove import planner
from orgmove.chunking import org_rows_where
from orgmove.config import load_config
from orgmove.plan import Plan, Step, read_plan, table_ident, write_plan

REPO = Path(__file__).resolve().parent.parent
RULES = str(REPO / "plans" / "gitlab.rules.yaml")


def step_checksum(dsn: str, plan: Plan, step: Step, org: Any | None = None, negate: bool = False) -> tuple[int, str]:
    """(rows, md5 of the sorted row texts) of the org's rows of one step on one Cell."""
    where = org_rows_where(step, plan.root, plan.org if org is None else org)
    if negate:
        where = sql.SQL("({}) IS NOT TRUE").format(where)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in step.columns)
    q = sql.SQL(
        "SELECT count(*), COALESCE(md5(string_agg(r, E'\\n' ORDER BY r)), '') FROM "
        "(SELECT ROW({cols})::text AS r FROM {t} WHERE {w}) s"
    ).format(cols=cols, t=table_ident(step.table), w=where)
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        row = conn.execute(q).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def org_checksums(dsn: str, plan: Plan, org: Any | None = None) -> dict[str, tuple[int, str]]:
    return {s.table: step_checksum(dsn, plan, s, org) for s in plan.steps}


def other_rows_checksums(dsn: str, plan: Plan) -> dict[str, tuple[int, str]]:
    """Rows of every planned table that do NOT belong to the plan's org."""
    return {s.table: step_checksum(dsn, plan, s, negate=True) for s in plan.steps}


def table_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(t))).fetchone()[0])  # type: ignore[index]
                for t in tables}


def orgmove_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("ORGMOVE_FAILPOINTS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orgmove", *args], capture_output=True, text=True, timeout=timeout,
        env=full_env, input=input_text, cwd=str(REPO), check=False,
    )


def cli_ok(config_path: Path, *args: str, code: int = 0) -> Any:
    """Run the CLI against a config; assert the exit code and that no traceback leaked; the parsed
    JSON document when ``--json`` was asked for, else the finished process."""
    import json

    proc = orgmove_cli("--config", str(config_path), *args)
    assert proc.returncode == code, (args, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout) if "--json" in args else proc


def orgmove_popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = dict(os.environ)
    full_env.pop("ORGMOVE_FAILPOINTS", None)
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "orgmove", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=full_env, cwd=str(REPO),
    )


def chunk_log_duplicates(conn: psycopg.Connection[Any], move_key: str) -> list[tuple[str, int, int]]:
    """(table, chunk, commits) for any chunk generation committed more than once (never expected)."""
    rows = conn.execute(
        "SELECT table_name, chunk_no, count(*) FROM orgmove.chunk_log WHERE move_key = %s "
        "GROUP BY table_name, chunk_no, generation HAVING count(*) > 1",
        (move_key,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def make_plan(cells: Any, org: str = "1", tmp: Path | None = None) -> tuple[Plan, Path]:
    """Plan the move of ``org`` from cell-1 to cell-2 with the shipped rules; write and re-read it."""
    config = load_config(cells.config_path)
    plan = planner.make_plan(config, org, "cell-1", "cell-2", RULES)
    path = (tmp or cells.config_path.parent) / f"org-{org}.plan.json"
    write_plan(plan, path)
    return read_plan(path), path
