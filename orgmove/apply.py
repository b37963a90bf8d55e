"""Exactly-once apply of decoded pgoutput changes to the target Cell, in source commit order.

Each source transaction (or a batch of consecutive ones) becomes one target transaction that runs
with ``session_replication_role = replica`` (the source already checked FKs and fired triggers)
and that records, through ``pg_replication_origin_xact_setup``, the source commit LSN in a
replication origin named after the move. PostgreSQL writes the origin's progress in the target's
commit record, so the rows and the position commit together or not at all. After a crash (kill -9
at any point) the apply resumes from ``pg_replication_origin_progress(origin, true)`` and skips
every transaction whose commit LSN is not above it: nothing is applied twice, even for tables
without a unique key, and nothing is lost, since the source slot is only told to release a
position after its target commit (:meth:`orgmove.capture.ChangeStream.confirm`).

Changes are executed as they stream inside the open target transaction, in groups of at most
``group_rows`` statements of the same shape, so a source transaction of any size needs bounded
memory. Values travel in text format (as pgoutput sends them) with an explicit cast to the target
column's type; an UPDATE sets only the columns that are not unchanged TOAST.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg.types.string
from psycopg import sql

from orgmove import faults, state
from orgmove.errors import PermanentError, SchemaDrift
from orgmove.pgoutput import (
    LSN,
    UNCHANGED_TOAST,
    Begin,
    ColumnValue,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgoutputMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
    lsn_to_str,
    pg_timestamp,
)
from orgmove.rowfilter import OrgFilter


class ApplyFailed(PermanentError):
    code = "apply_failed"


# --- SQL rendering (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetTable:
    """A relation as the target knows it: the column types values are cast to."""

    relation: Relation
    types: dict[str, str]  # column name -> format_type() on the target
    # Rendered statements by shape: composing SQL per row costs more than running it.
    cache: dict[tuple[Any, ...], str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.relation.namespace or "pg_catalog", self.relation.name)

    @property
    def qualified_name(self) -> str:
        return f"{self.relation.namespace or 'pg_catalog'}.{self.relation.name}"

    def placeholder(self, column: str) -> sql.Composable:
        return sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(self.types[column]))


def render_insert(table: TargetTable, new: TupleData) -> tuple[sql.Composed, list[ColumnValue]]:
    names = [c.name for c in table.relation.columns]
    if any(v is UNCHANGED_TOAST for v in new):
        raise ApplyFailed(f"an INSERT into {table.qualified_name} carries an unchanged-TOAST marker",
                          fix="this is a decoding bug: report it with the source's PostgreSQL version")
    query = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})").format(
        table.ident,
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.SQL(", ").join(table.placeholder(n) for n in names),
    )
    return query, list(new)


def render_upsert(table: TargetTable, new: TupleData) -> tuple[sql.Composed, list[ColumnValue]]:
    """INSERT that becomes an UPDATE of the row with the same key: applying a change twice (a
    resumed copy's replay window) or an UPDATE of a row moved into the org both end right."""
    names = [c.name for c in table.relation.columns]
    keys = [c.name for c in table.relation.key_columns]
    others = [n for n in names if n not in keys]
    action = (sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in others)) if others
        else sql.SQL("DO NOTHING"))
    query = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({}) {}").format(
        table.ident,
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.SQL(", ").join(table.placeholder(n) for n in names),
        sql.SQL(", ").join(sql.Identifier(k) for k in keys),
        action,
    )
    return query, list(new)


def _match(table: TargetTable, row: TupleData, *, full: bool) -> tuple[sql.Composed, list[ColumnValue]]:
    """WHERE condition selecting the row by its replica identity columns."""
    conds: list[sql.Composable] = []
    params: list[ColumnValue] = []
    for col, value in zip(table.relation.columns, row, strict=True):
        if not (col.is_key or full) or value is UNCHANGED_TOAST:
            continue
        if value is None:
            conds.append(sql.SQL("{} IS NULL").format(sql.Identifier(col.name)))
        else:
            conds.append(sql.SQL("{} = {}").format(sql.Identifier(col.name), table.placeholder(col.name)))
            params.append(value)
    if not conds:
        raise ApplyFailed(
            f"a change to {table.qualified_name} carries no key to find its row on the target",
            fix=f"give {table.qualified_name} a primary key or REPLICA IDENTITY FULL on the source",
        )
    return sql.SQL(" AND ").join(conds), params


