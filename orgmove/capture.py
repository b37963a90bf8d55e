"""Change capture on the source Cell: publication, logical slot with an exported snapshot, stream.

The copy and the stream must meet at exactly one LSN. ``CREATE_REPLICATION_SLOT ... LOGICAL
pgoutput (SNAPSHOT 'export')`` on a replication connection returns the slot's consistent point and
a snapshot in which exactly the transactions committed before that point are visible; every
transaction committing after it is decoded by the slot. Copy workers import the snapshot (``SET
TRANSACTION SNAPSHOT``), so nothing is missed and nothing is seen twice. The SQL function
``pg_create_logical_replication_slot`` exports no snapshot; a snapshot taken beside it does not
line up with the slot.

The replication protocol is spoken by psycopg2 only (psycopg 3 and asyncpg do not implement it),
so this module, and only this module, opens psycopg2 connections; the control plane stays on
psycopg 3 (:mod:`orgmove.db`). The stream runs in a thread that feeds decoded messages into a
bounded queue, and tells the server a position is flushed only once the applier says it committed
that position durably on the target: the slot then never lets go of WAL not yet applied.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import re
import select
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg import sql

from orgmove.config import redact
from orgmove.errors import (
    CellUnreachable,
    MoveStateError,
    OrgmoveError,
    PermanentError,
    PreflightFailed,
    TransientError,
)
from orgmove.pgoutput import LSN, Decoder, PgoutputMessage, str_to_lsn

# PostgreSQL names are at most 63 bytes; slot names allow only [a-z0-9_].
_MAX_NAME = 63
_PREFIX = "orgmove_"


@dataclass(frozen=True)
class CaptureNames:
    """What a move creates for change capture, all derived from its move key."""

    publication: str
    slot: str
    origin: str


def capture_names(move_key: str) -> CaptureNames:
    """Deterministic names, so that a rerun, ``status`` and ``cleanup`` find what a move created.

    Characters a slot name may not hold become ``_``; a name too long keeps a hash of the full key,
    so two long move keys never share a slot."""
    base = _PREFIX + re.sub(r"[^a-z0-9_]", "_", move_key.lower())
    if len(base) > _MAX_NAME:
        digest = hashlib.sha256(move_key.encode()).hexdigest()[:10]
        base = base[: _MAX_NAME - len(digest) - 1] + "_" + digest
    return CaptureNames(publication=base, slot=base, origin=base)


# --- pre-flight ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureFacts:
    """What the source Cell says about its ability to capture changes (one query's worth)."""

    wal_level: str
    max_replication_slots: int
    slots_used: int
    slot_exists: bool
    max_wal_senders: int
    wal_senders_used: int
    role: str
    is_superuser: bool
    has_replication: bool
    can_create_in_database: bool
    publication_owner: str | None  # None: the publication does not exist yet
    tables_not_owned: tuple[str, ...] = ()
    tables_without_identity: tuple[str, ...] = ()  # UPDATE/DELETE would fail on the source


@dataclass(frozen=True)
class CaptureProblem:
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message.rstrip('.')}. Fix: {self.fix.rstrip('.')}."


def capture_problems(facts: CaptureFacts, *, cell: str) -> list[CaptureProblem]:
    """Pure: every reason the source cannot capture changes, each with its fix."""
    problems: list[CaptureProblem] = []
    if facts.wal_level != "logical":
        problems.append(CaptureProblem(
            f"cell {cell!r} runs with wal_level = {facts.wal_level}, and change capture needs logical decoding",
            "set wal_level = logical in its postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart "
            "the server; on a managed service turn on its logical replication setting",
        ))
    if not facts.slot_exists and facts.slots_used >= facts.max_replication_slots:
        problems.append(CaptureProblem(
            f"cell {cell!r} has no free replication slot ({facts.slots_used} of max_replication_slots = "
            f"{facts.max_replication_slots} in use)",
            "drop an abandoned slot (SELECT pg_drop_replication_slot(name) for an inactive one in "
            "pg_replication_slots) or raise max_replication_slots and restart the server",
        ))
    if facts.wal_senders_used >= facts.max_wal_senders:
        problems.append(CaptureProblem(
            f"cell {cell!r} has no free WAL sender ({facts.wal_senders_used} of max_wal_senders = "
            f"{facts.max_wal_senders} in use)",
            "raise max_wal_senders and restart the server, or stop an idle replication client",
        ))
    if not (facts.is_superuser or facts.has_replication):
        problems.append(CaptureProblem(
            f"role {facts.role!r} on cell {cell!r} lacks the REPLICATION attribute a logical slot needs",
            f"run ALTER ROLE {facts.role} REPLICATION on that Cell as a superuser",
        ))
    if not facts.is_superuser:
        if facts.publication_owner is not None and facts.publication_owner != facts.role:
            problems.append(CaptureProblem(
                f"the publication on cell {cell!r} belongs to {facts.publication_owner!r}, not to {facts.role!r}",
                f"run ALTER PUBLICATION ... OWNER TO {facts.role}, or run the move as {facts.publication_owner}",
            ))
        if facts.publication_owner is None and not facts.can_create_in_database:
            problems.append(CaptureProblem(
                f"role {facts.role!r} may not create a publication in the database of cell {cell!r}",
                f"GRANT CREATE ON DATABASE <db> TO {facts.role}",
            ))
        if facts.tables_not_owned:
            problems.append(CaptureProblem(
                f"role {facts.role!r} does not own {', '.join(facts.tables_not_owned)} on cell {cell!r}; "
                "a publication may only name tables its owner owns",
                f"make {facts.role} a member of the tables' owner role (GRANT <owner> TO {facts.role})",
            ))
    if facts.tables_without_identity:
        problems.append(CaptureProblem(
            f"{', '.join(facts.tables_without_identity)} on cell {cell!r} have no replica identity (no primary "
            "key and REPLICA IDENTITY DEFAULT, or NOTHING): once published, every UPDATE and DELETE on them "
            "would fail on the source",
            "add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL (or USING INDEX a unique index)",
        ))
    return problems


