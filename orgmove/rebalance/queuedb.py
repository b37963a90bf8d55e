"""The rebalancer's database: procrastinate's schema and the rebalancer's own tables
(``orgmove/sql/rebalance_schema.sql``) in the Topology Service's database, and connections to it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from typing import Any

import procrastinate
import psycopg
from psycopg.rows import dict_row

from orgmove.db import connect_kwargs
from orgmove.errors import TransientError

QUEUE = "orgmove-rebalance"
TASK_NAME = "orgmove.rebalance.move"
APPLICATION_NAME = "orgmove/rebalance"
_SCHEMA_LOCK = 0x72656261  # "reba"


@contextlib.contextmanager
def control_db(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    try:
        with psycopg.connect(autocommit=True, row_factory=dict_row,
                             **connect_kwargs(dsn, application_name=APPLICATION_NAME)) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise TransientError(f"the rebalancer's queue database is unreachable: {exc}".strip(),
                             fix="check [rebalance] queue_dsn and that the Topology Service's PostgreSQL "
                             "is up") from exc


def ensure_schema(dsn: str) -> None:
    """procrastinate's schema (applied once) and the rebalancer's tables; idempotent."""
    with control_db(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        row = conn.execute("SELECT to_regclass('public.procrastinate_jobs') IS NOT NULL AS present").fetchone()
        if not (row and row["present"]):
            conn.execute(procrastinate.schema.SchemaManager.get_schema().encode())
        conn.execute(resources.files("orgmove").joinpath("sql/rebalance_schema.sql").read_text("utf-8").encode())


def is_stopped(conn: psycopg.Connection[dict[str, Any]]) -> bool:
    row = conn.execute("SELECT stopped FROM rebalance.control WHERE id = 1").fetchone()
    return bool(row and row["stopped"])
