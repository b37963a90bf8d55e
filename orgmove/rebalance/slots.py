"""Per-Cell and total concurrency: slots held as session-level advisory locks.

A move takes one slot of its source Cell, one of its target Cell and one of the total, each
``pg_try_advisory_lock(hashtext(name), slot)`` on the job's own connection to the queue
database, and holds them until it ends. A worker that dies (``kill -9``, a lost host) loses its
connection, and PostgreSQL releases its locks with it: no slot is ever left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

CELL_PREFIX = "orgmove.rebalance.cell:"
TOTAL_KEY = "orgmove.rebalance.total"


@dataclass(frozen=True)
class Slot:
    key: str
    slot: int


def _try(conn: psycopg.Connection[Any], key: str, limit: int) -> Slot | None:
    for slot in range(limit):
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s) AS ok", (key, slot)).fetchone()
        ok = row["ok"] if isinstance(row, dict) else (row[0] if row else False)
        if ok:
            return Slot(key, slot)
    return None


def release(conn: psycopg.Connection[Any], held: list[Slot]) -> None:
    for s in held:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", (s.key, s.slot))


def try_acquire(conn: psycopg.Connection[Any], from_cell: str, to_cell: str, per_cell: int,
                total: int) -> list[Slot] | None:
    """All three slots, or none (what was taken is given back)."""
    held: list[Slot] = []
    for key, limit in ((TOTAL_KEY, total), (CELL_PREFIX + from_cell, per_cell), (CELL_PREFIX + to_cell, per_cell)):
        got = _try(conn, key, limit)
        if got is None:
            release(conn, held)
            return None
        held.append(got)
    return held


def acquire(conn: psycopg.Connection[Any], from_cell: str, to_cell: str, per_cell: int, total: int,
            *, give_up: Callable[[], bool], poll_s: float = 0.5) -> list[Slot] | None:
    """Wait for the slots; None when ``give_up()`` says so first (a stop)."""
    while True:
        held = try_acquire(conn, from_cell, to_cell, per_cell, total)
        if held is not None:
            return held
        if give_up():
            return None
        time.sleep(poll_s)
