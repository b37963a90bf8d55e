"""verify: compare the organization's rows on both Cells, chunk by chunk, in parallel.

Each side computes, for the same key range, the row count and an order-independent hash: the sum
(an exact ``numeric``) of one 64-bit hash per row, ``hash_record_extended(ROW(<explicit columns>),
0)``. The row is hashed from its values, not from its text, which is three times cheaper than the
text of the row (:func:`column_hash_operand` says how each column type enters the hash so that only
identical values hash equal). The explicit column list and the canonical session settings (see
:mod:`orgmove.db`) make equal data hash equal whatever each table's physical column order or each
server's defaults. A mismatching chunk is bisected by key until it is small, then compared key by
key to name the rows that differ. Tables without a key are compared as multisets of row hashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg import sql

from orgmove import db, state
from orgmove.chunking import (
    WHOLE,
    KeyRange,
    boundaries_query,
    key_expr,
    org_rows_where,
    ranges_from_boundaries,
    single_chunk_only,
    split_range,
)
from orgmove.config import Config
from orgmove.movectx import MoveContext
from orgmove.obs import METRICS, NullProgress, ProgressSink, log
from orgmove.plan import Plan, RootSpec, Step, column_exprs, table_ident

EXAMPLE_KINDS = ("missing_on_target", "extra_on_target", "differs")


@dataclass
class VerifyOptions:
    workers: int = 2
    tables: list[str] | None = None
    max_examples: int = 10
    row_compare_threshold: int = 2_000  # below this many rows a chunk is compared key by key
    record: bool = True


@dataclass
class Example:
    kind: str
    key: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key}


@dataclass
class ChunkResult:
    table: str
    chunk_no: int
    range: KeyRange
    src_rows: int
    dst_rows: int
    src_hash: Decimal
    dst_hash: Decimal

    @property
    def equal(self) -> bool:
        return self.src_rows == self.dst_rows and self.src_hash == self.dst_hash


@dataclass
class TableVerify:
    table: str
    source_rows: int = 0
    target_rows: int = 0
    chunks: int = 0
    mismatched_chunks: int = 0
    examples: list[Example] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            "chunks": self.chunks,
            "mismatched_chunks": self.mismatched_chunks,
            "differences": dict(self.kinds),
            "examples": [e.to_json() for e in self.examples],
        }


@dataclass
class VerifyReport:
    move_key: str
    tables: dict[str, TableVerify] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return all(t.mismatched_chunks == 0 for t in self.tables.values())

    @property
    def source_rows(self) -> int:
        return sum(t.source_rows for t in self.tables.values())

    @property
    def target_rows(self) -> int:
        return sum(t.target_rows for t in self.tables.values())

    @property
    def chunks(self) -> int:
        return sum(t.chunks for t in self.tables.values())

    @property
    def mismatched_chunks(self) -> int:
        return sum(t.mismatched_chunks for t in self.tables.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "move": self.move_key,
            "equal": self.equal,
            "seconds": round(self.seconds, 3),
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            "chunks": self.chunks,
            "mismatched_chunks": self.mismatched_chunks,
            "tables": [t.to_json() for t in self.tables.values()],
        }


# --- SQL -----------------------------------------------------------------------------------------


# Types whose hash function sees every bit of the value: two values hash equal only when they are
# identical (up to a hash collision), so they enter the row hash as they are.
HASHED_AS_IS = frozenset({
    "bigint", "integer", "smallint", "boolean", "bytea", "date", "uuid", "oid", "\"char\"", "name",
    "timestamp with time zone", "timestamp without time zone", "time without time zone",
})
# Collatable types hashed as they are, under the "C" collation: a non-deterministic column
# collation would hash strings that differ as equal.
HASHED_AS_C_TEXT = frozenset({"text", "character varying"})
# Types whose equality is looser than identity (1.0 = 1.00, -0 = 0, '1 day' = '24 hours') enter
# through their binary send function, which keeps every bit and is as cheap as the value itself.
HASHED_AS_SENT = {
    "numeric": "numeric_send", "double precision": "float8send", "real": "float4send",
    "interval": "interval_send", "time with time zone": "timetz_send",
}
# jsonb is hashed by its own hash: object keys are sorted and deduplicated by jsonb itself, so the
# only loss is a number's trailing zeros ({"a": 1.0} and {"a": 1.00} hash equal). Its text would
# cost twice the whole rest of a row (GitLab's p_ci_builds.options).
HASHED_AS_JSONB = frozenset({"jsonb"})


def base_type(column_type: str) -> str:
    """format_type() without its type modifier: 'character varying(255)' -> 'character varying'."""
    head, _, rest = column_type.partition("(")
    if not rest:
        return column_type
    return head.rstrip() + rest.partition(")")[2]


def column_hash_operand(value: str | sql.Composable, column_type: str) -> sql.Composable:
    """How one column enters the row hash. Every other type (arrays, enums, domains, composites,
    json, geometric types...) enters as its text, as PostgreSQL prints it: exact, and the same on
    every Cell under the canonical session settings, where an enum's or an array's own hash would
    depend on type OIDs or ignore array bounds."""
    if isinstance(value, str):
        value = sql.Identifier(value)
    kind = base_type(column_type)
    if kind in HASHED_AS_IS or kind in HASHED_AS_JSONB:
        return value
    if kind in HASHED_AS_C_TEXT:
        return sql.SQL('({} COLLATE "C")').format(value)
    if kind in HASHED_AS_SENT:
        return sql.SQL("{}({})").format(sql.Identifier(HASHED_AS_SENT[kind]), value)
    return sql.SQL("{}::text").format(value)


def row_hash_expr(step: Step, root: RootSpec, org: Any) -> sql.Composable:
    """A 64-bit hash of one row from its values (PostgreSQL 14+: hash_record_extended).
    column_exprs: nullified references read alike on both Cells (NULL outside the org)."""
    types = step.column_types or ["text"] * len(step.columns)
    values = column_exprs(step, root, org)
    operands = sql.SQL(", ").join(column_hash_operand(v, t) for v, t in zip(values, types, strict=True))
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(operands)


def chunk_hash_query(step: Step, root: RootSpec, org: Any, r: KeyRange) -> str:
    return sql.SQL(
        # sum(bigint) is exact (a numeric result, accumulated in 128 bits): no cast per row.
        "SELECT count(*), COALESCE(sum({h}), 0) FROM {t} WHERE {w}"
    ).format(h=row_hash_expr(step, root, org), t=table_ident(step.table),
             w=org_rows_where(step, root, org, r)).as_string(None)


def row_hashes_query(step: Step, root: RootSpec, org: Any, r: KeyRange) -> str:
    """(key..., row hash) of every row in the range; without a key: (row text, hash)."""
    if step.key:
        keys = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in step.key)
    else:
        keys = sql.SQL("left(ROW({})::text, 200)").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in step.columns))
    return sql.SQL("SELECT {k}, {h} FROM {t} WHERE {w}").format(
        k=keys, h=row_hash_expr(step, root, org), t=table_ident(step.table),
        w=org_rows_where(step, root, org, r)).as_string(None)


def middle_key_query(step: Step, root: RootSpec, org: Any, r: KeyRange, offset: int) -> str:
    keys = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in step.key)
    return sql.SQL("SELECT {k} FROM {t} WHERE {w} ORDER BY {o} OFFSET {n} LIMIT 1").format(
        k=keys, t=table_ident(step.table), w=org_rows_where(step, root, org, r),
        o=key_expr(step), n=sql.Literal(offset)).as_string(None)


# --- the comparison ------------------------------------------------------------------------------


class Side:
    """One Cell's connection pool for verify: a few asyncpg connections, read-only."""

    def __init__(self, dsn: str, cell: str, app: str, size: int) -> None:
        self.dsn, self.cell, self.app, self.size = dsn, cell, app, size
        self.pool: asyncio.Queue[Any] = asyncio.Queue()
        self.conns: list[Any] = []

    async def open(self) -> None:
        for i in range(self.size):
            conn = await db.connect_data_plane(self.dsn, cell=self.cell, application_name=f"{self.app}{i}")
            self.conns.append(conn)
            self.pool.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def fetch(self, query: str) -> list[Any]:
        conn = await self.pool.get()
        try:
            return list(await conn.fetch(query))
        except Exception as exc:
            raise db.translate(exc, cell=self.cell, what="verify") from exc
        finally:
            self.pool.put_nowait(conn)