_FACTS_SQL = """
SELECT current_setting('wal_level'),
       current_setting('max_replication_slots')::int,
       (SELECT count(*) FROM pg_replication_slots)::int,
       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %(slot)s),
       current_setting('max_wal_senders')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
       r.rolname, r.rolsuper, r.rolreplication,
       has_database_privilege(current_database(), 'CREATE'),
       (SELECT pg_get_userbyid(p.pubowner) FROM pg_publication p WHERE p.pubname = %(publication)s)
FROM pg_roles r WHERE r.rolname = current_user
"""

_TABLES_SQL = """
SELECT format('%%I.%%I', n.nspname, c.relname),
       pg_has_role(c.relowner, 'USAGE'),
       c.relreplident,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
FROM unnest(%(names)s::text[]) AS t(name)
JOIN pg_class c ON c.oid = t.name::regclass
JOIN pg_namespace n ON n.oid = c.relnamespace
"""


def read_capture_facts(
    conn: psycopg.Connection[Any], names: CaptureNames, tables: Sequence[str]
) -> CaptureFacts:
    """``tables`` are qualified names (``schema.table``, quoted where needed)."""
    row = conn.execute(_FACTS_SQL, {"slot": names.slot, "publication": names.publication}).fetchone()
    assert row is not None
    not_owned: list[str] = []
    without_identity: list[str] = []
    for name, owned, identity, has_pk in conn.execute(_TABLES_SQL, {"names": list(tables)}).fetchall():
        if not owned:
            not_owned.append(name)
        if identity == "n" or (identity == "d" and not has_pk):
            without_identity.append(name)
    return CaptureFacts(
        wal_level=row[0], max_replication_slots=row[1], slots_used=row[2], slot_exists=row[3],
        max_wal_senders=row[4], wal_senders_used=row[5], role=row[6], is_superuser=row[7],
        has_replication=row[8], can_create_in_database=row[9], publication_owner=row[10],
        tables_not_owned=tuple(not_owned), tables_without_identity=tuple(without_identity),
    )


def check_capture(
    conn: psycopg.Connection[Any], *, cell: str, names: CaptureNames, tables: Sequence[str]
) -> None:
    """Raise :class:`PreflightFailed` (exit 2, nothing changed) naming every problem and its fix."""
    problems = capture_problems(read_capture_facts(conn, names, tables), cell=cell)
    if problems:
        raise PreflightFailed(
            " ".join(p.message.rstrip(".") + "." for p in problems),
            fix=" ".join(p.fix.rstrip(".") + "." for p in problems),
            details={"problems": [str(p) for p in problems]},
        )


# --- publication and slot (control plane, psycopg 3) ----------------------------------------------


def ensure_publication(conn: psycopg.Connection[Any], publication: str, tables: Sequence[str], *,
                       via_root: bool = True) -> None:
    """Create the publication over exactly ``tables``, or set its table list if it exists.

    ``tables`` are qualified names; each is resolved through ``regclass`` first, so a name that is
    not a table fails here and not inside DDL text."""
    resolved = [
        row[0] for row in conn.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname) FROM unnest(%s::text[]) WITH ORDINALITY t(name, i) "
            "JOIN pg_class c ON c.oid = t.name::regclass JOIN pg_namespace n ON n.oid = c.relnamespace "
            "ORDER BY t.i",
            [list(tables)],
        ).fetchall()
    ]
    # Each name was quoted by the server's format('%I.%I') from the catalog, so it is safe as SQL.
    table_list = sql.SQL(", ").join(sql.SQL(name) for name in resolved)
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [publication]).fetchone()
    if exists:
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(publication), table_list))
    else:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = {})").format(
            sql.Identifier(publication), table_list, sql.SQL("true" if via_root else "false")))


