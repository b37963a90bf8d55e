"""Move state in the ``orgmove`` schema of the target Cell (moves, chunks, chunk log, verify
results, events), and the write-fence schema installed on every Cell."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from orgmove.chunking import KeyRange
from orgmove.errors import MoveStateError, StalePlan
from orgmove.plan import Plan

ADVISORY_NAMESPACE = "orgmove.move:"


class MoveState(StrEnum):
    """``orgmove.moves.state``. copy: planned -> copying -> copied (verify: -> verified, and a
    mismatch back to copied); cutover: -> cutover -> committed | aborted; rollback: ->
    rolled_back; cleanup: committed -> cleaning -> cleaned."""

    PLANNED = "planned"
    COPYING = "copying"
    COPIED = "copied"
    VERIFIED = "verified"
    CUTOVER = "cutover"
    COMMITTED = "committed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"
    CLEANING = "cleaning"
    CLEANED = "cleaned"


# The org lives on the target: nothing may copy, cut over or roll back any more.
AFTER_FLIP = frozenset({MoveState.COMMITTED, MoveState.CLEANING, MoveState.CLEANED})
_BEFORE_FLIP = frozenset(MoveState) - AFTER_FLIP

# new state -> the states it may be entered from (staying in a state is always allowed).
_ENTERED_FROM: dict[MoveState, frozenset[MoveState]] = {
    MoveState.PLANNED: frozenset(),
    # a resumed or repeated copy; an aborted cutover returns to copying
    MoveState.COPYING: frozenset({MoveState.PLANNED, MoveState.COPIED, MoveState.VERIFIED,
                                  MoveState.ABORTED}),
    # the copy's end; a verify mismatch; an interrupted cutover that was aborted
    MoveState.COPIED: frozenset({MoveState.COPYING, MoveState.VERIFIED, MoveState.CUTOVER,
                                 MoveState.ABORTED}),
    MoveState.VERIFIED: frozenset({MoveState.COPIED}),
    # cutover only checks that every chunk is done, whatever the copy last recorded
    MoveState.CUTOVER: frozenset({MoveState.COPYING, MoveState.COPIED, MoveState.VERIFIED,
                                  MoveState.ABORTED}),
    MoveState.COMMITTED: frozenset({MoveState.CUTOVER}),
    MoveState.ABORTED: frozenset({MoveState.COPYING, MoveState.COPIED, MoveState.VERIFIED,
                                  MoveState.CUTOVER}),
    # before the flip; after it only through the reverse stream (orgmove/reverse.py)
    MoveState.ROLLED_BACK: _BEFORE_FLIP | {MoveState.COMMITTED},
    MoveState.CLEANING: frozenset({MoveState.COMMITTED, MoveState.CLEANED}),
    MoveState.CLEANED: frozenset({MoveState.CLEANING}),
}


def check_transition(current: str, new: str) -> MoveState:
    """The one place that decides which move state may follow which; raises MoveStateError on
    any other. Returns the new state."""
    old_state, new_state = MoveState(current), MoveState(new)
    if old_state is not new_state and old_state not in _ENTERED_FROM[new_state]:
        raise MoveStateError(
            f"a move in state {old_state} cannot become {new_state}",
            fix="`orgmove status` shows where the move stands; rerun the step that state allows",
        )
    return new_state


def allowed_transitions() -> Iterable[tuple[MoveState, MoveState]]:
    """Every (from, to) pair :func:`check_transition` accepts, besides staying in a state."""
    for new_state, sources in _ENTERED_FROM.items():
        for old_state in sources:
            yield old_state, new_state


def _sql_file(name: str) -> str:
    return resources.files("orgmove").joinpath("sql", name).read_text(encoding="utf-8")


def install_state_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(sql.SQL(_sql_file("state_schema.sql")))


def install_cell_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(sql.SQL(_sql_file("cell_schema.sql")))


def state_schema_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('orgmove.moves') IS NOT NULL").fetchone()
    return bool(row and row[0])


@dataclass
class ChunkRow:
    table_name: str
    chunk_no: int
    range: KeyRange
    state: str
    generation: int
    rows: int | None
    bytes: int | None


@dataclass
class MoveRow:
    move_key: str
    org: str
    from_cell: str
    to_cell: str
    plan_checksum: str
    state: str
    snapshot_consistent: bool
    snapshots: int
    fields: dict[str, Any]

    def get(self, name: str) -> Any:
        return self.fields.get(name)


def get_move(conn: psycopg.Connection[Any], move_key: str) -> MoveRow | None:
    if not state_schema_exists(conn):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM orgmove.moves WHERE move_key = %s", (move_key,)).fetchone()
    if row is None:
        return None
    return MoveRow(
        move_key=row["move_key"],
        org=row["org"],
        from_cell=row["from_cell"],
        to_cell=row["to_cell"],
        plan_checksum=row["plan_checksum"],
        state=row["state"],
        snapshot_consistent=row["snapshot_consistent"],
        snapshots=row["snapshots"],
        fields=dict(row),
    )


def moves_for_org(conn: psycopg.Connection[Any], org: str) -> list[MoveRow]:
    if not state_schema_exists(conn):
        return []
    keys = [r[0] for r in conn.execute(
        "SELECT move_key FROM orgmove.moves WHERE org = %s ORDER BY created_at", (org,)
    ).fetchall()]
    return [m for k in keys if (m := get_move(conn, k)) is not None]


def ensure_move(conn: psycopg.Connection[Any], plan: Plan) -> MoveRow:
    """Create the move's row, or check that the recorded move belongs to this plan."""
    install_state_schema(conn)
    existing = get_move(conn, plan.move_key)
    if existing is not None:
        if existing.plan_checksum != plan.checksum:
            done = chunk_counts(conn, plan.move_key).get("done", 0)
            if existing.state in AFTER_FLIP:
                raise MoveStateError(
                    f"organization {plan.org} was already moved by {plan.move_key} "
                    f"(state {existing.state}) with another plan",
                    fix="a move back is a new move: `orgmove plan --from "
                    f"{plan.to_cell} --to {plan.from_cell}`",
                )
            if done and existing.state not in (MoveState.ROLLED_BACK, MoveState.ABORTED):
                raise StalePlan(
                    f"move {plan.move_key} was started with another plan (checksum "
                    f"{existing.plan_checksum[:12]}, {done} chunks copied)",
                    fix="resume with the plan it was started with, or `orgmove rollback` that "
                    "plan first",
                )
            with conn.transaction():
                conn.execute("DELETE FROM orgmove.moves WHERE move_key = %s", (plan.move_key,))
        elif existing.state != MoveState.ROLLED_BACK:
            return existing
        else:
            with conn.transaction():
                conn.execute("DELETE FROM orgmove.moves WHERE move_key = %s", (plan.move_key,))
    with conn.transaction():
        conn.execute(
            "INSERT INTO orgmove.moves (move_key, org, from_cell, to_cell, plan_checksum) "
            "VALUES (%s, %s, %s, %s, %s)",
            (plan.move_key, str(plan.org), plan.from_cell, plan.to_cell, plan.checksum),
        )
    move = get_move(conn, plan.move_key)
    assert move is not None
    return move


