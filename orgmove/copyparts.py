"""The copy's building blocks: the snapshot its chunks import, chunk ranges, the scheduler that
hands chunks to workers in plan order, and the throttles (rows per second, replica lag).

:mod:`orgmove.copy` runs them; kept apart so the copy's sequence reads on one page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from orgmove import db
from orgmove.chunking import (
    WHOLE,
    KeyRange,
    boundaries_query,
    ranges_from_boundaries,
    single_chunk_only,
)
from orgmove.movectx import MoveContext
from orgmove.obs import log
from orgmove.plan import Plan, Step

# --- the snapshot --------------------------------------------------------------------------------


class SnapshotHolder:
    """Keeps the exporting transaction open on the source for as long as chunks import it."""

    def __init__(self, ctx: MoveContext) -> None:
        self.ctx = ctx
        self.conn: psycopg.Connection[Any] | None = None
        self.snapshot_id = ""
        self.exports = 0

    def export(self) -> str:
        self.close()
        conn = self.ctx.connect_source("snapshot", autocommit=False)
        with db.wrap_errors(self.ctx.source, "export snapshot"):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        self.conn = conn
        self.snapshot_id = str(row[0])
        self.exports += 1
        return self.snapshot_id

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


def import_snapshot(snapshot_id: str) -> sql.Composed:
    return sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id))


# --- chunk planning ------------------------------------------------------------------------------


def compute_chunks(
    ctx: MoveContext, snapshot_id: str, chunk_rows: int
) -> dict[str, list[KeyRange]]:
    """Key ranges of every step, computed inside the exported snapshot."""
    plan = ctx.plan
    result: dict[str, list[KeyRange]] = {}
    with ctx.connect_source("chunker", autocommit=False) as conn, db.wrap_errors(
        ctx.source, "chunk boundaries"
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(import_snapshot(snapshot_id))
        for step in plan.steps:
            # A table the plan counted (exactly, up to 200,000 rows) at no more than one chunk
            # is one chunk: no boundaries pass over it (WHOLE holds every row, whatever the count).
            if single_chunk_only(step) or step.estimated_rows <= chunk_rows // 2:
                result[step.table] = [WHOLE]
                continue
            rows = conn.execute(boundaries_query(step, plan.root, plan.org, chunk_rows)).fetchall()
            result[step.table] = ranges_from_boundaries([tuple(r) for r in rows])
        conn.rollback()
    return result


# --- scheduling ----------------------------------------------------------------------------------


@dataclass
class ChunkTask:
    step: Step
    chunk_no: int
    range: KeyRange


class Scheduler:
    """Hands out chunks whose table's dependencies are complete, in plan order."""

    def __init__(self, plan: Plan, pending: dict[str, list[ChunkTask]]) -> None:
        planned = {s.table for s in plan.steps}
        self.order = [s.table for s in plan.steps]
        # Written as a replica, the target does not check FKs row by row (fkcheck.py checks them
        # after the copy): any chunk may go, so no worker idles waiting for a parent table.
        self.deps = {
            s.table: set() if plan.replica_role
            else {d for d in s.depends_on if d in planned and d != s.table} for s in plan.steps
        }
        self.pending = {t: list(tasks) for t, tasks in pending.items()}
        self.in_flight = {t: 0 for t in self.order}
        self.complete = {t for t in self.order if not self.pending.get(t)}
        self.cond = asyncio.Condition()
        self.failed: BaseException | None = None

    def _ready(self, table: str) -> bool:
        return self.deps[table] <= self.complete

    async def next(self) -> ChunkTask | None:
        async with self.cond:
            while True:
                if self.failed is not None:
                    return None
                for table in self.order:
                    queue = self.pending.get(table)
                    if queue and self._ready(table):
                        self.in_flight[table] += 1
                        return queue.pop(0)
                if all(not q for q in self.pending.values()):
                    return None
                await self.cond.wait()

    async def done(self, task: ChunkTask) -> None:
        async with self.cond:
            table = task.step.table
            self.in_flight[table] -= 1
            if not self.pending.get(table) and self.in_flight[table] == 0:
                self.complete.add(table)
            self.cond.notify_all()

    async def fail(self, exc: BaseException) -> None:
        async with self.cond:
            if self.failed is None:
                self.failed = exc
            self.cond.notify_all()


# --- throttling ----------------------------------------------------------------------------------


class RateLimiter:
    def __init__(self, rows_per_s: float | None) -> None:
        self.rate = rows_per_s
        self.start = time.monotonic()
        self.rows = 0
        self.lock = asyncio.Lock()

    async def account(self, rows: int) -> None:
        if not self.rate:
            return
        async with self.lock:
            self.rows += rows
            due = self.start + self.rows / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class ReplicaLagGuard:
    """Pauses the copy while any replica of the target lags more than the threshold."""

    def __init__(self, max_lag_s: float, check_every_s: float = 2.0) -> None:
        self.max_lag_s = max_lag_s
        self.check_every_s = check_every_s
        self.last_check = 0.0
        self.lock = asyncio.Lock()

    async def wait(self, conn: Any) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                if now - self.last_check < self.check_every_s:
                    return
                lag = await conn.fetchval(
                    "SELECT COALESCE(max(EXTRACT(epoch FROM replay_lag)), 0)::float8 "
                    "FROM pg_stat_replication"
                )
                if lag is None or lag <= self.max_lag_s:
                    self.last_check = now
                    return
                log(logging.WARNING, "target replica lag above threshold; pausing",
                    lag_s=round(lag, 1), max_lag_s=self.max_lag_s)
                await asyncio.sleep(self.check_every_s)
