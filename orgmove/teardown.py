"""teardown: ``rollback`` (before the flip: abort, lift the source fence, delete the org's copied
rows from the target) and ``cleanup`` (after the flip: delete the org's rows from the source,
children first, in batches). See docs/architecture.md "After the flip"."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from orgmove import db, debris, reverse, state
from orgmove.chunking import WHOLE, org_rows_where
from orgmove.config import Config
from orgmove.cutover import plan_org_key, topology_client
from orgmove.errors import MoveStateError, PreflightFailed
from orgmove.fence import bypass_gate, has_fence, lift_fence
from orgmove.movectx import MoveContext
from orgmove.obs import NullProgress, ProgressSink, log
from orgmove.plan import Plan, Step, table_ident
from orgmove.topology.api import TopologyAPI


def _delete_org_rows(conn: psycopg.Connection[Any], step: Step, plan: Plan, batch_rows: int,
                     progress: ProgressSink | None = None, pause_s: float = 0.0) -> int:
    """Delete the org's rows of one table in batches; returns the rows deleted."""
    where = org_rows_where(step, plan.root, plan.org, WHOLE)
    t = table_ident(step.table)
    if step.key:
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in step.key)
        keys_row = keys if len(step.key) == 1 else sql.SQL("({})").format(keys)
        stmt = sql.SQL("DELETE FROM {t} WHERE {kr} IN (SELECT {k} FROM {t} WHERE {w} LIMIT {n})").format(
            t=t, kr=keys_row, k=keys, w=where, n=sql.Literal(batch_rows))
    else:
        stmt = sql.SQL("DELETE FROM {t} WHERE {w}").format(t=t, w=where)
    total = 0
    while True:
        with conn.transaction():
            cur = conn.execute(stmt)
            n = cur.rowcount
        total += n
        if progress is not None:
            progress.advance(step.table, n)
        if n == 0 or not step.key:
            return total
        if pause_s:
            time.sleep(pause_s)


def move_back_procedure(plan: Plan, plan_file: str) -> str:
    """The one way back after a flip (runbooks/06-rollback.md step 5): the old rows must leave the
    old Cell first, or the new move's pre-flight finds their keys there."""
    return (f"moving it back is two steps: `orgmove cleanup {plan_file} --yes` deletes the old rows "
            f"from {plan.from_cell}, then `orgmove move --org {plan.org} --from {plan.to_cell} "
            f"--to {plan.from_cell} --yes` moves it back (runbooks/06-rollback.md step 5)")


def run_rollback(plan: Plan, config: Config, plan_file: str = "PLAN",
                 confirm: Callable[[], None] | None = None) -> dict[str, Any]:
    """``confirm`` is asked after the checks and before anything changes: an operator learns that
    rollback cannot run before being asked to confirm it."""
    ctx = MoveContext.create(plan, config)
    deleted: dict[str, int] = {}
    with ctx.control("rollback") as (src, dst):
        move = state.get_move(dst, plan.move_key)
        if move is not None and move.state in state.AFTER_FLIP:
            if (move.state == state.MoveState.COMMITTED and config.topology is not None
                    and reverse.has_reverse_stream(dst, plan)):
                return _rollback_after_flip(ctx, src, dst, plan, config)
            raise MoveStateError(
                f"move {plan.move_key} was committed: organization {plan.org} lives on {plan.to_cell}; "
                "rollback undoes a move after its flip only when its cutover ran with "
                "--reverse-stream (and before cleanup)",
                fix=move_back_procedure(plan, plan_file),
            )
        if move is not None and move.state == state.MoveState.ROLLED_BACK:
            return {"move": plan.move_key, "rows_deleted": 0, "tables": {}, "owner": plan.from_cell,
                    "dropped": [], "already_done": True}
        if config.topology is not None:
            with topology_client(config) as topo:
                if move is not None and move.get("topology_move_id"):
                    _abort_topology_move(topo, plan, move.get("topology_move_id"))
                owner = topo.owner_of_org(plan_org_key(plan))
                if owner == plan.to_cell:
                    raise MoveStateError(
                        f"the Topology Service says organization {plan.org} lives on {plan.to_cell}; "
                        f"rollback would delete its live rows there, so nothing was deleted",
                        fix=move_back_procedure(plan, plan_file),
                    )
        if config.topology is None:
            log(logging.WARNING, "no Topology Service configured: rollback cannot check who owns the "
                "organization; it trusts the move state on the target", move=plan.move_key)
        if confirm is not None:
            confirm()
        if has_fence(src, str(plan.org)):
            lift_fence(src, str(plan.org))
        # Slots, publications, origins and the gate go first: the target's deletes below must
        # not be published, and the source's slot must stop retaining WAL at once.
        with db.wrap_errors(ctx.source, "dropping the move's slot, publication and gate"):
            dropped = debris.remove_move_debris(src, dst, plan)
        for step in reversed(plan.steps):
            with db.wrap_errors(ctx.target, f"delete {step.table}"):
                deleted[step.table] = _delete_org_rows(dst, step, plan, 10_000)
        if move is not None:
            state.forget_chunks(dst, plan.move_key)
            state.update_move(dst, plan.move_key, state=state.MoveState.ROLLED_BACK, last_error=None)
            state.record_event(dst, plan.move_key, "rolled_back", "copied rows deleted from the target",
                               rows=sum(deleted.values()))
    return {"move": plan.move_key, "rows_deleted": sum(deleted.values()), "tables": deleted,
            "owner": plan.from_cell, "dropped": dropped, "already_done": False}