_UPDATABLE = {
    "state", "snapshot_consistent", "snapshots", "copy_started_at", "copy_finished_at",
    "verified_at", "verify_clean", "verify_seconds", "topology_move_id", "fencing_token",
    "fenced_at", "committed_at", "freeze_window_s", "last_error",
    "capture_slot", "capture_publication", "capture_origin", "consistent_lsn", "replica_identity_full",
    "sync_at", "sync_lag_bytes", "sync_lag_s", "sync_changes_per_s", "sync_caught_up",
}


def record_stream_skip(conn: psycopg.Connection[Any], move_key: str, skip: dict[str, str]) -> None:
    """Merge ``{table: lsn}`` into the move's stream_skip (see the state schema)."""
    with conn.transaction():
        conn.execute("UPDATE orgmove.moves SET stream_skip = stream_skip || %s::jsonb WHERE move_key = %s",
                     (json.dumps(skip), move_key))


def update_move(conn: psycopg.Connection[Any], move_key: str, **fields: Any) -> None:
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"not move fields: {sorted(unknown)}")
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields
    )
    query = sql.SQL("UPDATE orgmove.moves SET {}, updated_at = now() WHERE move_key = {}").format(
        assignments, sql.Placeholder("move_key__")
    )
    with conn.transaction():
        if "state" in fields:
            row = conn.execute("SELECT state FROM orgmove.moves WHERE move_key = %s FOR UPDATE",
                               (move_key,)).fetchone()
            if row is not None:
                fields["state"] = str(check_transition(row[0], fields["state"]))
        conn.execute(query, {**fields, "move_key__": move_key})