class Verifier:
    def __init__(self, plan: Plan, src: Side, dst: Side, options: VerifyOptions) -> None:
        self.plan = plan
        self.src = src
        self.dst = dst
        self.options = options

    async def both(self, query_src: str, query_dst: str | None = None) -> tuple[list[Any], list[Any]]:
        a, b = await asyncio.gather(self.src.fetch(query_src), self.dst.fetch(query_dst or query_src))
        return a, b

    async def checksum(self, step: Step, chunk_no: int, r: KeyRange) -> ChunkResult:
        q = chunk_hash_query(step, self.plan.root, self.plan.org, r)
        a, b = await self.both(q)
        return ChunkResult(step.table, chunk_no, r, int(a[0][0]), int(b[0][0]),
                           Decimal(a[0][1]), Decimal(b[0][1]))

    async def narrow(self, step: Step, result: ChunkResult, table: TableVerify) -> None:
        """Find the differing rows of a mismatching chunk."""
        await self._narrow(step, result.range, result.src_rows, result.dst_rows, table, depth=0)

    async def _narrow(self, step: Step, r: KeyRange, src_rows: int, dst_rows: int,
                      table: TableVerify, depth: int) -> None:
        if len(table.examples) >= self.options.max_examples and table.kinds:
            return
        big = max(src_rows, dst_rows)
        if step.key and big > self.options.row_compare_threshold and depth < 40:
            # Split at the median key of the bigger side, re-hash both halves.
            side = self.src if src_rows >= dst_rows else self.dst
            rows = await side.fetch(middle_key_query(step, self.plan.root, self.plan.org, r, big // 2))
            if rows:
                middle = tuple(str(v) for v in rows[0])
                if middle != r.lo:
                    for half in split_range(r, middle):
                        res = await self.checksum(step, -1, half)
                        if not res.equal:
                            await self._narrow(step, half, res.src_rows, res.dst_rows, table, depth + 1)
                    return
        await self._compare_rows(step, r, table)

    async def _compare_rows(self, step: Step, r: KeyRange, table: TableVerify) -> None:
        q = row_hashes_query(step, self.plan.root, self.plan.org, r)
        a, b = await self.both(q)
        names = step.key or ["row"]
        if step.key:
            src_map = {tuple(row[:-1]): row[-1] for row in a}
            dst_map = {tuple(row[:-1]): row[-1] for row in b}
            diffs: list[tuple[str, tuple[Any, ...]]] = []
            for k in sorted(src_map.keys() - dst_map.keys()):
                diffs.append(("missing_on_target", k))
            for k in sorted(dst_map.keys() - src_map.keys()):
                diffs.append(("extra_on_target", k))
            for k in sorted(src_map.keys() & dst_map.keys()):
                if src_map[k] != dst_map[k]:
                    diffs.append(("differs", k))
        else:
            src_count = Counter((row[1], row[0]) for row in a)
            dst_count = Counter((row[1], row[0]) for row in b)
            diffs = []
            for (_, text), n in sorted((src_count - dst_count).items()):
                diffs += [("missing_on_target", (text,))] * n
            for (_, text), n in sorted((dst_count - src_count).items()):
                diffs += [("extra_on_target", (text,))] * n
        for kind, key in diffs:
            table.kinds[kind] += 1
            if len(table.examples) < self.options.max_examples:
                table.examples.append(Example(kind, dict(zip(names, key, strict=True))))


def chunk_plan(ctx: MoveContext, options: VerifyOptions, chunk_rows: int) -> dict[str, list[KeyRange]]:
    """The copy's key ranges from the state store, or ranges derived from the source."""
    plan = ctx.plan
    ranges: dict[str, list[KeyRange]] = {}
    with ctx.connect_target("verify") as dst:
        if state.get_move(dst, plan.move_key) is not None:
            for c in state.load_chunks(dst, plan.move_key):
                ranges.setdefault(c.table_name, []).append(c.range)
    missing = [s for s in plan.steps if s.table not in ranges]
    if missing:
        with ctx.connect_source("verify") as src, db.wrap_errors(ctx.source, "chunk boundaries"):
            for step in missing:
                if single_chunk_only(step):
                    ranges[step.table] = [WHOLE]
                else:
                    rows = src.execute(boundaries_query(step, plan.root, plan.org, chunk_rows)).fetchall()
                    ranges[step.table] = ranges_from_boundaries([tuple(r) for r in rows])
    return ranges


async def verify_chunks(
    ctx: MoveContext,
    work: list[tuple[Step, int, KeyRange]],
    options: VerifyOptions,
    progress: ProgressSink,
    report: VerifyReport,
) -> list[ChunkResult]:
    """Checksum every chunk of ``work`` on both sides; narrow mismatches into the report."""
    workers = max(1, options.workers)
    src = Side(ctx.source_dsn, ctx.source, ctx.app_name("verify-src"), workers)
    dst = Side(ctx.target_dsn, ctx.target, ctx.app_name("verify-dst"), workers)
    await asyncio.gather(src.open(), dst.open())
    verifier = Verifier(ctx.plan, src, dst, options)
    queue: asyncio.Queue[tuple[Step, int, KeyRange]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    results: list[ChunkResult] = []

    async def worker() -> None:
        while True:
            try:
                step, chunk_no, r = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            res = await verifier.checksum(step, chunk_no, r)
            results.append(res)
            table = report.tables[step.table]
            table.chunks += 1
            table.source_rows += res.src_rows
            table.target_rows += res.dst_rows
            progress.advance(step.table, res.src_rows)
            if not res.equal:
                table.mismatched_chunks += 1
                METRICS.verify_mismatches.inc()
                await verifier.narrow(step, res, table)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(worker())
    except* Exception as group:
        raise group.exceptions[0] from None
    finally:
        await asyncio.gather(src.close(), dst.close())
    return results


def run_verify(
    plan: Plan,
    config: Config,
    options: VerifyOptions | None = None,
    progress: ProgressSink | None = None,
    *,
    check_schema: bool = True,
) -> VerifyReport:
    options = options or VerifyOptions()
    progress = progress or NullProgress()
    ctx = MoveContext.create(plan, config)
    started = time.monotonic()
    report = VerifyReport(plan.move_key)
    if check_schema:
        with ctx.control("verify") as (src, dst):
            ctx.check_fingerprints(src, dst)
    steps = [s for s in plan.steps if options.tables is None or s.table in options.tables
             or s.name in options.tables]
    if options.tables:
        unknown = set(options.tables) - {s.table for s in plan.steps} - {s.name for s in plan.steps}
        if unknown:
            from orgmove.errors import BadInput

            raise BadInput(f"--tables names tables that are not in the plan: {', '.join(sorted(unknown))}",
                           fix="use table names as `orgmove plan` lists them")
    ranges = chunk_plan(ctx, options, config.defaults.chunk_rows)
    work = [(s, i, r) for s in steps for i, r in enumerate(ranges.get(s.table, [WHOLE]))]
    for s in steps:
        report.tables[s.table] = TableVerify(s.table)
    progress.start("verify", {s.table: s.estimated_rows for s in steps})
    try:
        results = asyncio.run(verify_chunks(ctx, work, options, progress, report))
    finally:
        progress.finish()
    report.seconds = time.monotonic() - started
    if options.record:
        _record(ctx, report, results)
    log(logging.INFO if report.equal else logging.WARNING,
        "verify " + ("equal" if report.equal else "found differences"),
        move=plan.move_key, seconds=round(report.seconds, 3), mismatched=report.mismatched_chunks)
    return report


def _record(ctx: MoveContext, report: VerifyReport, results: list[ChunkResult]) -> None:
    with ctx.connect_target("verify") as dst, db.wrap_errors(ctx.target, "record verify"):
        move = state.ensure_move(dst, ctx.plan)
        if move.state in state.AFTER_FLIP:
            # After the flip the source is no longer the truth (cleanup may have emptied it).
            state.record_event(dst, ctx.plan.move_key, "verify", "verify after commit (not recorded)",
                               equal=report.equal)
            return
        state.record_verify_chunks(dst, ctx.plan.move_key, [
            (r.table, r.chunk_no, r.src_rows, r.dst_rows, r.src_hash, r.dst_hash, r.equal) for r in results])
        new_state = (state.MoveState.VERIFIED if report.equal and move.state == state.MoveState.COPIED
                     else move.state)
        if not report.equal and move.state == state.MoveState.VERIFIED:
            new_state = state.MoveState.COPIED
        state.update_move(dst, ctx.plan.move_key, state=new_state, verified_at=state.db_now(dst),
                          verify_clean=report.equal, verify_seconds=report.seconds)
        state.record_event(dst, ctx.plan.move_key, "verify", "equal" if report.equal else "mismatch",
                           mismatched_chunks=report.mismatched_chunks, seconds=round(report.seconds, 3))