def drop_publication(conn: psycopg.Connection[Any], publication: str) -> None:
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))


def drop_slot(conn: psycopg.Connection[Any], slot: str, *, wait_s: float = 10.0) -> bool:
    """Drop the slot if it exists (True when it did). A slot still in use by a stream that is going
    away is retried until ``wait_s``; one held by a live stream after that is terminated first."""
    deadline = time.monotonic() + wait_s
    while True:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ).fetchone()
        if row is None:
            return False
        if row[0] is None:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                return True
            except psycopg.errors.ObjectInUse:
                pass
            except psycopg.errors.UndefinedObject:
                return False
        elif time.monotonic() > deadline:
            conn.execute("SELECT pg_terminate_backend(%s)", [row[0]])
        time.sleep(0.05)


def retained_wal_bytes(conn: psycopg.Connection[Any], slot: str) -> int | None:
    """WAL the slot keeps on the source's disk (None: no such slot)."""
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    ).fetchone()
    return None if row is None else int(row[0] or 0)


def current_wal_lsn(conn: psycopg.Connection[Any]) -> LSN:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str_to_lsn(row[0])


# --- replication connections (psycopg2) -----------------------------------------------------------


def _translate(exc: BaseException, *, cell: str, what: str) -> OrgmoveError:
    text = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    state = str(getattr(exc, "pgcode", None) or "")
    if state == "42710":
        return MoveStateError(
            f"replication slot already exists on cell {cell!r} ({what}): {text}",
            fix="a slot cannot export a snapshot twice: drop it (rollback of the move does) and copy again",
        )
    if state == "42501":
        return PermanentError(
            f"cell {cell!r} denied a privilege ({what}): {text}",
            fix="give the role the REPLICATION attribute (ALTER ROLE ... REPLICATION)",
        )
    if isinstance(exc, psycopg2.OperationalError) and not state:
        if "connection" in text.lower() and ("refused" in text.lower() or "could not" in text.lower()):
            return CellUnreachable(
                f"cell {cell!r} is unreachable ({what}): {text}",
                fix="check that the Cell's PostgreSQL is up and accepts replication connections (pg_hba.conf)",
            )
        return TransientError(f"replication connection to cell {cell!r} broke ({what}): {text}")
    if state.startswith(("08", "57P", "53")):
        return TransientError(f"transient error on cell {cell!r} ({what}): {text}", details={"sqlstate": state})
    return PermanentError(f"error on cell {cell!r} ({what}): {text}", details={"sqlstate": state})


def _replication_connection(
    dsn: str, *, cell: str, application_name: str
) -> psycopg2.extras.LogicalReplicationConnection:
    try:
        conn = psycopg2.connect(
            dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            application_name=application_name[:63],
            connect_timeout=10,
        )
    except psycopg2.Error as exc:
        raise _translate(exc, cell=cell, what="replication connection") from exc
    return conn


@dataclass
class ExportedSlot:
    """A new slot and the snapshot exported with it. The snapshot exists only while this object's
    replication connection stays open and idle: call :meth:`release` once every copy worker ran
    ``SET TRANSACTION SNAPSHOT``, not before."""

    slot: str
    consistent_point: LSN
    snapshot_name: str
    _conn: psycopg2.extensions.connection | None = field(repr=False, default=None)

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> ExportedSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def create_slot_with_snapshot(dsn: str, slot: str, *, cell: str, application_name: str) -> ExportedSlot:
    """``CREATE_REPLICATION_SLOT slot LOGICAL pgoutput (SNAPSHOT 'export')``. Waits for the
    transactions running on the source to finish (the server needs a consistent start)."""
    if not re.fullmatch(r"[a-z0-9_]{1,63}", slot):
        raise ValueError(f"invalid slot name {slot!r}")
    conn = _replication_connection(dsn, cell=cell, application_name=application_name)
    try:
        cur = conn.cursor()
        # The slot name is validated above; the replication grammar takes no parameters.
        cur.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')")
        row = cur.fetchone()
    except psycopg2.Error as exc:
        with contextlib.suppress(psycopg2.Error):
            conn.close()
        raise _translate(exc, cell=cell, what=f"create slot {slot}") from exc
    assert row is not None
    return ExportedSlot(slot=row[0], consistent_point=str_to_lsn(row[1]), snapshot_name=row[2], _conn=conn)


