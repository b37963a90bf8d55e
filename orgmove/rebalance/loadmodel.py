"""The load model: per Cell its bytes and rows, per organization an estimate of its size.

Everything comes from catalog statistics and the planner's own estimator, never from a full scan
of a big table: Cell totals from ``pg_database_size`` and ``pg_class.reltuples``; an
organization's rows per table from :func:`orgmove.planner.estimate_steps` (an exact filtered
count for tables of up to ``EXACT_COUNT_LIMIT`` rows by ``reltuples``, a ``TABLESAMPLE`` count
scaled up for bigger ones), its bytes from the rows times the table's row width from
``pg_stats`` (the sum of ``avg_width`` plus the tuple header). Not the table's size divided by
its rows: a table with few rows has a whole page or more per handful of rows, which would make
small organizations on a quiet Cell look large (falls back to that when a table has no
statistics yet). The optional write rate is the delta of
``pg_stat_user_tables`` (inserted + updated + deleted tuples) over a sampling interval.

Which organizations a Cell holds is the Topology Service's answer (the owner of each
organization row found in the Cell): after a move without cleanup the source still has the
rows, but they are no longer its load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from orgmove.catalog import read_catalog
from orgmove.config import Config
from orgmove.db import connect, wrap_errors
from orgmove.graph import analyze
from orgmove.plan import Plan, table_ident
from orgmove.planner import build_plan, estimate_steps, parse_org_key
from orgmove.rebalance.proposal import CellLoad, LoadReport, OrgLoad
from orgmove.rules import load_rules

APPLICATION_NAME = "orgmove/rebalance"

OwnerOf = Callable[[str], "str | None"]


def measure(config: Config, *, rules_path: str | None = None, owner_of: OwnerOf | None = None,
            sample_s: float = 0.0) -> LoadReport:
    """The load of every configured Cell. ``owner_of``: the Topology Service's owner of an org
    (None: every organization row found in a Cell counts for that Cell)."""
    rules = load_rules(rules_path or config.defaults.rules)
    cells: list[CellLoad] = []
    orgs: list[OrgLoad] = []
    writes_before: dict[str, int] = {}
    if sample_s > 0:
        for name in sorted(config.cells):
            writes_before[name] = _writes(config, name)
        time.sleep(sample_s)
    for name in sorted(config.cells):
        cell, found = _measure_cell(config, name, rules, owner_of)
        if sample_s > 0:
            cell.writes_per_s = round((_writes(config, name) - writes_before[name]) / sample_s, 2)
        cells.append(cell)
        orgs += found
    return LoadReport(cells=cells, orgs=orgs)


def _connect(config: Config, name: str) -> psycopg.Connection[Any]:
    conn = connect(config.cell_dsn(name), cell=name, application_name=APPLICATION_NAME,
                   statement_timeout_s=config.defaults.statement_timeout_s)
    conn.read_only = True
    return conn


def _measure_cell(config: Config, name: str, rules: Any, owner_of: OwnerOf | None) -> tuple[CellLoad, list[OrgLoad]]:
    with _connect(config, name) as conn, wrap_errors(name, "measuring the Cell's load"):
        catalog = read_catalog(conn)
        graph = analyze(catalog, rules)
        keys = [str(r[0]) for r in conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
                sql.Identifier(graph.root_key), table_ident(graph.root))).fetchall()]
        row = conn.execute(
            "SELECT pg_database_size(current_database()),"
            " coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
        assert row is not None
        total_bytes, total_rows = int(row[0]), int(row[1])
        found: list[OrgLoad] = []
        plan: Plan | None = None
        widths: dict[str, int] = {}
        for key in keys:
            if owner_of is not None and owner_of(key) != name:
                continue
            if plan is None:
                plan = build_plan(catalog, rules, org=key, from_cell=name, to_cell=name, graph=graph)
            plan.org = parse_org_key(key, plan.root.key_type, root=graph.root)
            estimate_steps(conn, plan, catalog)
            widths = widths or _row_widths(conn)
            nbytes = sum(s.estimated_rows * widths[s.table] if s.table in widths else s.estimated_bytes
                         for s in plan.steps)
            found.append(OrgLoad(org=key, cell=name, bytes=int(nbytes),
                                 rows=sum(s.estimated_rows for s in plan.steps)))
        conn.rollback()
    cell = CellLoad(cell=name, org_bytes=sum(o.bytes for o in found), org_rows=sum(o.rows for o in found),
                    total_bytes=total_bytes, total_rows=total_rows, orgs=len(found))
    return cell, found


# Heap tuple header (23 bytes, aligned to 24) plus the line pointer (4 bytes).
TUPLE_OVERHEAD = 28


def _row_widths(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Qualified table name -> bytes per row from ``pg_stats`` (a partitioned table: its
    inherited statistics)."""
    rows = conn.execute(
        "SELECT s.schemaname, s.tablename, max(w) FROM ("
        " SELECT schemaname, tablename, inherited, sum(avg_width) AS w FROM pg_stats"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        " GROUP BY 1, 2, 3) s GROUP BY 1, 2"
    ).fetchall()
    return {f"{schema}.{table}": int(width) + TUPLE_OVERHEAD for schema, table, width in rows}


def _writes(config: Config, name: str) -> int:
    with _connect(config, name) as conn, wrap_errors(name, "reading pg_stat_user_tables"):
        row = conn.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint"
                           " FROM pg_stat_user_tables").fetchone()
        conn.rollback()
    return int(row[0]) if row else 0
