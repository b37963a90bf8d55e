"""The reverse stream (issue 14, item 8; Vitess calls it ReverseTraffic): with
``cutover --reverse-stream`` the cutover creates, before its fence, a publication and a logical
slot on the TARGET over the planned tables, a replication origin on the SOURCE positioned at the
target's WAL position of the flip, and a gate on the target. ``orgmove rollback`` after that
flip applies the target's writes since the flip back onto the source (capture.ChangeStream and
apply.Applier with the roles swapped), fences the target, applies the rest, flips the claims
back with compare-and-swap, lifts the source's fence, and deletes the org's rows from the target.
ADR 0008, runbooks/15-rollback-after-the-flip.md."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from orgmove import capture, db, debris, fence, state
from orgmove.apply import Applier, apply_until
from orgmove.capture import CaptureNames, capture_names
from orgmove.config import Config
from orgmove.errors import CutoverAborted, MoveStateError
from orgmove.movectx import MoveContext
from orgmove.obs import log
from orgmove.pgoutput import lsn_to_str, str_to_lsn
from orgmove.plan import Plan, table_ident
from orgmove.rowfilter import OrgFilter


def reverse_names(plan: Plan) -> CaptureNames:
    return capture_names(plan.move_key + debris.REVERSE_SUFFIX)


def reversed_plan(plan: Plan) -> Plan:
    return debris.reversed_plan(plan)


def has_reverse_stream(dst: psycopg.Connection[Any], plan: Plan) -> bool:
    row = dst.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                      (reverse_names(plan).slot,)).fetchone()
    return row is not None


def prepare(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], plan: Plan) -> None:
    """Before the fence: the target's publication, slot and gate, the source's origin. Idempotent."""
    names = reverse_names(plan)
    if not dst.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (names.publication,)).fetchone():
        dst.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(names.publication),
            sql.SQL(", ").join(table_ident(s.table) for s in plan.steps)))
    for step in plan.steps:
        if not step.key:  # UPDATE/DELETE need the old row to be found on the source
            dst.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table_ident(step.table)))
    dst.execute("SELECT pg_create_logical_replication_slot(%(s)s, 'pgoutput') WHERE NOT EXISTS "
                "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %(s)s)", {"s": names.slot})
    src.execute("SELECT pg_replication_origin_create(%(o)s) WHERE pg_replication_origin_oid(%(o)s) IS NULL",
                {"o": names.origin})
    fence.install_gate(dst, reversed_plan(plan))


def mark_flip(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], plan: Plan) -> str:
    """Under the fence, right before the flip: the reverse stream starts at the target's current
    WAL position (everything before it is orgmove's own copy and sync, already on the source)."""
    row = dst.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    src.execute("SELECT pg_replication_origin_advance(%s, %s::pg_lsn)", (reverse_names(plan).origin, row[0]))
    return str(row[0])


def apply_back(ctx: MoveContext, dst: psycopg.Connection[Any], timeout_s: float = 120.0) -> int:
    """Apply the target's changes since the flip onto the source, up to the target's current WAL
    position. Returns the rows applied."""
    plan = ctx.plan
    names = reverse_names(plan)
    row = dst.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    until = str_to_lsn(str(row[0]))
    conn = ctx.connect_source("reverse-apply")
    try:
        # The source's gate refuses the org's writes after the flip: the reverse applier is the
        # one writer it lets through.
        fence.bypass_gate(conn, plan.move_key)
        # The source holds the org's rows as of the flip; the key sets then follow the stream.
        org_filter = OrgFilter(plan)
        org_filter.load(conn)
        applier = Applier(conn, names.origin, org_filter=org_filter, batch_txns=50,
                          planned_columns={s.table: s.columns for s in plan.steps},
                          replica_role=plan.replica_role)
        stream = capture.ChangeStream(ctx.config.cell_dsn(plan.to_cell), cell=plan.to_cell, slot=names.slot,
                                      publication=names.publication, start_lsn=applier.progress,
                                      application_name=f"orgmove/{plan.move_key}/reverse")
        applier.on_commit = stream.confirm
        with stream:
            stats = apply_until(stream, applier, until, timeout_s=timeout_s)
        applier.close()
        log(logging.INFO, "reverse stream applied", move=plan.move_key, until=lsn_to_str(until),
            rows=stats.rows, filtered=stats.filtered_rows)
        return stats.rows
    finally:
        conn.close()


def rollback_after_flip(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any],
                        topo: Any, config: Config, org: str) -> dict[str, Any]:
    """Return a committed move's org to its source with the writes it received on the target."""
    plan = ctx.plan
    back = reversed_plan(plan)
    if topo.owner_of_org(org) != plan.to_cell:
        raise MoveStateError(
            f"the Topology Service does not name {plan.to_cell} as the owner of organization {plan.org}",
            fix="check `orgmove status --org`; nothing was changed")
    ttl = config.defaults.lease_ttl_s
    with db.wrap_errors(plan.to_cell, "reverse stream"):
        rows = apply_back(ctx, dst)  # catch up while the target is still writable
    mv = topo.begin_move(org, plan.to_cell, plan.from_cell, ttl)
    try:
        topo.fence(mv.move_id, mv.fencing_token)
        fence.install_source_fence(dst, str(plan.org), back.move_key, int(mv.fencing_token),
                                   config.defaults.lock_timeout_s, ttl)
        with db.wrap_errors(plan.to_cell, "reverse stream under the fence"):
            rows += apply_back(ctx, dst)
        fence.make_fence_permanent(dst, str(plan.org))
        topo.commit_move(mv.move_id, mv.fencing_token, plan.to_cell)
    except BaseException as exc:
        try:
            topo.abort_move(mv.move_id, mv.fencing_token, f"rollback after the flip: {exc}"[:500])
            fence.lift_fence(dst, str(plan.org))
        except Exception as abort_exc:
            log(logging.ERROR, f"abort of the rollback incomplete: {abort_exc}", move=plan.move_key)
        if isinstance(exc, Exception) and not isinstance(exc, MoveStateError):
            raise CutoverAborted(
                f"rollback after the flip aborted: {exc}; organization {plan.org} stays on "
                f"{plan.to_cell}, writable", fix="fix the cause and rerun `orgmove rollback`") from exc
        raise
    fence.lift_fence(src, str(plan.org))  # the source owns the org again
    return {"rows_applied_back": rows, "topology_move_id": str(mv.move_id)}


def drop_target_side(dst: psycopg.Connection[Any], plan: Plan) -> None:
    """The target's gate (its publication and slot go with debris.remove_capture)."""
    fence.drop_gate(dst, reversed_plan(plan))


def moved_back_state(dst: psycopg.Connection[Any], plan: Plan, rows: int) -> None:
    state.record_event(dst, plan.move_key, "rolled_back_after_flip",
                       "the target's writes since the flip were applied back to the source", rows=rows)