# --- the stream -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamItem:
    data_start: LSN
    wal_end: LSN
    message: PgoutputMessage


class ChangeStream:
    """Reads ``slot`` from ``start_lsn`` in a thread; :meth:`get` hands out decoded messages in
    stream order through a queue of at most ``queue_size`` messages (a slow applier stalls the
    reader, not memory). :meth:`confirm` is the only way the server learns a position is flushed.
    """

    def __init__(
        self,
        dsn: str,
        *,
        cell: str,
        slot: str,
        publication: str,
        start_lsn: LSN = 0,
        application_name: str = "orgmove/stream",
        queue_size: int = 10_000,
        proto_version: int = 1,
        status_interval_s: int = 1,
    ) -> None:
        self.dsn = dsn
        self.cell = cell
        self.slot = slot
        self.publication = publication
        self.start_lsn = start_lsn
        self.application_name = application_name
        self.proto_version = proto_version
        self.status_interval_s = status_interval_s
        self._queue: queue.Queue[StreamItem] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._confirmed: LSN = 0
        self._sent_confirmed: LSN = 0
        self._received: LSN = 0  # the server's wal_end as of the last message or keepalive
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # the applier's side -------------------------------------------------------------------------

    def start(self) -> ChangeStream:
        self._thread = threading.Thread(target=self._run, name=f"orgmove-stream-{self.slot}", daemon=True)
        self._thread.start()
        # Surface a connection or privilege error at once instead of on the first get().
        while not self._started.wait(0.05):
            if self._error is not None or not self._thread.is_alive():
                break
        self._raise_if_failed()
        return self

    def get(self, timeout: float = 0.5) -> StreamItem | None:
        """The next message, or None when none arrived within ``timeout``."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            self._raise_if_failed()
            return None

    def confirm(self, lsn: LSN) -> None:
        """Everything up to ``lsn`` is committed durably on the target: the slot may let it go."""
        with self._lock:
            self._confirmed = max(self._confirmed, lsn)

    @property
    def received_lsn(self) -> LSN:
        """The server has sent every transaction that committed before this position."""
        return self._received

    @property
    def idle(self) -> bool:
        return self._queue.empty()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> ChangeStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # the reader thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._stream()
        except BaseException as exc:  # handed to the applier's thread through get()
            self._error = exc if isinstance(exc, OrgmoveError) else _translate(
                exc, cell=self.cell, what=f"stream {self.slot}"
            )

    def _feedback(self, cur: Any, *, force: bool = False, reply: bool = False) -> None:
        with self._lock:
            confirmed = self._confirmed
        if confirmed > self._sent_confirmed or force:
            # write = flush = apply: the applier reports only what it committed.
            cur.send_feedback(write_lsn=confirmed, flush_lsn=confirmed, apply_lsn=confirmed,
                              reply=reply, force=True)
            self._sent_confirmed = confirmed

    def _stream(self) -> None:
        conn = _replication_connection(self.dsn, cell=self.cell, application_name=self.application_name)
        try:
            cur = conn.cursor()
            options = {"proto_version": str(self.proto_version), "publication_names": self.publication,
                       "messages": "true"}
            try:
                cur.start_replication(slot_name=self.slot, decode=False, start_lsn=self.start_lsn,
                                      options=options, status_interval=self.status_interval_s)
            except psycopg2.Error as exc:
                raise _translate(exc, cell=self.cell, what=f"start streaming slot {self.slot}") from exc
            self._started.set()
            decoder = Decoder()
            last_ping = time.monotonic()
            while not self._stop.is_set():
                self._feedback(cur)
                msg = cur.read_message()
                if msg is None:
                    self._received = max(self._received, int(cur.wal_end))
                    now = time.monotonic()
                    if now - last_ping > 0.2 and self._queue.empty():
                        # Ask the server for a keepalive: its wal_end tells how far it has looked.
                        self._feedback(cur, force=True, reply=True)
                        last_ping = now
                    select.select([conn], [], [], 0.05)
                    continue
                item = StreamItem(int(msg.data_start), int(msg.wal_end), decoder.decode(msg.payload))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        # Keep the walsender from timing out us while the applier catches up.
                        self._feedback(cur, force=True)
                self._received = max(self._received, int(msg.data_start))
        finally:
            with contextlib.suppress(psycopg2.Error):
                conn.close()


@contextlib.contextmanager
def open_stream(dsn: str, **kwargs: Any) -> Iterator[ChangeStream]:
    stream = ChangeStream(dsn, **kwargs)
    with stream:
        yield stream