def _rollback_after_flip(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any],
                         plan: Plan, config: Config) -> dict[str, Any]:
    """The reverse stream brings the target's writes back, the claims flip back, then the
    target's copy of the org and everything the move made go (runbooks/15-rollback-after-the-flip.md)."""
    with topology_client(config) as topo:
        doc = reverse.rollback_after_flip(ctx, src, dst, topo, config, plan_org_key(plan))
    reverse.moved_back_state(dst, plan, doc["rows_applied_back"])
    with db.wrap_errors(ctx.target, "dropping the move's slots and publications"):
        dropped = debris.remove_capture(src, dst, plan.move_key)
    bypass_gate(dst, reverse.reversed_plan(plan).move_key)
    deleted: dict[str, int] = {}
    for step in reversed(plan.steps):
        with db.wrap_errors(ctx.target, f"delete {step.table}"):
            deleted[step.table] = _delete_org_rows(dst, step, plan, 10_000)
    with db.wrap_errors(ctx.target, "dropping the move's gates"):
        dropped += debris.remove_move_debris(src, dst, plan)
        reverse.drop_target_side(dst, plan)
    state.forget_chunks(dst, plan.move_key)
    state.update_move(dst, plan.move_key, state=state.MoveState.ROLLED_BACK, last_error=None)
    state.record_event(dst, plan.move_key, "rolled_back", "moved back to the source with the reverse stream",
                       rows=sum(deleted.values()))
    return {"move": plan.move_key, "rows_deleted": sum(deleted.values()), "tables": deleted,
            "owner": plan.from_cell, "dropped": dropped, "already_done": False, **doc}


def _abort_topology_move(topo: TopologyAPI, plan: Plan, move_id: str) -> None:
    previous = topo.get_move(move_id)
    if previous.status == "committed":
        raise MoveStateError(
            f"the Topology Service says move {plan.move_key} was committed",
            fix="rerun `orgmove cutover` to record it; a move back is a new move",
        )
    if previous.status in ("begun", "fenced"):
        topo.abort_move(previous.move_id, previous.fencing_token, "rollback")


def run_cleanup(plan: Plan, config: Config, *, batch_rows: int = 10_000, pause_s: float = 0.0,
                progress: ProgressSink | None = None,
                confirm: Callable[[], None] | None = None) -> dict[str, Any]:
    progress = progress or NullProgress()
    ctx = MoveContext.create(plan, config)
    deleted: dict[str, int] = {}
    with ctx.control("cleanup") as (src, dst):
        move = state.get_move(dst, plan.move_key)
        if move is None or move.state not in state.AFTER_FLIP:
            raise MoveStateError(
                f"move {plan.move_key} is not committed (state {move.state if move else 'none'}); "
                "cleanup deletes the source rows only after the flip",
                fix="finish the move with `orgmove cutover` first",
            )
        if move.state == state.MoveState.CLEANED:
            return {"move": plan.move_key, "rows_deleted": 0, "tables": {}, "dropped": [], "already_done": True}
        if not move.get("verify_clean"):
            raise MoveStateError(f"move {plan.move_key} has no clean verification on record",
                                 fix="run `orgmove verify` until it reports equal")
        if config.topology is not None:
            with topology_client(config) as topo:
                owner = topo.owner_of_org(plan_org_key(plan))
            if owner != plan.to_cell:
                raise PreflightFailed(
                    f"the Topology Service says organization {plan.org} is owned by {owner!r}, "
                    f"not {plan.to_cell!r}; refusing to delete its rows from {plan.from_cell}",
                    fix="check `orgmove status --org`",
                )
        if confirm is not None:
            confirm()
        state.update_move(dst, plan.move_key, state=state.MoveState.CLEANING)
        progress.start("cleanup", {s.table: s.estimated_rows for s in plan.steps})
        # The streams are done once the target owns the org: drop them first, so the deletes are
        # neither decoded into a slot nor refused by a publication (a table without a replica
        # identity may not publish deletes).
        with db.wrap_errors(ctx.source, "dropping the move's slots and publications"):
            dropped = debris.remove_capture(src, dst, plan.move_key)
        # The gate keeps refusing every other writer of the moved org while its rows go.
        bypass_gate(src, plan.move_key)
        try:
            for step in reversed(plan.steps):
                with db.wrap_errors(ctx.source, f"delete {step.table}"):
                    deleted[step.table] = _delete_org_rows(src, step, plan, batch_rows, progress, pause_s)
        finally:
            progress.finish()
        with db.wrap_errors(ctx.source, "dropping the move's gate"):
            dropped += debris.remove_move_debris(src, dst, plan)
        state.update_move(dst, plan.move_key, state=state.MoveState.CLEANED)
        state.record_event(dst, plan.move_key, "cleaned", "source rows deleted",
                           rows=sum(deleted.values()), dropped=dropped)
    return {"move": plan.move_key, "rows_deleted": sum(deleted.values()), "tables": deleted,
            "dropped": dropped, "already_done": False}
