"""No debris: what a move leaves on its Cells for change capture and the write gate, found and
dropped by name (all names derive from the move key). ``rollback`` and ``cleanup`` call
:func:`remove_move_debris`; the retained-WAL guard calls it when it stops a move; ``status``
lists what is left with :func:`orgmove_slots`. ADR 0008."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from orgmove import capture, fence
from orgmove.apply import drop_origin
from orgmove.capture import capture_names
from orgmove.plan import Plan

SLOT_PREFIX = "orgmove_"
# The copy's resume slot (a temporary snapshot for a copy resumed after its snapshot died).
RESUME_SUFFIX = "_r"
# The reverse stream's names (target -> source after the flip) carry this suffix on the move key.
REVERSE_SUFFIX = ":reverse"


def _with_suffix(name: str, suffix: str) -> str:
    return name[: 63 - len(suffix)] + suffix


def forward_slots(move_key: str) -> list[str]:
    slot = capture_names(move_key).slot
    return [slot, _with_suffix(slot, RESUME_SUFFIX)]


@dataclass(frozen=True)
class SlotInfo:
    cell: str
    slot: str
    plugin: str | None
    active: bool
    wal_status: str | None
    retained_wal_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell, "slot": self.slot, "plugin": self.plugin, "active": self.active,
                "wal_status": self.wal_status, "retained_wal_bytes": self.retained_wal_bytes,
                "retained_wal_mb": round(self.retained_wal_bytes / 1048576, 1)}


def orgmove_slots(conn: psycopg.Connection[Any], cell: str) -> list[SlotInfo]:
    """Every orgmove_* replication slot on the Cell with the WAL it keeps on disk."""
    rows = conn.execute(
        "SELECT slot_name, plugin, active, wal_status, "
        "COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
        "FROM pg_replication_slots WHERE slot_name LIKE %s ORDER BY slot_name",
        (SLOT_PREFIX.replace("_", r"\_") + "%",)).fetchall()
    return [SlotInfo(cell, str(r[0]), r[1], bool(r[2]), r[3], int(r[4])) for r in rows]


def remove_capture(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], move_key: str) -> list[str]:
    """Drop the forward stream's slots and publication (source) and origin (target), and the
    reverse stream's (target -> source). Returns what was dropped."""
    dropped: list[str] = []
    names = capture_names(move_key)
    reverse = capture_names(move_key + REVERSE_SUFFIX)
    for slot in forward_slots(move_key):
        if capture.drop_slot(src, slot):
            dropped.append(f"slot {slot}")
    if capture.drop_slot(dst, reverse.slot):
        dropped.append(f"slot {reverse.slot}")
    for conn, pub in ((src, names.publication), (dst, reverse.publication)):
        if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,)).fetchone():
            capture.drop_publication(conn, pub)
            dropped.append(f"publication {pub}")
    for conn, origin in ((dst, names.origin), (src, reverse.origin)):
        # A role that may not read pg_replication_origin never made one; asking first keeps a
        # permission error from aborting the caller's transaction.
        may_read = conn.execute(
            "SELECT has_table_privilege('pg_catalog.pg_replication_origin', 'SELECT')").fetchone()
        found = may_read and may_read[0] and conn.execute(
            "SELECT 1 FROM pg_replication_origin WHERE roname = %s", (origin,)).fetchone()
        if found and _may_drop_origins(conn):
            # Origins are cluster-wide: one this role may not drop was made by a superuser, not
            # by this move (whose role could not have made it either).
            drop_origin(conn, origin)
            dropped.append(f"origin {origin}")
    return dropped


def _may_drop_origins(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT has_function_privilege('pg_replication_origin_drop(text)', 'EXECUTE')").fetchone()
    return bool(row and row[0])


def reversed_plan(plan: Plan) -> Plan:
    """The same tables and filters, from the target back to the source: the names of the
    target's gate (reverse stream) and of a fence taken there derive from its move key."""
    return plan.model_copy(update={"from_cell": plan.to_cell, "to_cell": plan.from_cell})


def remove_move_debris(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], plan: Plan) -> list[str]:
    """Everything the move created on either Cell: capture objects of both directions, the
    source's gate and (``cutover --reverse-stream``) the target's."""
    dropped = remove_capture(src, dst, plan.move_key)
    if fence.gate_installed_any(src, plan):
        fence.drop_gate(src, plan)
        dropped.append("gate triggers")
    back = reversed_plan(plan)
    if fence.gate_installed_any(dst, back):
        fence.drop_gate(dst, back)
        dropped.append("gate triggers on the target")
    return dropped
