"""sync: make the target's chunks equal to the source's. A checksum round compares every chunk
of the move on both Cells; the dirty ones are re-copied (deletes children first, then ``MERGE``
parents first, each chunk in one target transaction that also marks it done), and checked again.

Used by cutover (the pre-sync while writable, the sync under the fence whose clean round is the
final verify) and meant for the coming stream catch-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import psycopg
from psycopg import sql

from orgmove import db, state
from orgmove.chunking import KeyRange, org_rows_where, select_chunk
from orgmove.copy import WorkerConnections, stream_chunk
from orgmove.errors import OrgmoveError
from orgmove.movectx import MoveContext
from orgmove.obs import ProgressSink, log
from orgmove.plan import Step, table_ident
from orgmove.retry import RetryPolicy, retry_async
from orgmove.verify import TableVerify, VerifyOptions, VerifyReport, verify_chunks

MAX_SYNC_ROUNDS = 6
PRESYNC_MAX_ROUNDS = 3
PRESYNC_SETTLED_CHUNKS = 4


class SyncOptions(Protocol):
    """What a sync needs of its caller's options (cutover's ``CutoverOptions``)."""

    workers: int


class SyncTally(Protocol):
    """Where a sync counts its rounds and re-copied rows (cutover's ``CutoverReport``)."""

    sync_rounds: int
    rows_resynced: int


def all_chunks(ctx: MoveContext, dst: psycopg.Connection[Any]) -> list[tuple[Step, int, KeyRange]]:
    steps = {s.table: s for s in ctx.plan.steps}
    return [(steps[c.table_name], c.chunk_no, c.range)
            for c in state.load_chunks(dst, ctx.plan.move_key) if c.table_name in steps]


def checksum_round(ctx: MoveContext, work: list[tuple[Step, int, KeyRange]], workers: int,
                   progress: ProgressSink, phase: str = "sync: checksums"
                   ) -> tuple[list[tuple[Step, int, KeyRange]], float, Any]:
    """Checksums every chunk of ``work``; returns the dirty ones, the seconds taken, the report."""
    report = VerifyReport(ctx.plan.move_key)
    for s in ctx.plan.steps:
        report.tables[s.table] = TableVerify(s.table)
    started = time.monotonic()
    options = VerifyOptions(workers=workers, max_examples=5)
    tables = {step.table for step, _, _ in work}
    progress.start(phase, {s.table: s.estimated_rows for s in ctx.plan.steps if s.table in tables})
    try:
        results = asyncio.run(verify_chunks(ctx, work, options, progress, report))
    finally:
        progress.finish()
    steps = {s.table: s for s in ctx.plan.steps}
    dirty = [(steps[r.table], r.chunk_no, r.range) for r in results if not r.equal]
    return dirty, time.monotonic() - started, report


def sync_until_clean(ctx: MoveContext, dst: psycopg.Connection[Any], options: SyncOptions,
                     progress: ProgressSink, deadline: float | None, report: SyncTally,
                     generation_base: int, *, fenced: bool = False) -> tuple[bool, float, Any]:
    """Checksum rounds, re-copying dirty chunks, until a round is clean. Returns (clean, seconds of
    the first full round, the last round's report).

    Under the fence nothing changes on the source any more, so after one full round only the
    chunks just re-copied need checking again: the final verify is that full round plus the
    re-check of every chunk it found dirty."""
    work = all_chunks(ctx, dst)
    last_verify = None
    full_round_s = 0.0
    for round_no in range(1, MAX_SYNC_ROUNDS + 1):
        label = f"{'sync' if fenced else 'pre-sync'} round {round_no}: checksums"
        dirty, seconds, last_verify = checksum_round(ctx, work, options.workers, progress, label)
        if round_no == 1 or not fenced:
            full_round_s = seconds
        report.sync_rounds += 1
        if not dirty:
            return True, full_round_s, last_verify
        if deadline is not None and time.monotonic() > deadline:
            return False, full_round_s, last_verify
        log(logging.INFO, f"sync round {round_no}: re-copying {len(dirty)} dirty chunks",
            move=ctx.plan.move_key)
        report.rows_resynced += resync_chunks(ctx, dirty, generation=generation_base + round_no)
        if fenced:
            work = dirty
        elif len(dirty) <= PRESYNC_SETTLED_CHUNKS or round_no >= PRESYNC_MAX_ROUNDS:
            # While writable, writes keep dirtying chunks: stop once what is left is small.
            return False, full_round_s, last_verify
    return False, full_round_s, last_verify


# --- re-copy of dirty chunks -----------------------------------------------------------------------

SYNC_TABLE = "orgmove_sync"


def _merge_sql(step: Step, root: Any, org: Any, r: KeyRange) -> tuple[str, str, str]:
    """(create temp table, delete target rows absent from the source, upsert) for one chunk."""
    t = table_ident(step.table)
    cols = [sql.Identifier(c) for c in step.columns]
    create = sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {tmp} ON COMMIT DROP AS SELECT {cols} FROM {t} WITH NO DATA"
    ).format(tmp=sql.Identifier(SYNC_TABLE), cols=sql.SQL(", ").join(cols), t=t)
    where = org_rows_where(step, root, org, r)
    if not step.key:
        delete = sql.SQL("DELETE FROM {t} WHERE {w}").format(t=t, w=where)
        upsert = sql.SQL("INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {tmp}").format(
            t=t, cols=sql.SQL(", ").join(cols), tmp=sql.Identifier(SYNC_TABLE))
        return create.as_string(None), delete.as_string(None), upsert.as_string(None)
    match = sql.SQL(" AND ").join(
        sql.SQL("d.{k} = s.{k}").format(k=sql.Identifier(k)) for k in step.key)
    delete = sql.SQL(
        "DELETE FROM {t} AS d WHERE {w} AND NOT EXISTS (SELECT 1 FROM {tmp} AS s WHERE {m})"
    ).format(t=t, w=where, tmp=sql.Identifier(SYNC_TABLE), m=match)
    updatable = [c for c in step.columns if c not in step.key]
    row_d = sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(c)) for c in step.columns)
    row_s = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in step.columns)
    when_matched: sql.Composable = sql.SQL("")
    if updatable:
        when_matched = sql.SQL(
            " WHEN MATCHED AND ROW({rd})::text IS DISTINCT FROM ROW({rs})::text THEN UPDATE SET {sets}"
        ).format(rd=row_d, rs=row_s, sets=sql.SQL(", ").join(
            sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c)) for c in updatable))
    upsert = sql.SQL(
        "MERGE INTO {t} AS d USING {tmp} AS s ON {m}{wm} "
        "WHEN NOT MATCHED THEN INSERT ({cols}) OVERRIDING SYSTEM VALUE VALUES ({vals})"
    ).format(t=t, tmp=sql.Identifier(SYNC_TABLE), m=match, wm=when_matched,
             cols=sql.SQL(", ").join(cols), vals=row_s)
    return create.as_string(None), delete.as_string(None), upsert.as_string(None)


