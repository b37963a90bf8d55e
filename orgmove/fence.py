"""The write fence on a Cell (ADR 0002): install it with the drain, lift it, make it permanent,
and ask whether one is in force. The fence's schema (``orgmove.fences``, ``orgmove.assert_writable``)
is ``orgmove/sql/cell_schema.sql``, installed on every Cell."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from orgmove.errors import CutoverAborted


def fence_function_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regprocedure('orgmove.assert_writable(text)') IS NOT NULL").fetchone()
    return bool(row and row[0])


def install_source_fence(conn: psycopg.Connection[Any], org: str, move_key: str, token: int,
                         drain_timeout_s: float, ttl_s: float) -> datetime:
    """Take the org's exclusive fence lock (waiting for in-flight writers), insert the fence row.
    Returns the fence time. Raises CutoverAborted when writers do not drain in time."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{int(drain_timeout_s * 1000)}ms")))
            conn.execute("SELECT pg_advisory_xact_lock(orgmove.fence_lock_key(%s))", (org,))
            row = conn.execute(
                "INSERT INTO orgmove.fences (organization_id, move_key, fencing_token, expires_at) "
                "VALUES (%s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (organization_id) DO UPDATE SET move_key = excluded.move_key, "
                "fencing_token = excluded.fencing_token, fenced_at = clock_timestamp(), "
                "expires_at = excluded.expires_at RETURNING fenced_at",
                (org, move_key, token, ttl_s),
            ).fetchone()
    except psycopg.errors.LockNotAvailable:
        raise CutoverAborted(
            f"writers of organization {org} did not finish within {drain_timeout_s:g}s of the fence",
            fix="retry when the write load is lower, or raise defaults.lock_timeout_s",
        ) from None
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def lift_fence(conn: psycopg.Connection[Any], org: str) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM orgmove.fences WHERE organization_id = %s", (org,))


def has_fence(conn: psycopg.Connection[Any], org: str) -> bool:
    if not fence_function_installed(conn):
        return False
    row = conn.execute("SELECT 1 FROM orgmove.fences WHERE organization_id = %s", (org,)).fetchone()
    return row is not None



def make_fence_permanent(src: psycopg.Connection[Any], org: str) -> None:
    with src.transaction():
        src.execute("UPDATE orgmove.fences SET expires_at = NULL WHERE organization_id = %s", (org,))

