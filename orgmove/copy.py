"""copy: stream the organization's rows from the source Cell to the target Cell.

- One exported snapshot (``pg_export_snapshot()``) is imported by every chunk's source
  transaction, so all tables are copied as of one instant.
- Work is split into chunks by key range; chunks are persisted in ``orgmove.chunks`` on the target
  the first time, so a resumed copy works on the same ranges.
- Each chunk's rows and its checkpoint commit in ONE target transaction: after a crash a chunk is
  either copied and recorded, or absent. Resume skips done chunks; nothing is copied twice.
- Rows flow as raw binary COPY bytes through a bounded queue; they are never decoded in Python.
- Written as a replica (the plan's ``replica_role``), chunks go in plan order without waiting;
  as a plain client, tables start only when the tables they reference are complete (the target
  enforces FKs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from orgmove import capture_guard, capture_setup, db, fence, state, triggers
from orgmove.chunking import (
    select_chunk,
    single_chunk_only,
)
from orgmove.config import Config
from orgmove.copyparts import (
    ChunkTask,
    RateLimiter,
    ReplicaLagGuard,
    Scheduler,
    SnapshotHolder,
    compute_chunks,
    import_snapshot,
)
from orgmove.errors import (
    CopyFailed,
    MoveStateError,
    OrgmoveError,
    TransientError,
)
from orgmove.faults import afailpoint
from orgmove.movectx import MoveContext
from orgmove.obs import METRICS, NullProgress, ProgressSink, log
from orgmove.plan import Plan, Step, split_table
from orgmove.retry import RetryPolicy, retry_async

QUEUE_DEPTH = 32  # COPY data blocks buffered between a chunk's reader and writer
INVALID_SNAPSHOT = "22023"


@dataclass
class CopyOptions:
    workers: int = 2
    chunk_rows: int = 50_000
    rate_rows_per_s: float | None = None
    max_replica_lag_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dry_run: bool = False
    generation: int = 0
    # Change capture (publication + slot, ADR 0009). Off: the old copy from a plain snapshot, for
    # roles that may not replicate; the cutover then levels the target with checksum rounds.
    capture: bool = True


@dataclass
class TableCopy:
    table: str
    rows: int = 0
    bytes: int = 0
    chunks: int = 0
    chunks_copied: int = 0
    chunks_skipped: int = 0
    estimated_rows: int = 0


@dataclass
class CopyReport:
    move_key: str
    org: str
    from_cell: str
    to_cell: str
    dry_run: bool = False
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    chunks_total: int = 0
    chunks_copied: int = 0
    chunks_skipped: int = 0
    snapshots: int = 0
    snapshot_consistent: bool = True
    retries: int = 0
    tables: dict[str, TableCopy] = field(default_factory=dict)
    already_done: bool = False  # a rerun of a finished copy: nothing was copied
    # References that left the organization, written as NULL (rules: outside_references nullify)
    nullified: list[dict[str, Any]] = field(default_factory=list)
    capture: dict[str, Any] | None = None  # what the copy creates for change capture

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "move": self.move_key,
            "org": self.org,
            "from": self.from_cell,
            "to": self.to_cell,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "chunks": {
                "total": self.chunks_total,
                "copied": self.chunks_copied,
                "skipped": self.chunks_skipped,
            },
            "snapshots": self.snapshots,
            "snapshot_consistent": self.snapshot_consistent,
            "retries": self.retries,
            "already_done": self.already_done,
            "nullified": self.nullified,
            "capture": self.capture,
            "tables": [
                {
                    "table": t.table,
                    "rows": t.rows,
                    "bytes": t.bytes,
                    "chunks": t.chunks,
                    "chunks_copied": t.chunks_copied,
                    "chunks_skipped": t.chunks_skipped,
                    "estimated_rows": t.estimated_rows,
                }
                for t in self.tables.values()
            ],
        }


# --- the workers ---------------------------------------------------------------------------------


class WorkerConnections:
    def __init__(self, ctx: MoveContext, worker_no: int) -> None:
        self.ctx = ctx
        self.name = f"w{worker_no}"
        self.src: Any = None
        self.dst: Any = None

    async def ensure(self) -> tuple[Any, Any]:
        d = self.ctx.config.defaults
        if self.src is None or self.src.is_closed():
            self.src = await db.connect_data_plane(
                self.ctx.source_dsn, cell=self.ctx.source,
                application_name=self.ctx.app_name(self.name),
                statement_timeout_s=d.statement_timeout_s, lock_timeout_s=d.lock_timeout_s,
            )
        if self.dst is None or self.dst.is_closed():
            # Writes the org's rows: as a replica, unless the plan says otherwise (triggers.py).
            self.dst = await db.connect_data_plane(
                self.ctx.target_dsn, cell=self.ctx.target,
                application_name=self.ctx.app_name(self.name),
                statement_timeout_s=d.statement_timeout_s, lock_timeout_s=d.lock_timeout_s,
                extra_settings=triggers.session_settings(self.ctx.plan),
            )
        return self.src, self.dst

    async def reset(self) -> None:
        for conn in (self.src, self.dst):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
        self.src = self.dst = None

    async def close(self) -> None:
        for conn in (self.src, self.dst):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)


async def stream_chunk(src: Any, dst: Any, step: Step, select_sql: str) -> tuple[int, int]:
    """Pipe one chunk: source COPY TO STDOUT (binary) -> bounded queue -> target COPY FROM STDIN.
    Returns (rows, bytes). Runs inside the caller's target transaction."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_DEPTH)
    nbytes = 0

    async def sink(data: bytes) -> None:
        nonlocal nbytes
        nbytes += len(data)
        await queue.put(data)

    async def produce() -> None:
        await src.copy_from_query(select_sql, output=sink, format="binary")
        await queue.put(None)

    async def blocks() -> Any:
        while True:
            data = await queue.get()
            if data is None:
                return
            yield data

    schema, name = split_table(step.table)
    status = ""

    async def consume() -> None:
        nonlocal status
        status = await dst.copy_to_table(
            name, schema_name=schema, columns=step.columns, source=blocks(), format="binary"
        )

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            tg.create_task(consume())
    except BaseExceptionGroup as group:
        # The first failure is the cause (the other side was cancelled because of it).
        raise group.exceptions[0] from None
    rows = int(status.split()[-1]) if status else 0
    return rows, nbytes


