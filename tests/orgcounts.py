"""Independent per-organization row counts of the fixture data (hand-written queries in
``tests/sql/org_counts/``); tests compare them with what the planner and the copy found."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.types.numeric import Int8

from orgmove.db import connect, translate
from orgmove.sandbox.seed import ORG_TABLES

APP = "orgmove-seed"
SQL_DIR = Path(__file__).resolve().parent / "sql"


def _test_sql(name: str) -> str:
    return (SQL_DIR / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Independent per-organization row counts (hand-written; tests compare them with the planner)

# The organization's namespaces and projects are gathered first into temporary tables.
_ORG_SCOPE = _test_sql("org_counts/org_scope.sql")

ORG_COUNT_QUERIES: dict[str, str] = {
    table: _test_sql(f"org_counts/{table}.sql")
    for table in ORG_TABLES
}


def org_row_counts(dsn: str, org_id: int, *, cell: str = "cell") -> dict[str, int]:
    """Rows per org-scoped table that belong to ``org_id`` (``p_ci_builds`` counted through the
    partitioned parent, not per partition). Read-only: the transaction is rolled back."""
    counts: dict[str, int] = {}
    params = {"org": Int8(org_id)}
    try:
        with connect(dsn, cell=cell, application_name=APP) as conn:
            with conn.cursor() as cur:
                # One statement at a time: parameters need the extended protocol.
                for statement in _ORG_SCOPE.split(";"):
                    if statement.strip():
                        cur.execute(statement.encode(), params)
                for table, query in ORG_COUNT_QUERIES.items():
                    row = cur.execute(query.encode(), params).fetchone()
                    counts[table] = int(row[0]) if row else 0
            conn.rollback()
    except psycopg.Error as exc:
        raise translate(exc, cell=cell, dsn=dsn, what="count the organization's rows") from exc
    return counts