def _one_row(table: TargetTable, where: sql.Composed) -> sql.Composed:
    # No unique key: touch exactly one of the identical rows, as the source did.
    return sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(table.ident, where)


def identity_is_full(table: TargetTable, old_kind: str | None) -> bool:
    return old_kind == "O" or table.relation.replica_identity == "f"


def render_update(
    table: TargetTable, new: TupleData, old: TupleData | None, old_kind: str | None
) -> tuple[sql.Composed, list[ColumnValue]] | None:
    """None when no column changed value (every column unchanged TOAST)."""
    sets: list[sql.Composable] = []
    params: list[ColumnValue] = []
    for col, value in zip(table.relation.columns, new, strict=True):
        if value is UNCHANGED_TOAST:
            continue  # keep the target's value: never write NULL for it
        sets.append(sql.SQL("{} = {}").format(sql.Identifier(col.name), table.placeholder(col.name)))
        params.append(value)
    if not sets:
        return None
    full = identity_is_full(table, old_kind)
    where, where_params = _match(table, old if old is not None else new, full=full)
    if full:
        where = _one_row(table, where)
    query = sql.SQL("UPDATE {} SET {} WHERE {}").format(table.ident, sql.SQL(", ").join(sets), where)
    return query, params + where_params


def render_delete(table: TargetTable, old: TupleData, old_kind: str) -> tuple[sql.Composed, list[ColumnValue]]:
    full = identity_is_full(table, old_kind)
    where, params = _match(table, old, full=full)
    if full:
        where = _one_row(table, where)
    return sql.SQL("DELETE FROM {} WHERE {}").format(table.ident, where), params


# --- the applier ----------------------------------------------------------------------------------


@dataclass
class ApplyStats:
    transactions: int = 0
    skipped_transactions: int = 0  # already applied before a restart
    rows: int = 0
    filtered_rows: int = 0
    target_commits: int = 0


@dataclass
class _Group:
    """Consecutive statements of one shape, run with one executemany (pipelined)."""

    query: sql.Composed | str | None = None
    params: list[list[ColumnValue]] = field(default_factory=list)
    expect_rows: bool = False
    table: str = ""