async def _sync_chunk(ctx: MoveContext, conns: WorkerConnections, step: Step, chunk_no: int,
                      r: KeyRange, phase: str, generation: int) -> int:
    """phase "delete": remove target rows the source no longer has; "upsert": insert/update the
    rest. Each in one target transaction that also records the chunk."""
    plan = ctx.plan
    src, dst = await conns.ensure()
    create, delete, upsert = _merge_sql(step, plan.root, plan.org, r)
    select_sql = select_chunk(step, plan.root, plan.org, r).as_string(None)
    async with dst.transaction():
        await dst.execute(create)
        async with src.transaction(isolation="repeatable_read", readonly=True):
            queue_rows, nbytes = await _stream_into(src, dst, step, select_sql)
        if phase == "delete":
            status = await dst.execute(delete)
        else:
            if not step.key:
                await dst.execute(delete)
            status = await dst.execute(upsert)
            await state.record_chunk_done(dst, plan.move_key, step.table, chunk_no, queue_rows, nbytes,
                                          generation, "sync", log_once=True)
        await dst.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier(SYNC_TABLE)).as_string(None))
    return int(status.split()[-1]) if status and status.split()[-1].isdigit() else 0


async def _stream_into(src: Any, dst: Any, step: Step, select_sql: str) -> tuple[int, int]:
    temp_step = step.model_copy(update={"table": f"pg_temp.{SYNC_TABLE}"})
    return await stream_chunk(src, dst, temp_step, select_sql)


def resync_chunks(
    ctx: MoveContext, dirty: list[tuple[Step, int, KeyRange]], generation: int,
    retry: RetryPolicy | None = None,
) -> int:
    """Make the target's rows of the dirty chunks equal to the source's: deletes children first,
    then inserts/updates parents first. Returns the number of target rows changed."""
    order = {s.table: i for i, s in enumerate(ctx.plan.steps)}
    forward = sorted(dirty, key=lambda d: (order[d[0].table], d[1]))
    policy = retry or RetryPolicy(deadline_s=60)

    async def run() -> int:
        conns = WorkerConnections(ctx, 0)
        changed = 0
        try:
            for phase, items in (("delete", list(reversed(forward))), ("upsert", forward)):
                for step, chunk_no, r in items:
                    if phase == "delete" and not step.key:
                        continue

                    async def attempt(step: Step = step, chunk_no: int = chunk_no, r: KeyRange = r,
                                      phase: str = phase) -> int:
                        try:
                            return await _sync_chunk(ctx, conns, step, chunk_no, r, phase, generation)
                        except BaseException:
                            await conns.reset()
                            raise

                    changed += await retry_async(attempt, policy)
        finally:
            await conns.close()
        return changed

    try:
        return asyncio.run(run())
    except OrgmoveError:
        raise
    except Exception as exc:
        raise db.translate(exc, cell=f"{ctx.source}->{ctx.target}", what="sync") from exc