class CopyRun:
    def __init__(
        self,
        ctx: MoveContext,
        options: CopyOptions,
        holder: SnapshotHolder | capture_setup.SlotSnapshotHolder,
        report: CopyReport,
        progress: ProgressSink,
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.holder = holder
        self.report = report
        self.progress = progress
        self.snapshot_lock = asyncio.Lock()
        self.rate = RateLimiter(options.rate_rows_per_s)
        self.lag = ReplicaLagGuard(options.max_replica_lag_s)

    async def refresh_snapshot(self, stale_id: str) -> None:
        async with self.snapshot_lock:
            if self.holder.snapshot_id != stale_id:
                return
            await asyncio.to_thread(self.holder.export)
            # A slot's snapshot is exact whichever slot exported it (capture_setup.py).
            self.report.snapshot_consistent = isinstance(self.holder, capture_setup.SlotSnapshotHolder)
            log(logging.WARNING, "source snapshot was lost; remaining chunks use a new snapshot "
                "(cutover's sync step levels the difference)", move=self.ctx.plan.move_key,
                snapshots=self.holder.exports)

    async def copy_one(self, conns: WorkerConnections, task: ChunkTask) -> tuple[int, int] | None:
        """Copy one chunk in one target transaction. None: another run already did it."""
        plan = self.ctx.plan
        step = task.step
        src, dst = await conns.ensure()
        await self.lag.wait(dst)
        snapshot_id = self.holder.snapshot_id
        select_sql = select_chunk(step, plan.root, plan.org, task.range).as_string(None)
        tr = dst.transaction()
        await tr.start()
        try:
            chunk_state = await dst.fetchval(
                "SELECT state FROM orgmove.chunks WHERE move_key = $1 AND table_name = $2 "
                "AND chunk_no = $3 FOR UPDATE",
                plan.move_key, step.table, task.chunk_no,
            )
            if chunk_state == "done":
                await tr.rollback()
                return None
            src_tr = src.transaction(isolation="repeatable_read", readonly=True)
            await src_tr.start()
            try:
                try:
                    await src.execute(import_snapshot(snapshot_id).as_string(None))
                except Exception as exc:
                    if getattr(exc, "sqlstate", None) == INVALID_SNAPSHOT:
                        await self.refresh_snapshot(snapshot_id)
                        raise TransientError(f"snapshot {snapshot_id} is gone; retrying on a new one") from exc
                    raise
                rows, nbytes = await stream_chunk(src, dst, step, select_sql)
            finally:
                with contextlib.suppress(Exception):
                    await src_tr.rollback()
            await afailpoint("copy.before_commit")
            await state.record_chunk_done(dst, plan.move_key, step.table, task.chunk_no, rows, nbytes,
                                          self.options.generation, snapshot_id)
            await tr.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await tr.rollback()
            raise
        await afailpoint("copy.after_commit")
        return rows, nbytes

    async def worker(self, worker_no: int, scheduler: Scheduler) -> None:
        conns = WorkerConnections(self.ctx, worker_no)
        try:
            while (task := await scheduler.next()) is not None:
                def on_retry(exc: BaseException, attempt: int, task: ChunkTask = task) -> None:
                    self.report.retries += 1
                    METRICS.retries.inc()
                    METRICS.chunks_failed.inc()
                    cells = f"{self.ctx.source}->{self.ctx.target}"
                    log(logging.WARNING, f"chunk failed, retrying: {db.translate(exc, cell=cells)}",
                        table=task.step.table, chunk=task.chunk_no, attempt=attempt)

                async def attempt(task: ChunkTask = task) -> tuple[int, int] | None:
                    try:
                        return await self.copy_one(conns, task)
                    except BaseException:
                        await conns.reset()
                        raise

                try:
                    result = await retry_async(attempt, self.options.retry, on_retry=on_retry)
                except Exception as exc:
                    error = db.translate(exc, cell=f"{self.ctx.source}->{self.ctx.target}")
                    failure = CopyFailed(
                        f"copy of {task.step.table} chunk {task.chunk_no} failed: {error.message}",
                        fix="fix the cause and run the same `orgmove copy` again: it resumes "
                        "where it stopped",
                        details={"table": task.step.table, "chunk": task.chunk_no},
                    )
                    await scheduler.fail(failure)
                    raise failure from exc
                table = self.report.tables[task.step.table]
                if result is None:
                    table.chunks_skipped += 1
                    self.report.chunks_skipped += 1
                else:
                    rows, nbytes = result
                    table.rows += rows
                    table.bytes += nbytes
                    table.chunks_copied += 1
                    self.report.rows += rows
                    self.report.bytes += nbytes
                    self.report.chunks_copied += 1
                    METRICS.rows_copied.labels(self.ctx.plan.move_key, task.step.table).inc(rows)
                    METRICS.bytes_copied.labels(self.ctx.plan.move_key, task.step.table).inc(nbytes)
                    METRICS.chunks_done.labels(self.ctx.plan.move_key).inc()
                    self.progress.advance(task.step.table, rows, nbytes)
                    await self.rate.account(rows)
                await scheduler.done(task)
        finally:
            await conns.close()

    async def run(self, pending: dict[str, list[ChunkTask]]) -> None:
        scheduler = Scheduler(self.ctx.plan, pending)
        workers = max(1, self.options.workers)
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(workers):
                    tg.create_task(self.worker(i, scheduler))
        except* OrgmoveError as group:
            raise group.exceptions[0] from None


# --- entry point ---------------------------------------------------------------------------------


def run_copy(
    plan: Plan,
    config: Config,
    options: CopyOptions | None = None,
    progress: ProgressSink | None = None,
) -> CopyReport:
    options = options or CopyOptions()
    progress = progress or NullProgress()
    ctx = MoveContext.create(plan, config)
    report = CopyReport(plan.move_key, str(plan.org), plan.from_cell, plan.to_cell, dry_run=options.dry_run)
    report.nullified = [
        {"table": r.table, "constraint": r.constraint, "columns": r.columns, "keys": r.nullified_keys}
        for r in plan.org_references if r.policy == "nullify" and r.nullified_keys
    ]
    started = time.monotonic()
    with ctx.control() as (src, dst):
        ctx.check_fingerprints(src, dst)
        with db.wrap_errors(ctx.target, "checking triggers and the replica role"):
            triggers.check_target(dst, plan)
        cplan = None
        if options.capture:
            with db.wrap_errors(ctx.source, "change capture pre-flight"):
                cplan = capture_setup.preflight(ctx, src)
            report.capture = cplan.to_json()
        if options.dry_run:
            return _dry_run(ctx, dst, options, report)
        move = state.ensure_move(dst, plan)
        if _already_copied(dst, plan, move, report):
            return report
        if move.state == state.MoveState.CUTOVER:
            raise MoveStateError(
                f"move {plan.move_key} is in cutover", fix="wait for the cutover to finish or abort it",
            )
        with _exclusive_move_lock(dst, plan):
            # The gate goes in before the snapshot: every write after it can be fenced (ADR 0008).
            with db.wrap_errors(ctx.source, "installing the write gate"):
                gated = fence.ensure_gate(src, plan)
            capture_guard.check(src, dst, plan, config.defaults.max_retained_wal_mb)
            chunks = state.load_chunks(dst, plan.move_key)
            holder: SnapshotHolder | capture_setup.SlotSnapshotHolder
            if cplan is None or (not capture_setup.move_has_capture(move) and any(c.state == "done" for c in chunks)):
                # Copied in part before change capture existed: finish it the old way (the cutover
                # then levels it with checksum rounds).
                holder = SnapshotHolder(ctx)
                report.capture = None
            else:
                holder = capture_setup.SlotSnapshotHolder(ctx, cplan)
            try:
                all_done = bool(chunks) and all(c.state == "done" for c in chunks)
                snapshot_id = "" if all_done else holder.export()
                if not chunks:
                    ranges = compute_chunks(ctx, snapshot_id, options.chunk_rows)
                    for step in plan.steps:
                        state.insert_chunks(dst, plan.move_key, step.table, ranges[step.table])
                    chunks = state.load_chunks(dst, plan.move_key)
                done_before = sum(1 for c in chunks if c.state == "done")
                consistent = move.snapshot_consistent and (
                    done_before == 0 or isinstance(holder, capture_setup.SlotSnapshotHolder))
                state.update_move(
                    dst, plan.move_key, state=state.MoveState.COPYING, snapshots=move.snapshots + 1,
                    snapshot_consistent=consistent,
                    copy_started_at=move.get("copy_started_at") or state.db_now(dst),
                    last_error=None,
                )
                report.snapshot_consistent = consistent
                state.record_event(dst, plan.move_key, "copy_started", "copy started",
                                   snapshot=snapshot_id, chunks=len(chunks), done_before=done_before,
                                   write_gate=gated)
                steps = {s.table: s for s in plan.steps}
                pending: dict[str, list[ChunkTask]] = {s.table: [] for s in plan.steps}
                for s in plan.steps:
                    report.tables[s.table] = TableCopy(s.table, estimated_rows=s.estimated_rows)
                for c in chunks:
                    if c.table_name not in steps:
                        continue
                    report.tables[c.table_name].chunks += 1
                    report.chunks_total += 1
                    if c.state == "done":
                        report.tables[c.table_name].chunks_skipped += 1
                        report.chunks_skipped += 1
                    else:
                        pending[c.table_name].append(ChunkTask(steps[c.table_name], c.chunk_no, c.range))
                for s in plan.steps:  # the totals, so that a scrape can tell the share done
                    METRICS.rows_planned.labels(plan.move_key, s.table).set(s.estimated_rows)
                METRICS.chunks_planned.labels(plan.move_key).set(report.chunks_total)
                progress.start("copy", {s.table: s.estimated_rows for s in plan.steps},
                               sum(s.estimated_bytes for s in plan.steps))
                run = CopyRun(ctx, options, holder, report, progress)
                try:
                    asyncio.run(run.run(pending))
                    # A commit acknowledged by a target that then crashed or failed over to an
                    # asynchronous replica may be gone: copy whatever the target does not have.
                    for _ in range(3):
                        lost = _pending_chunks(ctx, steps)
                        if not any(lost.values()):
                            break
                        log(logging.WARNING, "chunks acknowledged earlier are missing on the target; "
                            "copying them again", move=plan.move_key,
                            chunks=sum(len(v) for v in lost.values()))
                        asyncio.run(run.run(lost))
                except OrgmoveError as exc:
                    _record_quietly(ctx, "copy_failed", str(exc), last_error=str(exc))
                    raise
                except KeyboardInterrupt:
                    _record_quietly(ctx, "copy_interrupted", "copy interrupted by the operator; rerun to resume",
                                    last_error="interrupted by the operator; rerun `orgmove copy` to resume")
                    raise
                finally:
                    progress.finish()
            finally:
                holder.close()
            with ctx.connect_source("control") as src_now, ctx.connect_target("control") as dst_now:
                capture_guard.check(src_now, dst_now, plan, config.defaults.max_retained_wal_mb)
            report.snapshots = holder.exports
            exact = isinstance(holder, capture_setup.SlotSnapshotHolder)
            report.snapshot_consistent = report.snapshot_consistent and (exact or holder.exports == 1)
            report.seconds = time.monotonic() - started
            # The control connection may have been cut while the workers ran: use a fresh one.
            with ctx.connect_target("control") as fresh:
                state.update_move(
                    fresh, plan.move_key, state=state.MoveState.COPIED, snapshots=move.snapshots + holder.exports,
                    snapshot_consistent=report.snapshot_consistent, copy_finished_at=state.db_now(fresh),
                )
                state.record_event(fresh, plan.move_key, "copy_finished", "copy finished",
                                   rows=report.rows, bytes=report.bytes, seconds=round(report.seconds, 3))
    return report


def _already_copied(dst: psycopg.Connection[Any], plan: Plan, move: state.MoveRow, report: CopyReport) -> bool:
    """A rerun of a finished copy (or of one whose move has flipped) is a no-op: no new snapshot is
    exported and the move keeps the first copy's snapshot facts; the report says what is there."""
    after_flip = move.state in state.AFTER_FLIP
    if not after_flip and not (move.state in (state.MoveState.COPIED, state.MoveState.VERIFIED)
                               and move.get("copy_finished_at") is not None):
        return False
    chunks = [c for c in state.load_chunks(dst, plan.move_key) if c.table_name in {s.table for s in plan.steps}]
    if not after_flip and (not chunks or any(c.state != "done" for c in chunks)):
        return False
    report.already_done = True
    report.snapshots = move.snapshots
    report.snapshot_consistent = move.snapshot_consistent
    for s in plan.steps:
        report.tables[s.table] = TableCopy(s.table, estimated_rows=s.estimated_rows)
    for c in chunks:
        report.tables[c.table_name].chunks += 1
        report.tables[c.table_name].chunks_skipped += 1
    report.chunks_total = report.chunks_skipped = len(chunks)
    return True


def _pending_chunks(ctx: MoveContext, steps: dict[str, Step]) -> dict[str, list[ChunkTask]]:
    with ctx.connect_target("control") as conn:
        chunks = state.load_chunks(conn, ctx.plan.move_key)
    pending: dict[str, list[ChunkTask]] = {t: [] for t in steps}
    for c in chunks:
        if c.table_name in steps and c.state != "done":
            pending[c.table_name].append(ChunkTask(steps[c.table_name], c.chunk_no, c.range))
    return pending


def _record_quietly(ctx: MoveContext, kind: str, message: str, **fields: Any) -> None:
    """Record a failure on a fresh connection; never mask the failure itself."""
    with contextlib.suppress(Exception), ctx.connect_target("control") as conn:
        if fields:
            state.update_move(conn, ctx.plan.move_key, **fields)
        state.record_event(conn, ctx.plan.move_key, kind, message)


@contextlib.contextmanager
def _exclusive_move_lock(dst: psycopg.Connection[Any], plan: Plan) -> Any:
    key = f"{state.ADVISORY_NAMESPACE}{plan.move_key}"
    row = dst.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    if not row or not row[0]:
        raise MoveStateError(
            f"another orgmove process is working on move {plan.move_key}",
            fix="wait for it to finish (`orgmove status` shows it) or stop it first",
        )
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            dst.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _dry_run(ctx: MoveContext, dst: psycopg.Connection[Any], options: CopyOptions, report: CopyReport) -> CopyReport:
    plan = ctx.plan
    move = state.get_move(dst, plan.move_key)
    done: dict[str, int] = {}
    if move is not None:
        for c in state.load_chunks(dst, plan.move_key):
            if c.state == "done":
                done[c.table_name] = done.get(c.table_name, 0) + 1
    for step in plan.steps:
        n = 1 if single_chunk_only(step) else max(1, -(-step.estimated_rows // options.chunk_rows))
        report.tables[step.table] = TableCopy(
            step.table, rows=step.estimated_rows, bytes=step.estimated_bytes, chunks=n,
            chunks_skipped=done.get(step.table, 0), estimated_rows=step.estimated_rows,
        )
        report.rows += step.estimated_rows
        report.bytes += step.estimated_bytes
        report.chunks_total += n
        report.chunks_skipped += done.get(step.table, 0)
    return report