class Applier:
    """Applies one stream's messages to the target through ``conn`` (a psycopg 3 connection that
    this object owns: it sets up the origin session and the replica role on it).

    ``batch_txns`` consecutive source transactions share one target transaction (fewer commits);
    :meth:`flush` commits a partial batch, and the caller calls it whenever the stream is idle.
    ``on_commit(end_lsn)`` is told each position that is now durable on the target."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        origin: str,
        *,
        org_filter: OrgFilter | None = None,
        batch_txns: int = 1,
        group_rows: int = 500,
        on_commit: Callable[[LSN], None] | None = None,
        stream_skip: Mapping[str, LSN] | None = None,
        planned_columns: Mapping[str, Sequence[str]] | None = None,
        fetch_source_row: Callable[[TargetTable, dict[str, ColumnValue]], TupleData | None] | None = None,
        move_key: str | None = None,
        replica_role: bool = True,
    ) -> None:
        self.replica_role = replica_role
        self.conn = conn
        self.origin = origin
        self.org_filter = org_filter
        self.stream_skip = dict(stream_skip or {})
        self.planned_columns = {t: set(c) for t, c in (planned_columns or {}).items()}
        self.fetch_source_row = fetch_source_row
        self.move_key = move_key
        self._touched: set[tuple[str, str]] = set()
        self._pipeline: Any = None
        self._commit_lsn: LSN = 0
        self.batch_txns = max(1, batch_txns)
        self.group_rows = group_rows
        self.on_commit = on_commit
        self.stats = ApplyStats()
        self._tables: dict[int, TargetTable] = {}
        self._skipping = False
        self.in_source_transaction = False  # between a Begin and its Commit
        self._batched = 0  # source transactions applied in the open target transaction
        self._batch_commit: Commit | StreamCommit | None = None
        self._group = _Group()
        self._streams: dict[int, list[PgoutputMessage]] = {}
        self._stream_xid: int | None = None
        self.progress: LSN = 0
        self._setup()

    # setup ------------------------------------------------------------------------------------

    def _setup(self) -> None:
        conn = self.conn
        conn.autocommit = True
        # Values are text as pgoutput sent them; "unknown" lets the explicit cast parse them directly.
        conn.adapters.register_dumper(str, psycopg.types.string.StrDumperUnknown)
        conn.execute(
            "SELECT pg_replication_origin_create(%(o)s) WHERE pg_replication_origin_oid(%(o)s) IS NULL",
            {"o": self.origin},
        )
        try:
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", [self.origin])
        except psycopg.errors.ObjectInUse as exc:
            raise ApplyFailed(
                f"replication origin {self.origin!r} is in use by another applier on the target",
                fix="another orgmove process applies this move: let it finish or stop it first",
            ) from exc
        if self.replica_role:
            conn.execute("SET session_replication_role = replica")
        self.progress = read_origin_progress(conn, self.origin)
        conn.autocommit = False

    def close(self) -> None:
        """Roll back an unfinished batch and leave the origin session (the connection stays)."""
        if self.conn.closed:
            return
        with contextlib.suppress(Exception):
            self._end_pipeline()
        self.conn.rollback()
        self.conn.autocommit = True
        self.conn.execute("SELECT pg_replication_origin_session_reset()")

    # message handling ------------------------------------------------------------------------

    def handle(self, message: PgoutputMessage) -> None:
        if self._stream_xid is not None and not isinstance(message, StreamStop):
            # Inside a streamed in-progress transaction: keep it until its Stream Commit. (Only
            # with proto_version 2 and streaming on, which orgmove does not request yet.)
            self._streams.setdefault(self._stream_xid, []).append(message)
            return
        if isinstance(message, Begin):
            self._begin(message.final_lsn)
        elif isinstance(message, Insert | Update | Delete):
            if not self._skipping:
                self._change(message)
        elif isinstance(message, Commit):
            self._commit(message)
        elif isinstance(message, Relation):
            self._relation(message)
        elif isinstance(message, Truncate):
            if not self._skipping:
                names = ", ".join(self._tables[o].qualified_name for o in message.relation_oids if o in self._tables)
                raise ApplyFailed(
                    f"TRUNCATE of {names or 'a published table'} on the source during the move: it empties "
                    "the table for every organization, so orgmove does not repeat it on the target",
                    fix="stop the move (rollback), find who truncated the table, and start the move again",
                )
        elif isinstance(message, StreamStart):
            self._stream_xid = message.xid
        elif isinstance(message, StreamStop):
            self._stream_xid = None
        elif isinstance(message, StreamCommit):
            self._begin(message.commit_lsn)
            for change in self._streams.pop(message.xid, []):
                if isinstance(change, Insert | Update | Delete) and not self._skipping:
                    self._change(change)
                elif isinstance(change, Relation):
                    self._relation(change)
            self._commit(message)
        elif isinstance(message, StreamAbort):
            if message.subxid == message.xid:
                self._streams.pop(message.xid, None)
            else:
                # Subtransaction aborts are not told apart change by change in protocol v2.
                raise ApplyFailed("a streamed subtransaction abort cannot be applied",
                                  fix="do not enable streaming of in-progress transactions")
        elif isinstance(message, Origin | Type | Message):
            pass  # origins matter for the reverse stream, messages for cutover markers (later)

    def _relation(self, rel: Relation) -> None:
        rows = self.conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            [sql.Identifier(rel.namespace or "pg_catalog", rel.name).as_string(self.conn)],
        ).fetchall()
        types = {str(name): str(type_name) for name, type_name in rows}
        qualified = f"{rel.namespace or 'pg_catalog'}.{rel.name}"
        planned = self.planned_columns.get(qualified)
        if planned is not None and {c.name for c in rel.columns} != planned:
            sent = {c.name for c in rel.columns}
            raise SchemaDrift(
                f"the source changed the shape of {qualified} during the move (DDL): the stream sends "
                f"columns {sorted(sent - planned) or '-'} the plan does not have and lacks "
                f"{sorted(planned - sent) or '-'}; nothing was applied against the new shape",
                fix="stop schema migrations during a move; roll the move back (`orgmove rollback`), make a "
                "new plan and move again",
                details={"table": qualified},
            )
        missing = [c.name for c in rel.columns if c.name not in types]
        if missing:
            raise ApplyFailed(
                f"{rel.namespace}.{rel.name} on the target has no column {', '.join(missing)} that the source sends",
                fix="the schemas differ (DDL during the move?): stop the move and align the schemas",
            )
        self._tables[rel.relation_oid] = TargetTable(rel, types)

    def _begin(self, commit_lsn: LSN) -> None:
        self.in_source_transaction = True
        self._commit_lsn = commit_lsn
        self._skipping = commit_lsn <= self.progress
        if self._skipping:
            self.stats.skipped_transactions += 1

    def _table(self, oid: int) -> TargetTable:
        table = self._tables.get(oid)
        if table is None:
            raise ApplyFailed(f"a change refers to relation {oid} before its Relation message",
                              fix="this is a protocol error: restart the stream")
        return table

    def _change(self, message: Insert | Update | Delete) -> None:
        table = self._table(message.relation_oid)
        name = table.qualified_name
        skip_to = self.stream_skip.get(name)
        if skip_to is not None and self._commit_lsn <= skip_to:
            self.stats.filtered_rows += 1  # in the copy already (a resumed copy's newer snapshot)
            return
        cols = [c.name for c in table.relation.columns]
        keyed = bool(table.relation.key_columns) and table.relation.replica_identity != "f"
        if isinstance(message, Insert):
            new = dict(zip(cols, message.new, strict=True))
            if not self._decide(name, None, new, self._belongs(name, new)):
                return
            self._emit(table, _cached_upsert(table, message.new) if keyed else render_insert(table, message.new))
            self._touch(table, new)
        elif isinstance(message, Update):
            self._update(table, keyed, cols, message)
        else:
            old = dict(zip(cols, message.old, strict=True))
            if not keyed and message.old_kind == "O":
                if not self._decide(name, old, None, self._belongs(name, old)):
                    return
            else:
                self._decide(name, old, None, None)  # deleting by key is a no-op for other orgs' rows
            self._emit(table, _cached_delete(table, message.old, message.old_kind))
            self._touch(table, old)

    def _belongs(self, table: str, row: dict[str, ColumnValue]) -> bool | None:
        return True if self.org_filter is None else self.org_filter.belongs(table, row)

    def _decide(self, table: str, old: dict[str, ColumnValue] | None, new: dict[str, ColumnValue] | None,
                belongs: bool | None) -> bool:
        """Keep the key sets current; False (and counted) when the change is not the org's."""
        if self.org_filter is not None:
            self.org_filter.observe(table, old, new, belongs)
        if belongs is False:
            self.stats.filtered_rows += 1
            return False
        self.stats.rows += 1
        return True

    def _update(self, table: TargetTable, keyed: bool, cols: list[str], message: Update) -> None:
        name = table.qualified_name
        new = dict(zip(cols, message.new, strict=True))
        old = dict(zip(cols, message.old, strict=True)) if message.old is not None else None
        if not keyed:
            # REPLICA IDENTITY FULL: the old row is whole, so both sides can be judged.
            full_old = old or new
            merged = tuple(o if v is UNCHANGED_TOAST else v
                           for v, o in zip(message.new, full_old.values(), strict=True))
            was = self._belongs(name, full_old)
            now = self._belongs(name, dict(zip(cols, merged, strict=True)))
            if self.org_filter is not None:
                self.org_filter.observe(name, full_old, new, now)
            if not was and not now:
                self.stats.filtered_rows += 1
                return
            self.stats.rows += 1
            before = message.old if message.old is not None else message.new
            if was and now:
                rendered = render_update(table, message.new, before, message.old_kind)
                if rendered is not None:
                    self._emit(table, rendered)
            elif was:
                self._emit(table, render_delete(table, before, message.old_kind or "O"))
            else:
                self._emit(table, render_insert(table, merged))
            self._touch(table, new)
            return
        now = self._belongs(name, new)
        if not self._decide(name, old, new, now if now is not None else True):
            # Out of the org (or never in it): delete by key, a no-op when the target lacks it.
            self._emit(table, render_delete(table, message.old or message.new, message.old_kind or "K"))
            self._touch(table, old or new)
            return
        if old is not None and _key_of(table, old) != _key_of(table, new):
            self._emit(table, render_delete(table, message.old or (), message.old_kind or "K"))
            self._touch(table, old)
        self._touch(table, new)
        if not any(v is UNCHANGED_TOAST for v in message.new):
            self._emit(table, _cached_upsert(table, message.new))
            return
        # Unchanged TOAST: set only the columns sent; a row the target lacks (moved into the org)
        # is read whole from the source.
        rendered = render_update(table, message.new, None, None)
        if rendered is None:
            return
        self._run_group()
        self._end_pipeline()  # the row count is needed now
        with self.conn.cursor() as cur:
            cur.execute(rendered[0], rendered[1])
            found = cur.rowcount
        if found == 0:
            row = None if self.fetch_source_row is None else self.fetch_source_row(table, new)
            if row is not None:
                self._emit(table, render_upsert(table, row))
            # None: deleted on the source since; its DELETE follows in the stream.

    def _touch(self, table: TargetTable, row: dict[str, ColumnValue]) -> None:
        if self.move_key is None:
            return
        keyed = table.relation.key_columns and table.relation.replica_identity != "f"
        key = dict(zip((c.name for c in table.relation.key_columns), _key_of(table, row), strict=True)) if keyed else {}
        self._touched.add((table.qualified_name, json.dumps(key, sort_keys=True)))

    def _emit(self, table: TargetTable, rendered: tuple[sql.Composed | str, list[ColumnValue]]) -> None:
        query, params = rendered
        group = self._group
        if group.query is not None and (group.query != query or len(group.params) >= self.group_rows):
            self._run_group()
        group = self._group
        group.query = query
        group.params.append(params)
        group.table = table.qualified_name

    def _run_group(self) -> None:
        group = self._group
        if group.query is None:
            return
        # Pipeline mode: statements of the open target transaction are sent without waiting for
        # each result; the results are read when the pipeline ends (before the commit).
        if self._pipeline is None:
            self._pipeline = self.conn.pipeline()
            self._pipeline.__enter__()
        with self.conn.cursor() as cur:
            cur.executemany(group.query, group.params)
        self._group = _Group()

    def _end_pipeline(self) -> None:
        if self._pipeline is not None:
            pipeline, self._pipeline = self._pipeline, None
            pipeline.__exit__(None, None, None)

    def _commit(self, commit: Commit | StreamCommit) -> None:
        self.in_source_transaction = False
        if self._skipping:
            self._skipping = False
            if self._batched == 0 and self.on_commit is not None:
                self.on_commit(commit.end_lsn)  # applied before the restart: durable already
            return
        self.stats.transactions += 1
        self._batched += 1
        self._batch_commit = commit
        if self._batched >= self.batch_txns:
            self.flush()

    def flush(self) -> LSN | None:
        """Commit the open batch (if any) with its origin position; the durable end LSN. Inside a
        source transaction it does nothing: a target commit never splits a source transaction."""
        commit = self._batch_commit
        if self.in_source_transaction:
            return None
        if commit is None:
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.rollback()  # only catalog reads (Relation messages of skipped transactions)
            return None
        self._run_group()
        self._end_pipeline()
        if self._touched and self.move_key is not None:
            state.record_touched(self.conn, self.move_key, sorted(self._touched))
            self._touched.clear()
        faults.failpoint("apply.before_commit")
        # The origin position commits with the rows (even an empty, filtered-out batch records it).
        self.conn.execute(
            "SELECT pg_replication_origin_xact_setup(%s::pg_lsn, %s)",
            [lsn_to_str(commit.commit_lsn), pg_timestamp(commit.commit_ts_us)],
        )
        self.conn.commit()
        faults.failpoint("apply.after_commit")
        self.stats.target_commits += 1
        self.progress = commit.commit_lsn
        self._batched = 0
        self._batch_commit = None
        if self.on_commit is not None:
            self.on_commit(commit.end_lsn)
        return commit.end_lsn


