"""The Topology Service's database: a bounded connection pool, one transaction per mutation, the
translation of driver errors into :class:`~orgmove.topology.models.ServiceError`, and the row
helpers both stores share (:mod:`orgmove.topology.claims`, :mod:`orgmove.topology.moves`).

The pool (``psycopg_pool.ConnectionPool``) has a hard maximum: a request past it waits for a free
connection, up to ``wait_timeout_s``, then gets a retryable 503 that says so. Every connection is
health-checked as it leaves the pool, so one the server closed (a restart, ``pg_terminate_backend``)
is replaced instead of failing the request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from importlib import resources
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from orgmove.config import redact
from orgmove.db import connect_kwargs, is_transient
from orgmove.topology.models import Bucket, Cell, Claim, Move, ServiceError, Source, Subject

log = logging.getLogger("orgmove.topology")

Cursor = psycopg.Cursor[dict[str, Any]]

APPLICATION_NAME = "orgmove-topology"
SCHEMA_LOCK_KEY = 0x6F72676D6F7665  # pg_advisory_xact_lock key for schema creation ("orgmove")
DEFAULT_POOL_SIZE = 8
DEFAULT_WAIT_TIMEOUT_S = 10.0


class Database:
    """The pool and the transaction boundary. ``max_size`` bounds the connections the service
    ever holds; ``wait_timeout_s`` bounds how long a request waits for one."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = DEFAULT_POOL_SIZE,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        if max_size < 1:
            raise ValueError("the pool needs at least one connection")
        self.max_size = max_size
        self.wait_timeout_s = wait_timeout_s
        self._kwargs: dict[str, Any] = connect_kwargs(
            dsn, application_name=application_name, statement_timeout_s=30, lock_timeout_s=10
        )
        self._kwargs["autocommit"] = True
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            "",
            kwargs=self._kwargs,
            min_size=1,
            max_size=max_size,
            timeout=wait_timeout_s,
            check=ConnectionPool.check_connection,
            name=application_name,
            open=False,
        )
        # Opened in the background: the service starts even while its database is still coming
        # up, and requests wait (bounded) for the first connection.
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close(timeout=5)

    def stats(self) -> dict[str, int]:
        """The pool's counters (``pool_size``, ``requests_waiting``, ``connections_lost``...)."""
        return dict(self._pool.get_stats())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor(
                row_factory=dict_row
            ) as cur:
                yield cur
        except PoolTimeout:
            raise self._no_connection() from None
        except psycopg.Error as exc:
            raise translate_db_error(exc) from exc

    def _no_connection(self) -> ServiceError:
        stats = self._pool.get_stats()
        if stats.get("pool_size", 0) > 0 and stats.get("pool_available", 0) == 0:
            return ServiceError(
                503, "busy",
                f"the Topology Service is busy: all {self.max_size} connections to its database "
                f"stayed in use for {self.wait_timeout_s:g}s",
                "retry the request; if this persists, raise the pool size of the service",
                retryable=True,
            )
        # The pool holds no connection at all: find out why from one direct attempt.
        try:
            psycopg.connect(**self._kwargs).close()
            why = "it accepts connections again now"
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()
            why = redact(text[0] if text else type(exc).__name__)
        return ServiceError(
            503, "busy",
            f"the Topology Service database is unreachable: no connection within "
            f"{self.wait_timeout_s:g}s ({why})",
            "check that the service's PostgreSQL is up and its DSN, then retry",
            retryable=True,
        )

    def ensure_schema(self) -> None:
        script = resources.files("orgmove").joinpath("sql/topology_schema.sql").read_text("utf-8")
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute(script.encode())

    def ping(self) -> None:
        with self.transaction() as cur:
            cur.execute("SELECT 1")


def translate_db_error(exc: psycopg.Error) -> ServiceError:
    if is_transient(exc):
        return ServiceError(
            503,
            "busy",
            f"the Topology Service database is busy or unreachable ({type(exc).__name__})",
            "retry the request",
            retryable=True,
        )
    return ServiceError(
        500, "database_error", f"the Topology Service database failed: {type(exc).__name__}"
    )


# --- row mapping -----------------------------------------------------------------------------


def claim_from_row(row: dict[str, Any]) -> Claim:
    return Claim(
        uuid=row["uuid"],
        bucket=Bucket(type=row["bucket_type"], value=row["bucket_value"]),
        subject=Subject(type=row["subject_type"], id=row["subject_id"]),
        source=Source(type=row["source_type"], rails_primary_key=row["source_rails_primary_key"]),
        organization_id=row["organization_id"],
        cell_id=row["cell_id"],
        status=row["status"],
        lease_uuid=row["lease_uuid"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def move_from_row(row: dict[str, Any]) -> Move:
    data = {k: row[k] for k in Move.model_fields if k in row}
    data["move_id"] = row["id"]
    return Move.model_validate(data)


def cell_from_row(row: dict[str, Any]) -> Cell:
    return Cell.model_validate(row)


def cursor_value(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit():
        raise ServiceError(400, "bad_cursor", f"cursor {cursor!r} is not one this service issued",
                           "pass the next_cursor of the previous page, or no cursor")
    return int(cursor)


# --- reads and locks both stores take ----------------------------------------------------------


def get_cell(cur: Cursor, name: str) -> Cell:
    cur.execute("SELECT * FROM topology.cells WHERE name = %s", (name,))
    row = cur.fetchone()
    if row is None:
        raise ServiceError(
            404, "unknown_cell", f"cell {name!r} is not registered in the Topology Service",
            f"register it first (PUT /v1/cells/{name})",
        )
    return cell_from_row(row)


def owner_of(cur: Cursor, org_id: str) -> str | None:
    cur.execute(
        "SELECT cell_id FROM topology.claims WHERE bucket_type = 'organization_id' "
        "AND bucket_value = %s AND status <> 'LEASE_CREATING'",
        (org_id,),
    )
    row = cur.fetchone()
    return str(row["cell_id"]) if row else None


def lock_org(cur: Cursor, org_id: str) -> dict[str, Any]:
    """The organization row, locked: the first lock of every transaction that changes a move or
    the organization's claims (the one lock order)."""
    cur.execute(
        "INSERT INTO topology.organizations (id) VALUES (%s) ON CONFLICT (id) DO NOTHING",
        (org_id,),
    )
    cur.execute("SELECT * FROM topology.organizations WHERE id = %s FOR UPDATE", (org_id,))
    row = cur.fetchone()
    assert row is not None
    return row


def unknown_move(move_id: UUID) -> ServiceError:
    return ServiceError(404, "unknown_move", f"no move {move_id}",
                        "list the organization's moves: GET /v1/moves?org_id=...")
