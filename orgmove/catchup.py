"""The stream catch-up: read the move's slot, filter to the org, apply exactly once (ADR 0011).

:class:`CatchUp` joins a :class:`orgmove.capture.ChangeStream` (reader thread, bounded queue) to
an :class:`orgmove.apply.Applier` (one target transaction per batch of source transactions, the
source commit LSN recorded in the move's replication origin in the same transaction). It is used
by ``orgmove sync`` (:func:`run_sync`, in the foreground until stopped or caught up) and by the
cutover (apply through the fence position).

Lag is measured against the source's ``pg_current_wal_lsn()``: ``lag_bytes`` is how much WAL the
target has not seen applied, ``lag_s`` the age of the oldest change not yet applied (0 when caught
up). Caught up means: every transaction that committed on the source before the last measurement
is applied on the target.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from orgmove import faults, state
from orgmove.apply import Applier, TargetTable
from orgmove.capture import ChangeStream, capture_names, current_wal_lsn
from orgmove.errors import MoveStateError, OrgmoveError
from orgmove.movectx import MoveContext
from orgmove.obs import METRICS, log
from orgmove.pgoutput import LSN, ColumnValue, TupleData, lsn_to_str, str_to_lsn
from orgmove.rowfilter import OrgFilter

PROGRESS_EVERY_S = 1.0


@dataclass
class SyncOptions:
    until_caught_up: bool = False
    max_lag_s: float = 1.0
    max_seconds: float | None = None  # stop after this long (None: until caught up or interrupted)
    batch_txns: int = 50


@dataclass
class SyncProgress:
    move_key: str
    applied_lsn: str = "0/0"
    source_lsn: str = "0/0"
    lag_bytes: int = 0
    lag_s: float = 0.0
    changes: int = 0
    changes_per_s: float = 0.0
    transactions: int = 0
    skipped_transactions: int = 0
    filtered_rows: int = 0
    caught_up: bool = False
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"move": self.move_key, "applied_lsn": self.applied_lsn, "source_lsn": self.source_lsn,
                "lag_bytes": self.lag_bytes, "lag_s": round(self.lag_s, 3), "changes": self.changes,
                "changes_per_s": round(self.changes_per_s, 1), "transactions": self.transactions,
                "skipped_transactions": self.skipped_transactions, "filtered_rows": self.filtered_rows,
                "caught_up": self.caught_up, "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        state_text = "caught up" if self.caught_up else "catching up"
        return (f"sync {self.move_key}: applied {self.applied_lsn} / source {self.source_lsn}, lag "
                f"{self.lag_bytes:,} B {self.lag_s:.2f} s, {self.changes_per_s:,.0f} changes/s, "
                f"{self.changes:,} changes, {state_text}")


def require_capture(move: state.MoveRow | None, plan_key: str) -> state.MoveRow:
    if move is None or not move.get("capture_slot"):
        raise MoveStateError(
            f"move {plan_key} has no change capture (no slot recorded): it was copied without one",
            fix="run `orgmove copy` with this plan first (a copy made before change capture existed: "
            "roll it back with `orgmove rollback` and copy again)",
        )
    return move


class CatchUp:
    """One stream + one applier for a move. Use as a context manager."""

    def __init__(self, ctx: MoveContext, *, batch_txns: int = 50) -> None:
        self.ctx = ctx
        plan = ctx.plan
        self.names = capture_names(plan.move_key)
        self.src = ctx.connect_source("sync")
        self.dst = ctx.connect_target("apply")
        self.fetch_conn = ctx.connect_source("sync-fetch")
        self.control = ctx.connect_target("control")
        move = require_capture(state.get_move(self.dst, plan.move_key), plan.move_key)
        org_filter = OrgFilter(plan)
        org_filter.load(self.dst)
        skip = {t: str_to_lsn(v) for t, v in (move.get("stream_skip") or {}).items()}
        self.applier = Applier(
            self.dst, move.get("capture_origin") or self.names.origin, org_filter=org_filter,
            batch_txns=batch_txns, stream_skip=skip,
            planned_columns={s.table: s.columns for s in plan.steps},
            fetch_source_row=self._fetch_source_row, move_key=plan.move_key,
            replica_role=plan.replica_role, on_commit=self._committed,
        )
        self.stream = ChangeStream(
            ctx.source_dsn, cell=ctx.source, slot=move.get("capture_slot"),
            publication=move.get("capture_publication") or self.names.publication,
            application_name=ctx.app_name("stream"),
        )
        self.applied_end: LSN = 0
        self._last_commit_ts_us: int = 0
        self.started = time.monotonic()

    def __enter__(self) -> CatchUp:
        self.stream.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stream.stop()
        with contextlib.suppress(Exception):
            self.applier.close()
        for conn in (self.src, self.dst, self.fetch_conn, self.control):
            with contextlib.suppress(Exception):
                conn.close()

    def _committed(self, end_lsn: LSN) -> None:
        self.applied_end = max(self.applied_end, end_lsn)
        self.stream.confirm(end_lsn)

    def _fetch_source_row(self, table: TargetTable, row: dict[str, ColumnValue]) -> TupleData | None:
        cols = [c.name for c in table.relation.columns]
        keys = [c.name for c in table.relation.key_columns]
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols), table.ident,
            sql.SQL(" AND ").join(sql.SQL("{}::text = {}").format(sql.Identifier(k), sql.Placeholder())
                                  for k in keys))
        found = self.fetch_conn.execute(query, [row[k] for k in keys]).fetchone()
        return None if found is None else tuple(found)

    def pump(self, seconds: float) -> None:
        """Apply whatever arrives for up to ``seconds``; commit a partial batch when idle."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            item = self.stream.get(timeout=0.05)
            if item is None:
                self._idle()
                continue
            self.applier.handle(item.message)

    def _idle(self) -> None:
        # Read the position before looking at the queue: a message the reader queues after this
        # read lies beyond it, so "queue empty" then means everything before it was applied.
        received = self.stream.received_lsn
        self.applier.flush()
        if not self.applier.in_source_transaction and self.stream.idle:
            # Everything sent so far is applied: the slot may let go of WAL no change of ours needs.
            if received > self.applied_end:
                self.applied_end = received
                self.stream.confirm(received)

    def caught_up_to(self, lsn: LSN) -> bool:
        received = self.stream.received_lsn  # before the queue check, as in _idle
        return (not self.applier.in_source_transaction and self.stream.idle
                and received >= lsn and self.applied_end >= lsn)

    def apply_through(self, lsn: LSN, timeout_s: float, point: str | None = None) -> None:
        """Return once every source transaction committed before ``lsn`` is durable on the target.
        ``point`` names a failpoint reached after each message, so that tests can kill the process
        in the middle of the fenced apply (between and inside the target's batch transactions)."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up_to(lsn):
            if time.monotonic() > deadline:
                raise MoveStateError(
                    f"the stream did not apply through {lsn_to_str(lsn)} within {timeout_s:g}s "
                    f"(applied {lsn_to_str(self.applied_end)})",
                    fix="check `orgmove sync` lag and the source slot (runbooks/13-lag-does-not-converge.md)",
                )
            item = self.stream.get(timeout=0.02)
            if item is None:
                self._idle()
            else:
                self.applier.handle(item.message)
                if point is not None:
                    faults.failpoint(point)

    def measure(self) -> tuple[LSN, float]:
        """(source LSN now, seconds to apply through it): pumps until applied, at most ~1 s."""
        target = current_wal_lsn(self.src)
        t0 = time.monotonic()
        with contextlib.suppress(MoveStateError):
            self.apply_through(target, PROGRESS_EVERY_S)
        return target, time.monotonic() - t0


def run_sync(ctx: MoveContext, options: SyncOptions,
             on_progress: Callable[[SyncProgress], None] | None = None) -> SyncProgress:
    """The foreground catch-up loop (``orgmove sync``). Resumable: it starts from the origin's
    recorded position, so a rerun after kill -9 neither loses nor repeats a transaction."""
    plan = ctx.plan
    progress = SyncProgress(plan.move_key)
    started = time.monotonic()
    with CatchUp(ctx, batch_txns=options.batch_txns) as cu:
        state.record_event(cu.control, plan.move_key, "sync_started", "stream catch-up started",
                           origin_lsn=lsn_to_str(cu.applier.progress))
        last_changes, last_t = 0, time.monotonic()
        behind_since: float | None = None
        while True:
            t0 = time.monotonic()
            target, took = cu.measure()
            now = time.monotonic()
            stats = cu.applier.stats
            progress.changes = stats.rows
            progress.transactions = stats.transactions
            progress.skipped_transactions = stats.skipped_transactions
            progress.filtered_rows = stats.filtered_rows
            progress.changes_per_s = (stats.rows - last_changes) / max(now - last_t, 1e-6)
            METRICS.sync_changes.inc(stats.rows - last_changes)
            last_changes, last_t = stats.rows, now
            progress.source_lsn = lsn_to_str(target)
            progress.applied_lsn = lsn_to_str(cu.applied_end)
            progress.lag_bytes = max(0, target - cu.applied_end)
            progress.caught_up = cu.caught_up_to(target)
            # Not caught up: the oldest unapplied change is at most as old as the first measurement
            # that found us behind.
            if progress.caught_up:
                behind_since = None
                progress.lag_s = took
            else:
                behind_since = behind_since if behind_since is not None else t0
                progress.lag_s = now - behind_since
            progress.seconds = now - started
            _publish(ctx, progress, cu)
            if on_progress is not None:
                on_progress(progress)
            if options.until_caught_up and progress.caught_up and progress.lag_s <= options.max_lag_s:
                return progress
            if options.max_seconds is not None and now - started >= options.max_seconds:
                return progress


def _publish(ctx: MoveContext, progress: SyncProgress, cu: CatchUp) -> None:
    METRICS.sync_lag_bytes.set(progress.lag_bytes)
    METRICS.sync_lag_seconds.set(progress.lag_s)
    METRICS.sync_applied_lsn.set(cu.applied_end)
    METRICS.sync_changes_per_s.set(progress.changes_per_s)
    try:
        with contextlib.nullcontext(cu.control) as dst:
            state.record_sync_progress(dst, ctx.plan.move_key, lag_bytes=progress.lag_bytes,
                                       lag_s=progress.lag_s, changes_per_s=progress.changes_per_s,
                                       caught_up=progress.caught_up)
    except OrgmoveError as exc:  # status is a convenience: never stop the stream for it
        log(logging.WARNING, f"could not record sync progress: {exc.message}", move=ctx.plan.move_key)
