"""What ``orgmove copy`` creates on the source for the online move, and the snapshot the copy reads.

- A publication over the planned tables (``publish_via_partition_root``: a partitioned table's
  changes arrive under the planned parent's name).
- The replica identity each table needs: UPDATE and DELETE must carry the old key, so a table
  without a primary key (and REPLICA IDENTITY DEFAULT or NOTHING) gets REPLICA IDENTITY FULL.
- A logical slot created on a replication connection with ``SNAPSHOT 'export'``; every copy
  worker imports that snapshot, so copy and stream meet at the slot's consistent point exactly.
- A replication origin on the target (the apply's progress), reset whenever a new slot is made.

A resumed copy (after a crash, or a lost snapshot mid-copy) finds the move's slot but not its
snapshot: the exported snapshot died with the connection that created it. The chunks already done
are exact as of the slot's consistent point L1 and stay. The rest are copied from a *temporary*
slot's exported snapshot at L2 > L1 (exact too), dropped when the copy ends. The stream still
starts at L1: changes committed in (L1, L2] are applied again onto rows that already have them.
For tables with a key the apply is idempotent (upsert and delete by key: each change sets the row
to its state at that commit, so replaying a prefix converges to the state at L2). A table without
a unique key is copied in one chunk; if that chunk is copied at L2, the move records
``stream_skip[table] = L2`` and the apply skips that table's changes up to L2. ADR 0009.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from orgmove import capture, state
from orgmove.apply import drop_origin, reset_origin
from orgmove.capture import CaptureNames, ExportedSlot, capture_names
from orgmove.errors import PreflightFailed
from orgmove.movectx import MoveContext
from orgmove.obs import log
from orgmove.pgoutput import lsn_to_str
from orgmove.plan import Plan, Step, table_ident

RESUME_SUFFIX = "_r"


@dataclass(frozen=True)
class CapturePlan:
    """What the copy will create for change capture (shown by the plan and ``copy --dry-run``)."""

    names: CaptureNames
    tables: list[str]
    replica_identity_full: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"publication": self.names.publication, "slot": self.names.slot,
                "origin": self.names.origin, "tables": self.tables,
                "replica_identity_full": self.replica_identity_full}


def _sql_name(display: str) -> str:
    """A plan's display name (``schema.table``, unquoted) as SQL text for ``::regclass``."""
    return table_ident(display).as_string(None)


def published_relations(plan: Plan) -> list[str]:
    """The planned tables as SQL names (partitioned parents stand for their leaves)."""
    return [sql.Identifier(s.schema_name, s.name).as_string(None) for s in plan.steps]


def _identity_relations(plan: Plan) -> list[str]:
    # Replica identity is a property of each leaf: a partitioned parent's own setting is not used.
    names: list[str] = []
    for step in plan.steps:
        if step.partitions:
            names += [_sql_name(p) for p in step.partitions]
        else:
            names.append(sql.Identifier(step.schema_name, step.name).as_string(None))
    return names


_NEEDS_FULL_SQL = """
SELECT n.nspname || '.' || c.relname
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS t(name, i)
JOIN pg_class c ON c.oid = t.name::regclass
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND (c.relreplident = 'n'
       OR (c.relreplident = 'd' AND NOT EXISTS (
             SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisprimary)))
ORDER BY t.i
"""


_UNLOGGED_SQL = """
SELECT n.nspname || '.' || c.relname
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS t(name, i)
JOIN pg_class c ON c.oid = t.name::regclass
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relpersistence = 'u'
ORDER BY t.i
"""


def tables_needing_full_identity(conn: psycopg.Connection[Any], plan: Plan) -> list[str]:
    return [r[0] for r in conn.execute(_NEEDS_FULL_SQL, {"names": _identity_relations(plan)}).fetchall()]


def capture_plan(conn: psycopg.Connection[Any], plan: Plan) -> CapturePlan:
    return CapturePlan(capture_names(plan.move_key), published_relations(plan),
                       tables_needing_full_identity(conn, plan))


def preflight(ctx: MoveContext, src: psycopg.Connection[Any]) -> CapturePlan:
    """Exit 2 with every capture problem and its fix, before anything is written."""
    try:
        cplan = capture_plan(src, ctx.plan)
        facts = capture.read_capture_facts(src, cplan.names, _identity_relations(ctx.plan))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PreflightFailed(
            f"the role on cell {ctx.source!r} may not read what change capture needs "
            f"({str(exc).strip().splitlines()[0]})",
            fix="give the source role the REPLICATION attribute and ownership of the planned tables "
            "(docs/privileges.md), or copy without change capture (`orgmove copy --no-capture`): the "
            "cutover then freezes writes for a checksum round of the org",
        ) from None
    unlogged = [r[0] for r in src.execute(_UNLOGGED_SQL, {"names": _identity_relations(ctx.plan)}).fetchall()]
    if unlogged:
        raise PreflightFailed(
            f"change capture cannot stream unlogged tables (their writes never reach the WAL): "
            f"{', '.join(unlogged)} on cell {ctx.source!r}",
            fix="make them logged (`ALTER TABLE ... SET LOGGED`) before the move, or copy without change "
            "capture (`orgmove copy --no-capture`): the cutover then freezes writes for a checksum round "
            "of the org",
            details={"unlogged_tables": unlogged},
        )
    # Tables without an identity are given REPLICA IDENTITY FULL by the copy: not a problem here.
    facts = capture.CaptureFacts(**{**facts.__dict__, "tables_without_identity": ()})
    problems = capture.capture_problems(facts, cell=ctx.source)
    if problems:
        raise PreflightFailed(
            " ".join(p.message.rstrip(".") + "." for p in problems),
            fix=" ".join(p.fix.rstrip(".") + "." for p in problems) + " Or copy without change capture "
            "(`orgmove copy --no-capture`): the cutover then freezes writes for a checksum round of the org.",
            details={"problems": [str(p) for p in problems]},
        )
    return cplan


