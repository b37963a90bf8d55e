"""status: where a move stands, from the target's state store and the Topology Service."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from orgmove import db, debris, fence, state
from orgmove.config import Config
from orgmove.errors import OrgmoveError
from orgmove.plan import Plan
from orgmove.topology.api import TopologyAPI

MOVE_FIELDS = ("state", "snapshot_consistent", "snapshots", "copy_started_at", "copy_finished_at",
               "verified_at", "verify_clean", "verify_seconds", "topology_move_id", "fencing_token",
               "fenced_at", "committed_at", "freeze_window_s", "last_error", "updated_at")


def _describe(conn: psycopg.Connection[Any], move: state.MoveRow) -> dict[str, Any]:
    counts = state.chunk_counts(conn, move.move_key)
    doc: dict[str, Any] = {"move": move.move_key, "org": move.org, "from": move.from_cell,
                           "to": move.to_cell}
    for name in MOVE_FIELDS:
        value = move.get(name)
        doc[name] = value.isoformat() if hasattr(value, "isoformat") else value
    doc["chunks"] = {"done": counts.get("done", 0), "total": sum(counts.values())}
    doc["capture"] = _capture(move)
    doc["recent_events"] = [
        {"at": e["at"].isoformat(), "kind": e["kind"], "message": e["message"]}
        for e in state.last_events(conn, move.move_key, 5)
    ]
    return doc


def plan_in_use(config: Config, plan: Plan) -> str | None:
    """The state of the plan's move on its target when the move is under way or done (the plan
    file is then in use and must stay as it is); None when there is no such move, or it was
    rolled back (a new plan may replace it)."""
    try:
        with db.connect(config.cell_dsn(plan.to_cell), cell=plan.to_cell, application_name="orgmove/plan",
                        autocommit=True) as conn:
            move = state.get_move(conn, plan.move_key)
    except (OrgmoveError, psycopg.Error):
        return None  # the planner's own checks report an unreachable target properly
    if move is None or move.state in (state.MoveState.ROLLED_BACK, state.MoveState.PLANNED):
        return None
    return str(move.state)


def _capture(move: state.MoveRow) -> dict[str, Any] | None:
    """The stream's names and its lag as last measured by `sync` or the cutover (no source query)."""
    if not move.get("capture_slot"):
        return None
    at = move.get("sync_at")
    lsn = move.get("consistent_lsn")
    return {"slot": move.get("capture_slot"), "publication": move.get("capture_publication"),
            "origin": move.get("capture_origin"), "consistent_lsn": None if lsn is None else str(lsn),
            "lag_bytes": move.get("sync_lag_bytes"), "lag_s": move.get("sync_lag_s"),
            "changes_per_s": move.get("sync_changes_per_s"), "caught_up": move.get("sync_caught_up"),
            "measured_at": at.isoformat() if at is not None else None}


def move_status(config: Config, *, plan: Plan | None = None, org: str | None = None) -> dict[str, Any]:
    org_key = str(plan.org) if plan is not None else str(org)
    cells = [plan.to_cell] if plan is not None else sorted(config.cells)
    moves: list[dict[str, Any]] = []
    unreachable: dict[str, str] = {}
    for cell in cells:
        try:
            with db.connect(config.cell_dsn(cell), cell=cell, application_name="orgmove/status",
                            autocommit=True) as conn:
                if plan is not None:
                    mv = state.get_move(conn, plan.move_key)
                    found = [mv] if mv is not None else []
                else:
                    found = state.moves_for_org(conn, org_key)
                moves += [_describe(conn, m) for m in found]
        except OrgmoveError as exc:
            unreachable[cell] = exc.message
        except psycopg.Error as exc:  # e.g. a least-privileged role that may not read the state
            unreachable[cell] = db.translate(exc, cell=cell).message
    doc: dict[str, Any] = {"org": org_key, "moves": moves, "unreachable_cells": unreachable,
                           "owner": None, "org_state": None, "lease": None,
                           **cell_capture_status(config, unreachable)}
    if config.topology is not None:
        from orgmove.topology.client import client_from_config

        with client_from_config(config) as client:
            doc.update(topology_status(client, org_key))
    else:
        doc["topology_error"] = "no [topology] in the config"
    return doc


def topology_status(client: TopologyAPI, org_key: str) -> dict[str, Any]:
    """The organization's owner, state and live move lease as the Topology Service sees them."""
    doc: dict[str, Any] = {}
    try:
        with contextlib.suppress(OrgmoveError):
            info = client.get_organization(org_key)
            doc["owner"] = info.owner_cell
            doc["org_state"] = info.state
        live = [m for m in client.moves_for_org(org_key) if m.status in ("begun", "fenced")]
        if live:
            m = live[0]
            doc["lease"] = {"move_id": str(m.move_id), "status": m.status,
                            "from": m.from_cell, "to": m.to_cell,
                            "fencing_token": m.fencing_token,
                            "expires_at": m.lease_expires_at.isoformat()}
    except (ValueError, OrgmoveError) as exc:
        doc["topology_error"] = str(exc)
    return doc


def cell_capture_status(config: Config, unreachable: dict[str, str]) -> dict[str, Any]:
    """Every orgmove_* replication slot on every Cell with its retained WAL (whoever's move made
    it: an abandoned slot of another organization fills the same disk), and every gate trigger."""
    slots: list[dict[str, Any]] = []
    gates: list[dict[str, str]] = []
    limit_mb = config.defaults.max_retained_wal_mb
    for cell in sorted(config.cells):
        if cell in unreachable:
            continue
        try:
            with db.connect(config.cell_dsn(cell), cell=cell, application_name="orgmove/status",
                            autocommit=True) as conn:
                for slot in debris.orgmove_slots(conn, cell):
                    slots.append({**slot.to_json(),
                                  "over_limit": slot.retained_wal_bytes > limit_mb * 1048576})
                gates += [{"cell": cell, "table": t, "trigger": g} for t, g in fence.gate_triggers_on(conn)]
        except OrgmoveError as exc:
            unreachable[cell] = exc.message
        except psycopg.Error as exc:
            unreachable[cell] = db.translate(exc, cell=cell).message
    return {"slots": slots, "max_retained_wal_mb": limit_mb, "gate_triggers": gates}