def record_event(
    conn: psycopg.Connection[Any], move_key: str, kind: str, message: str, **details: Any
) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO orgmove.events (move_key, kind, message, details) VALUES (%s, %s, %s, %s)",
            (move_key, kind, message, json.dumps(details, default=str)),
        )


def load_chunks(conn: psycopg.Connection[Any], move_key: str) -> list[ChunkRow]:
    rows = conn.execute(
        "SELECT table_name, chunk_no, lo, hi, state, generation, rows, bytes FROM orgmove.chunks "
        "WHERE move_key = %s ORDER BY table_name, chunk_no",
        (move_key,),
    ).fetchall()
    return [
        ChunkRow(r[0], r[1], KeyRange.from_json({"lo": r[2], "hi": r[3]}), r[4], r[5], r[6], r[7])
        for r in rows
    ]


def insert_chunks(
    conn: psycopg.Connection[Any], move_key: str, table_name: str, ranges: list[KeyRange]
) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO orgmove.chunks (move_key, table_name, chunk_no, lo, hi) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (
                    move_key,
                    table_name,
                    i,
                    json.dumps(r.lo) if r.lo is not None else None,
                    json.dumps(r.hi) if r.hi is not None else None,
                )
                for i, r in enumerate(ranges)
            ],
        )


def chunk_counts(conn: psycopg.Connection[Any], move_key: str) -> dict[str, int]:
    if not state_schema_exists(conn):
        return {}
    return {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT state, count(*) FROM orgmove.chunks WHERE move_key = %s GROUP BY state",
            (move_key,),
        ).fetchall()
    }


def last_events(conn: psycopg.Connection[Any], move_key: str, limit: int = 5) -> list[dict[str, Any]]:
    if not state_schema_exists(conn):
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT at, kind, message FROM orgmove.events WHERE move_key = %s "
            "ORDER BY id DESC LIMIT %s",
            (move_key, limit),
        ).fetchall()
    return [dict(r) for r in rows]


def db_now(conn: psycopg.Connection[Any]) -> datetime | None:
    row = conn.execute("SELECT now()").fetchone()
    return row[0] if row else None


# --- chunk checkpoints and verify results ---------------------------------------------------------


_LOG = ("INSERT INTO orgmove.chunk_log (move_key, table_name, chunk_no, generation, rows, bytes, "
        "snapshot) VALUES ($1, $2, $3, $4, $5, $6, $7)")
_LOG_ONCE = _LOG + " ON CONFLICT DO NOTHING"


async def record_chunk_done(dst: Any, move_key: str, table_name: str, chunk_no: int, rows: int,
                            nbytes: int, generation: int, snapshot: str, *, log_once: bool = False) -> None:
    """The chunk's checkpoint: done, with its rows and bytes, and its chunk_log row. Runs on the
    caller's asyncpg target connection inside the transaction that wrote the chunk's rows, so the
    rows and the checkpoint commit together (ADR 0003). ``log_once``: a re-copy of the same
    generation keeps the first log row (the copy itself never repeats a generation)."""
    await dst.execute(
        "UPDATE orgmove.chunks SET state = 'done', rows = $4, bytes = $5, generation = $6, "
        "finished_at = clock_timestamp(), attempts = attempts + 1 "
        "WHERE move_key = $1 AND table_name = $2 AND chunk_no = $3",
        move_key, table_name, chunk_no, rows, nbytes, generation)
    await dst.execute(_LOG_ONCE if log_once else _LOG, move_key, table_name, chunk_no, generation, rows,
                      nbytes, snapshot)