def _set_full_identity(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    """``tables``: display names (``schema.table``) as the catalog spelled them."""
    for name in tables:
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table_ident(name)))


def slot_exists(conn: psycopg.Connection[Any], slot: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone() is not None


class SlotSnapshotHolder:
    """The copy's snapshot, exported by a logical slot (same interface as ``copyparts.SnapshotHolder``:
    ``export()``, ``snapshot_id``, ``exports``, ``close()``)."""

    def __init__(self, ctx: MoveContext, cplan: CapturePlan) -> None:
        self.ctx = ctx
        self.cplan = cplan
        self.snapshot_id = ""
        self.exports = 0
        self.consistent_lsn = 0
        self._slot: ExportedSlot | None = None
        self._resume_slot: str | None = None

    def export(self) -> str:
        self._release()
        ctx, names = self.ctx, self.cplan.names
        with ctx.control("capture") as (src, dst):
            move = state.get_move(dst, ctx.plan.move_key)
            assert move is not None
            recorded = move.get("capture_slot") == names.slot and slot_exists(src, names.slot)
            if not recorded:
                self._create_main(src, dst)
            else:
                self._create_resume(src, dst, move.get("consistent_lsn"))
        self.exports += 1
        return self.snapshot_id

    def _create_main(self, src: psycopg.Connection[Any], dst: psycopg.Connection[Any]) -> None:
        ctx, names, plan = self.ctx, self.cplan.names, self.ctx.plan
        # A slot that the move did not record was made by a copy that died before recording it:
        # no chunk was copied from its snapshot, so it is dropped and made again.
        capture.drop_slot(src, names.slot)
        _set_full_identity(src, self.cplan.replica_identity_full)
        capture.ensure_publication(src, names.publication, self.cplan.tables, via_root=True)
        self._slot = capture.create_slot_with_snapshot(
            ctx.source_dsn, names.slot, cell=ctx.source, application_name=ctx.app_name("slot"))
        self.snapshot_id = self._slot.snapshot_name
        self.consistent_lsn = self._slot.consistent_point
        reset_origin(dst, names.origin)
        state.record_capture(dst, plan.move_key, slot=names.slot, publication=names.publication,
                             origin=names.origin, consistent_lsn=lsn_to_str(self.consistent_lsn),
                             replica_identity_full=self.cplan.replica_identity_full)
        state.record_event(dst, plan.move_key, "capture_created", "publication and slot created",
                           slot=names.slot, consistent_lsn=lsn_to_str(self.consistent_lsn))

    def _create_resume(self, src: psycopg.Connection[Any], dst: psycopg.Connection[Any], l1: Any) -> None:
        ctx, names, plan = self.ctx, self.cplan.names, self.ctx.plan
        resume = names.slot[: 63 - len(RESUME_SUFFIX)] + RESUME_SUFFIX
        capture.drop_slot(src, resume)
        self._slot = capture.create_slot_with_snapshot(
            ctx.source_dsn, resume, cell=ctx.source, application_name=ctx.app_name("slot"))
        self._resume_slot = resume
        self.snapshot_id = self._slot.snapshot_name
        l2 = lsn_to_str(self._slot.consistent_point)
        # Tables without a unique key not yet copied will be copied at L2: skip their changes up to it.
        keyless = {s.table for s in plan.steps if not s.key}
        pending = {c.table_name for c in state.load_chunks(dst, plan.move_key) if c.state != "done"}
        skip = {t: l2 for t in sorted(keyless & pending)}
        if skip:
            state.record_stream_skip(dst, plan.move_key, skip)
        state.record_event(dst, plan.move_key, "capture_resumed",
                           "resumed copy reads a temporary slot's snapshot; the stream keeps the move's slot",
                           slot=names.slot, consistent_lsn=str(l1), resume_lsn=l2, skip=skip)
        log(logging.INFO, "copy resumes from a temporary slot snapshot", move=plan.move_key,
            resume_lsn=l2)

    def _release(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def close(self) -> None:
        self._release()
        if self._resume_slot is not None:
            with contextlib.suppress(Exception), self.ctx.control("capture") as (src, _dst):
                capture.drop_slot(src, self._resume_slot)
            self._resume_slot = None


def move_has_capture(move: state.MoveRow | None) -> bool:
    return move is not None and bool(move.get("capture_slot"))


def drop_capture(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any]) -> None:
    """Drop the move's slots, publication and origin (rollback, cleanup, a restarted copy)."""
    names = capture_names(ctx.plan.move_key)
    capture.drop_slot(src, names.slot)
    capture.drop_slot(src, names.slot[: 63 - len(RESUME_SUFFIX)] + RESUME_SUFFIX)
    capture.drop_publication(src, names.publication)
    drop_origin(dst, names.origin)


def step_of(plan: Plan, table: str) -> Step | None:
    for s in plan.steps:
        if s.table == table:
            return s
    return None
