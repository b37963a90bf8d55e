"""The stream cutover's own steps (ADR 0011); the sequence itself is in :mod:`orgmove.cutover`.

- :meth:`StreamCutover.pre_sync`: catch up while the org is writable, and refuse (exit 2, nothing
  fenced) when applying what is left would not fit ``--max-freeze``.
- :meth:`StreamCutover.apply_through_fence`: after the fence, read ``pg_current_wal_lsn()`` on
  the source and apply every transaction that committed before it. Nothing of the org can commit
  after the fence, so that position covers every acknowledged write.
- :func:`touched_check`: the final check. It hashes, on both Cells, only the rows the stream
  changed (``orgmove.stream_touched``), with the org filter, so it costs what the writes since the
  copy cost, not what the organization weighs. The copy itself was checked by ``verify``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from orgmove import faults, state
from orgmove.capture import current_wal_lsn
from orgmove.catchup import CatchUp
from orgmove.chunking import org_rows_where
from orgmove.errors import PreflightFailed, VerificationMismatch
from orgmove.movectx import MoveContext
from orgmove.pgoutput import lsn_to_str
from orgmove.plan import Plan, Step, cast_type, table_ident

KEYS_PER_QUERY = 5_000


class LagTooHigh(PreflightFailed):
    code = "lag_too_high"


@dataclass
class TouchedResult:
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    differing: tuple[str, ...] = ()


class StreamCutover:
    def __init__(self, ctx: MoveContext) -> None:
        self.ctx = ctx
        self.catchup = CatchUp(ctx).__enter__()
        self.fence_lsn = 0

    def close(self) -> None:
        self.catchup.close()

    def pre_sync(self, max_freeze_s: float, catch_up_s: float | None = None) -> float:
        """Catch up for at most ``catch_up_s`` (default: 10 freezes, between 5 and 60 s); return
        the seconds the last catch-up to the source's current position took (the apply part of
        the freeze to expect)."""
        window = catch_up_s if catch_up_s is not None else min(60.0, max(5.0, 10 * max_freeze_s))
        deadline = time.monotonic() + window
        took = float("inf")
        while time.monotonic() < deadline:
            target, took = self.catchup.measure()
            if self.catchup.caught_up_to(target) and took <= max_freeze_s / 2:
                return took
        target, took = self.catchup.measure()
        if not self.catchup.caught_up_to(target) or took > max_freeze_s:
            raise LagTooHigh(
                f"the stream of move {self.ctx.plan.move_key} lags the source (applied "
                f"{lsn_to_str(self.catchup.applied_end)}, source at {lsn_to_str(target)}): applying it "
                f"would not fit --max-freeze {max_freeze_s:g}s; nothing was fenced",
                fix="run `orgmove sync PLAN --until-caught-up` first, or see "
                "runbooks/13-lag-does-not-converge.md",
            )
        return took

    def apply_through_fence(self, src: psycopg.Connection[Any], timeout_s: float) -> None:
        self.fence_lsn = current_wal_lsn(src)
        faults.failpoint("cutover.fenced_apply.start")
        self.catchup.apply_through(self.fence_lsn, timeout_s, point="cutover.fenced_apply.message")
        faults.failpoint("cutover.fenced_apply.end")


def _key_condition(step: Step, columns: list[str]) -> sql.Composable:
    """``(c1, c2) IN (SELECT k.c1::type, ... FROM unnest(%s::text[], ...) k(c1, ...))``."""
    types = dict(zip(step.columns, step.column_types, strict=True))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    casts = sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Identifier("k", c), cast_type(types[c]))
                               for c in columns)
    arrays = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in columns)
    return sql.SQL("({}) IN (SELECT {} FROM unnest({}) AS k({}))").format(cols, casts, arrays, cols)


def _hash_query(plan: Plan, step: Step, columns: list[str] | None) -> sql.Composed:
    where = org_rows_where(step, plan.root, plan.org)
    if columns:
        where = sql.SQL("{} AND {}").format(where, _key_condition(step, columns))
    return sql.SQL(
        "SELECT count(*), COALESCE(sum(hashtextextended(ROW({})::text, 0)::numeric), 0) FROM {} WHERE {}"
    ).format(sql.SQL(", ").join(sql.Identifier(c) for c in step.columns), table_ident(step.table), where)


def _fetch_one(conn: psycopg.Connection[Any], query: sql.Composed, params: list[Any]) -> Any:
    return conn.execute(query, params).fetchone()


def touched_check(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any]) -> TouchedResult:
    """Hash the rows the stream touched on both Cells; raise VerificationMismatch when they differ."""
    plan = ctx.plan
    started = time.monotonic()
    touched = state.load_touched(dst, plan.move_key)
    result = TouchedResult(tables=len(touched))
    differing: list[str] = []
    for table, keys in touched.items():
        step = next((s for s in plan.steps if s.table == table), None)
        if step is None:
            continue
        batches: list[tuple[list[str] | None, list[list[str | None]]]] = []
        if any(not k for k in keys):
            batches.append((None, []))  # a table without a key: all of its org rows
        else:
            columns = sorted(keys[0])
            for i in range(0, len(keys), KEYS_PER_QUERY):
                part = keys[i:i + KEYS_PER_QUERY]
                batches.append((columns, [[k.get(c) for k in part] for c in columns]))
        for key_columns, arrays in batches:
            faults.failpoint("cutover.final_check")
            query = _hash_query(plan, step, key_columns)
            # Both Cells at once: the check is inside the freeze.
            with ThreadPoolExecutor(max_workers=1) as pool:
                on_source = pool.submit(_fetch_one, src, query, arrays)
                b = dst.execute(query, arrays).fetchone()
                a = on_source.result()
            assert a is not None and b is not None
            result.rows += int(a[0])
            if tuple(a) != tuple(b):
                differing.append(table)
    result.seconds = time.monotonic() - started
    result.differing = tuple(sorted(set(differing)))
    if differing:
        raise VerificationMismatch(
            f"the final check found rows the stream changed that differ between the Cells in "
            f"{', '.join(result.differing)}; aborted, the organization stays on the source",
            fix="run `orgmove verify PLAN` for the differing rows, then `orgmove sync` and cut over again",
            details={"tables": list(result.differing)},
        )
    return result