def _cached_upsert(table: TargetTable, new: TupleData) -> tuple[str, list[ColumnValue]]:
    query = table.cache.get(("upsert",))
    if query is None:
        query = table.cache[("upsert",)] = render_upsert(table, new)[0].as_string(None)
    return query, list(new)


def _cached_delete(table: TargetTable, old: TupleData, old_kind: str) -> tuple[str, list[ColumnValue]]:
    shape = ("delete", old_kind, tuple(v is None or v is UNCHANGED_TOAST for v in old))
    query = table.cache.get(shape)
    if query is None:
        composed, params = render_delete(table, old, old_kind)
        table.cache[shape] = composed.as_string(None)
        return table.cache[shape], params
    full = identity_is_full(table, old_kind)
    params = [v for col, v in zip(table.relation.columns, old, strict=True)
              if (col.is_key or full) and v is not None and v is not UNCHANGED_TOAST]
    return query, params


def _key_of(table: TargetTable, row: Mapping[str, ColumnValue]) -> list[str | None]:
    return [None if row.get(c.name) is None else str(row.get(c.name)) for c in table.relation.key_columns]


def read_origin_progress(conn: psycopg.Connection[Any], origin: str) -> LSN:
    """The last source commit LSN durably applied on the target (0: nothing yet)."""
    from orgmove.pgoutput import str_to_lsn

    row = conn.execute("SELECT pg_replication_origin_progress(%s, true)::text", [origin]).fetchone()
    return 0 if row is None or row[0] is None else str_to_lsn(row[0])