def record_verify_chunks(conn: psycopg.Connection[Any], move_key: str,
                         results: Iterable[tuple[str, int, int, int, Any, Any, bool]]) -> None:
    """(table, chunk_no, src_rows, dst_rows, src_hash, dst_hash, equal) per chunk, upserted."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO orgmove.verify_chunks (move_key, table_name, chunk_no, src_rows, "
            "dst_rows, src_hash, dst_hash, equal) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (move_key, table_name, chunk_no) DO UPDATE SET src_rows = "
            "excluded.src_rows, dst_rows = excluded.dst_rows, src_hash = excluded.src_hash, "
            "dst_hash = excluded.dst_hash, equal = excluded.equal, checked_at = clock_timestamp()",
            [(move_key, *r) for r in results],
        )


def forget_chunks(conn: psycopg.Connection[Any], move_key: str) -> None:
    """Delete the move's chunks, chunk log and verify results: a later copy starts from scratch."""
    with conn.transaction():
        for table in ("chunks", "chunk_log", "verify_chunks", "stream_touched"):
            conn.execute(sql.SQL("DELETE FROM {} WHERE move_key = %s").format(
                sql.Identifier("orgmove", table)), (move_key,))


# --- change capture -------------------------------------------------------------------------------


def record_capture(conn: psycopg.Connection[Any], move_key: str, *, slot: str, publication: str,
                   origin: str, consistent_lsn: str, replica_identity_full: list[str]) -> None:
    """What the copy created on the source for the stream, and the LSN where copy and stream meet."""
    update_move(conn, move_key, capture_slot=slot, capture_publication=publication, capture_origin=origin,
                consistent_lsn=consistent_lsn, replica_identity_full=replica_identity_full)


def forget_capture(conn: psycopg.Connection[Any], move_key: str) -> None:
    update_move(conn, move_key, capture_slot=None, capture_publication=None, capture_origin=None,
                consistent_lsn=None, sync_at=None, sync_lag_bytes=None, sync_lag_s=None,
                sync_changes_per_s=None, sync_caught_up=None)
    with conn.transaction():
        conn.execute("UPDATE orgmove.moves SET stream_skip = '{}' WHERE move_key = %s", (move_key,))
        conn.execute("DELETE FROM orgmove.stream_touched WHERE move_key = %s", (move_key,))


def record_sync_progress(conn: psycopg.Connection[Any], move_key: str, *, lag_bytes: int, lag_s: float,
                         changes_per_s: float, caught_up: bool) -> None:
    """The stream's lag as last measured, for `orgmove status` (which does not ask the source)."""
    with conn.transaction():
        conn.execute(
            "UPDATE orgmove.moves SET sync_at = clock_timestamp(), sync_lag_bytes = %s, sync_lag_s = %s, "
            "sync_changes_per_s = %s, sync_caught_up = %s WHERE move_key = %s",
            (lag_bytes, lag_s, changes_per_s, caught_up, move_key),
        )


TOUCHED_SQL = ("INSERT INTO orgmove.stream_touched (move_key, table_name, key) VALUES (%s, %s, %s) "
               "ON CONFLICT DO NOTHING")


def record_touched(conn: psycopg.Connection[Any], move_key: str, touched: Iterable[tuple[str, str]]) -> None:
    """(table, key as JSON text) the stream changed. Runs inside the caller's apply transaction, so
    the record commits with the rows it names."""
    rows = [(move_key, table, key) for table, key in touched]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(TOUCHED_SQL, rows)


def load_touched(conn: psycopg.Connection[Any], move_key: str) -> dict[str, list[dict[str, str | None]]]:
    """table -> the keys (column -> value as text) the stream changed; ``{}`` stands for the whole table."""
    result: dict[str, list[dict[str, str | None]]] = {}
    if not state_schema_exists(conn):
        return result
    for table, key in conn.execute(
        "SELECT table_name, key FROM orgmove.stream_touched WHERE move_key = %s", (move_key,)
    ).fetchall():
        result.setdefault(table, []).append(dict(key))
    return result


def forget_touched(conn: psycopg.Connection[Any], move_key: str) -> None:
    """After a clean check of the touched rows: the next check starts from an empty set."""
    with conn.transaction():
        conn.execute("DELETE FROM orgmove.stream_touched WHERE move_key = %s", (move_key,))