def reset_origin(conn: psycopg.Connection[Any], origin: str) -> None:
    """A new slot starts a new stream: forget any progress an earlier stream of this name recorded."""
    drop_origin(conn, origin)
    conn.execute("SELECT pg_replication_origin_create(%s)", [origin])


def drop_origin(conn: psycopg.Connection[Any], origin: str) -> None:
    conn.execute(
        "SELECT pg_replication_origin_drop(%(o)s) WHERE pg_replication_origin_oid(%(o)s) IS NOT NULL",
        {"o": origin},
    )


def apply_until(
    stream: Any, applier: Applier, until_lsn: LSN, *, timeout_s: float = 60.0,
    stop_after_txns: int | None = None,
) -> ApplyStats:
    """Apply from ``stream`` (a :class:`orgmove.capture.ChangeStream`) until every source
    transaction committed before ``until_lsn`` is durable on the target. ``stop_after_txns`` ends
    early after that many applied transactions (tests use it to interrupt between transactions)."""
    deadline = time.monotonic() + timeout_s
    applied_at_start = applier.stats.transactions
    while True:
        item = stream.get(timeout=0.1)
        if item is not None:
            applier.handle(item.message)
            if stop_after_txns is not None and applier.stats.transactions - applied_at_start >= stop_after_txns:
                applier.flush()
                return applier.stats
            continue
        # The stream is idle: commit a partial batch, then check whether we are there.
        applier.flush()
        if not applier.in_source_transaction and stream.idle and stream.received_lsn >= until_lsn:
            return applier.stats
        if time.monotonic() > deadline:
            raise ApplyFailed(
                f"the apply did not reach {lsn_to_str(until_lsn)} within {timeout_s:.0f} s "
                f"(stream at {lsn_to_str(stream.received_lsn)}, applied {lsn_to_str(applier.progress)})",
                fix="check the source slot (pg_replication_slots) and the target's load, then run again",
            )
