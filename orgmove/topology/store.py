"""The Topology Service's data model and its transactions, on its own PostgreSQL database.

Every mutation is one transaction. Concurrent callers are serialized by row locks taken in one
order (organization row, then move, then claims sorted by bucket), by version columns that every
change bumps, and by unique indexes (one claim per bucket, one live move per organization), so two
callers racing for the same thing cannot both win.

The API models live here too: the server returns them and the client parses them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, Literal
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orgmove.db import connect, is_transient

log = logging.getLogger("orgmove.topology")

BucketType = Literal["organization_id", "organization_path", "route", "user_login"]
SubjectType = Literal["organization", "group", "project", "user"]
ClaimStatus = Literal["ACTIVE", "LEASE_CREATING", "LEASE_DESTROYING"]
CellState = Literal["active", "draining", "offline"]
OrgState = Literal["active", "read_only"]
MoveStatus = Literal["begun", "fenced", "committed", "aborted"]
LeaseStatus = Literal["pending", "committed", "rolled_back"]

STALE_LEASE_SECONDS = 600  # GitLab: a lease older than 10 minutes is stale
MAX_BATCH = 5000
MAX_PAGE = 1000
SCHEMA_LOCK_KEY = 0x6F72676D6F7665  # pg_advisory_xact_lock key for schema creation ("orgmove")


# --- errors ----------------------------------------------------------------------------------


class ServiceError(Exception):
    """A refusal the HTTP layer turns into ``status`` + JSON ``{code, message, fix}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fix: str = "",
        *,
        retryable: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fix = fix
        self.retryable = retryable
        self.details = details or {}

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
            "retryable": self.retryable,
            "details": self.details,
        }


# --- API models ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bucket(_Model):
    type: BucketType
    value: str = Field(min_length=1, max_length=2048)


class Subject(_Model):
    type: SubjectType
    id: int


class Source(_Model):
    type: str = Field(min_length=1, max_length=200, description="Rails table, e.g. `routes`")
    rails_primary_key: int


class ClaimIn(_Model):
    """A record to create. ``organization_id`` links the claim to the organization that owns it
    (set automatically for ``organization_id`` buckets); a move transfers every linked claim."""

    bucket: Bucket
    subject: Subject
    source: Source
    organization_id: int | None = None

    @model_validator(mode="after")
    def _org_link(self) -> ClaimIn:
        if self.bucket.type == "organization_id":
            if not self.bucket.value.isdigit():
                raise ValueError("an organization_id bucket value must be a decimal id")
            org = int(self.bucket.value)
            if self.organization_id is not None and self.organization_id != org:
                raise ValueError("organization_id differs from the organization_id bucket value")
            self.organization_id = org
        return self


class Claim(_Model):
    uuid: UUID
    bucket: Bucket
    subject: Subject
    source: Source
    organization_id: int | None
    cell_id: str
    status: ClaimStatus
    lease_uuid: UUID | None
    created_at: datetime
    updated_at: datetime
    version: int


class DestroyRecord(BaseModel):
    """A record to destroy, named by its bucket (a full claim may be passed back as is)."""

    model_config = ConfigDict(extra="ignore")
    bucket: Bucket


class BeginUpdateRequest(_Model):
    cell_id: str
    create_records: list[ClaimIn] = Field(default_factory=list, max_length=MAX_BATCH)
    destroy_records: list[DestroyRecord] = Field(default_factory=list, max_length=MAX_BATCH)
    idempotency_key: str | None = Field(default=None, max_length=200)


class BatchRequest(_Model):
    cell_id: str
    create_records: list[ClaimIn] = Field(default_factory=list, max_length=MAX_BATCH)
    idempotency_key: str | None = Field(default=None, max_length=200)


class BeginUpdateResponse(_Model):
    lease_uuid: UUID
    cell_id: str
    status: LeaseStatus
    created: list[Claim]
    destroying: list[Claim]


class LeaseAction(_Model):
    cell_id: str


class Lease(_Model):
    uuid: UUID
    cell_id: str
    status: LeaseStatus
    created_at: datetime
    finished_at: datetime | None
    stale: bool = Field(description="pending for more than 10 minutes: the owning cell reconciles")
    claims: int


class ClaimPage(_Model):
    items: list[Claim]
    next_cursor: str | None


class LeasePage(_Model):
    items: list[Lease]
    next_cursor: str | None


class CellIn(_Model):
    address: str = Field(min_length=1, max_length=1000)
    state: CellState = "active"
    sequence_start: int | None = None
    sequence_end: int | None = None

    @model_validator(mode="after")
    def _range(self) -> CellIn:
        if (self.sequence_start is None) != (self.sequence_end is None):
            raise ValueError("give both sequence_start and sequence_end, or neither")
        if self.sequence_start is not None and self.sequence_end is not None:
            if self.sequence_start > self.sequence_end:
                raise ValueError("sequence_start is greater than sequence_end")
        return self


class Cell(_Model):
    name: str
    address: str
    state: CellState
    sequence_start: int | None
    sequence_end: int | None
    version: int
    created_at: datetime
    updated_at: datetime


class ClassifyRequest(_Model):
    type: BucketType
    value: str = Field(min_length=1, max_length=4096)


class Classification(_Model):
    action: Literal["proxy", "reject"]
    cell: str | None = None
    address: str | None = None
    org_id: int | None = None
    org_state: OrgState | None = None
    version: int | None = None
    bucket: Bucket | None = Field(default=None, description="the claim that matched")


class Organization(_Model):
    org_id: int
    state: OrgState
    owner_cell: str | None
    fencing_token: int
    version: int
    live_move_id: UUID | None
    updated_at: datetime


class MoveBegin(_Model):
    org_id: int
    from_cell: str
    to_cell: str
    lease_ttl_s: float = Field(gt=0, le=86400)
    idempotency_key: str | None = Field(default=None, max_length=200)


class MoveToken(_Model):
    token: int


class MoveRenew(_Model):
    token: int
    lease_ttl_s: float = Field(gt=0, le=86400)


class MoveCommit(_Model):
    token: int
    expected_owner: str


class MoveAbort(_Model):
    token: int
    reason: str | None = Field(default=None, max_length=1000)


class Move(_Model):
    move_id: UUID
    org_id: int
    from_cell: str
    to_cell: str
    status: MoveStatus
    fencing_token: int
    lease_expires_at: datetime
    created_at: datetime
    fenced_at: datetime | None
    committed_at: datetime | None
    aborted_at: datetime | None
    abort_reason: str | None
    claims_moved: int | None
    version: int


# --- connections -----------------------------------------------------------------------------

Cursor = psycopg.Cursor[dict[str, Any]]


class _Pool:
    """A small lock-protected pool of autocommit connections (psycopg_pool is not a dependency)."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._size = size
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> psycopg.Connection[Any]:
        return connect(
            self._dsn,
            cell="topology",
            application_name="orgmove-topology",
            autocommit=True,
            statement_timeout_s=30,
            lock_timeout_s=10,
        )

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            healthy = (
                not conn.closed
                and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            )
            with self._lock:
                keep = healthy and not self._closed and len(self._idle) < self._size
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _translate_db_error(exc: psycopg.Error) -> ServiceError:
    if is_transient(exc):
        return ServiceError(
            503,
            "busy",
            f"the Topology Service database is busy or unreachable ({type(exc).__name__})",
            "retry the request",
            retryable=True,
        )
    return ServiceError(
        500, "database_error", f"the Topology Service database failed: {type(exc).__name__}"
    )


# --- row mapping -----------------------------------------------------------------------------

def _claim(row: dict[str, Any]) -> Claim:
    return Claim(
        uuid=row["uuid"],
        bucket=Bucket(type=row["bucket_type"], value=row["bucket_value"]),
        subject=Subject(type=row["subject_type"], id=row["subject_id"]),
        source=Source(type=row["source_type"], rails_primary_key=row["source_rails_primary_key"]),
        organization_id=row["organization_id"],
        cell_id=row["cell_id"],
        status=row["status"],
        lease_uuid=row["lease_uuid"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def _move(row: dict[str, Any]) -> Move:
    data = {k: row[k] for k in Move.model_fields if k in row}
    data["move_id"] = row["id"]
    return Move.model_validate(data)


def _cell(row: dict[str, Any]) -> Cell:
    return Cell.model_validate(row)


def _cursor_value(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit():
        raise ServiceError(400, "bad_cursor", f"cursor {cursor!r} is not one this service issued",
                           "pass the next_cursor of the previous page, or no cursor")
    return int(cursor)


def route_prefixes(path: str) -> list[str]:
    """``a/b/-/issues`` -> ``['a', 'a/b', 'a/b/-', 'a/b/-/issues']``: the longest claimed prefix
    owns the request."""
    parts = [p for p in path.strip("/").split("/") if p]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


# --- the store -------------------------------------------------------------------------------


class Store:
    def __init__(self, dsn: str, *, pool_size: int = 8) -> None:
        self._pool = _Pool(dsn, pool_size)

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Cursor]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor(
                row_factory=dict_row
            ) as cur:
                yield cur
        except psycopg.Error as exc:
            raise _translate_db_error(exc) from exc

    def ensure_schema(self) -> None:
        script = resources.files("orgmove").joinpath("sql/topology_schema.sql").read_text("utf-8")
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute(script.encode())

    def ping(self) -> None:
        with self._tx() as cur:
            cur.execute("SELECT 1")

    # --- cells -------------------------------------------------------------------------------

    def register_cell(self, name: str, cell: CellIn) -> Cell:
        if not name or len(name) > 200:
            raise ServiceError(400, "bad_request", "a cell name is 1 to 200 characters")
        with self._tx() as cur:
            if cell.sequence_start is not None:
                cur.execute("LOCK TABLE topology.cells IN SHARE ROW EXCLUSIVE MODE")
                cur.execute(
                    "SELECT name, sequence_start, sequence_end FROM topology.cells "
                    "WHERE name <> %s AND sequence_start <= %s AND sequence_end >= %s",
                    (name, cell.sequence_end, cell.sequence_start),
                )
                clash = cur.fetchone()
                if clash:
                    raise ServiceError(
                        409, "sequence_overlap",
                        f"the id range {cell.sequence_start}..{cell.sequence_end} of cell {name!r} "
                        f"overlaps cell {clash['name']!r} ({clash['sequence_start']}.."
                        f"{clash['sequence_end']})",
                        "give each cell its own, non-overlapping id range",
                    )
            cur.execute(
                """
                INSERT INTO topology.cells AS c (name, address, state, sequence_start, sequence_end)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (name) DO UPDATE SET
                    address = EXCLUDED.address, state = EXCLUDED.state,
                    sequence_start = EXCLUDED.sequence_start, sequence_end = EXCLUDED.sequence_end,
                    version = c.version + 1, updated_at = clock_timestamp()
                WHERE (c.address, c.state, c.sequence_start, c.sequence_end) IS DISTINCT FROM
                      (EXCLUDED.address, EXCLUDED.state, EXCLUDED.sequence_start,
                       EXCLUDED.sequence_end)
                """,
                (name, cell.address, cell.state, cell.sequence_start, cell.sequence_end),
            )
            cur.execute("SELECT * FROM topology.cells WHERE name = %s", (name,))
            row = cur.fetchone()
            assert row is not None
            return _cell(row)

    def list_cells(self) -> list[Cell]:
        with self._tx() as cur:
            cur.execute("SELECT * FROM topology.cells ORDER BY name")
            return [_cell(r) for r in cur.fetchall()]

    def get_cell(self, name: str) -> Cell:
        with self._tx() as cur:
            return self._get_cell(cur, name)

    @staticmethod
    def _get_cell(cur: Cursor, name: str) -> Cell:
        cur.execute("SELECT * FROM topology.cells WHERE name = %s", (name,))
        row = cur.fetchone()
        if row is None:
            raise ServiceError(
                404, "unknown_cell", f"cell {name!r} is not registered in the Topology Service",
                f"register it first (PUT /v1/cells/{name})",
            )
        return _cell(row)

    # --- claims: lease first, commit later ------------------------------------------------------

    def begin_update(self, req: BeginUpdateRequest) -> BeginUpdateResponse:
        with self._tx() as cur:
            return self._begin_update(cur, req)

    def commit_update(self, lease_uuid: UUID, cell_id: str) -> Lease:
        with self._tx() as cur:
            return self._finish_update(cur, lease_uuid, cell_id, commit=True)

    def rollback_update(self, lease_uuid: UUID, cell_id: str) -> Lease:
        with self._tx() as cur:
            return self._finish_update(cur, lease_uuid, cell_id, commit=False)

    def create_claims(self, req: BatchRequest) -> list[Claim]:
        """BeginUpdate + CommitUpdate in one transaction (seeding, tests)."""
        with self._tx() as cur:
            begun = self._begin_update(
                cur,
                BeginUpdateRequest(
                    cell_id=req.cell_id,
                    create_records=req.create_records,
                    idempotency_key=req.idempotency_key,
                ),
            )
            self._finish_update(cur, begun.lease_uuid, req.cell_id, commit=True)
            uuids = [c.uuid for c in begun.created]
            cur.execute(
                "SELECT c.* FROM topology.claims c WHERE c.uuid = ANY(%s) ORDER BY c.seq",
                (uuids,),
            )
            return [_claim(r) for r in cur.fetchall()]

    def _lease_response(self, cur: Cursor, lease: dict[str, Any]) -> BeginUpdateResponse:
        cur.execute(
            "SELECT c.* FROM topology.claims c WHERE c.lease_uuid = %s ORDER BY c.seq",
            (lease["uuid"],),
        )
        rows = [_claim(r) for r in cur.fetchall()]
        return BeginUpdateResponse(
            lease_uuid=lease["uuid"],
            cell_id=lease["cell_id"],
            status=lease["status"],
            created=[c for c in rows if c.status == "LEASE_CREATING"],
            destroying=[c for c in rows if c.status == "LEASE_DESTROYING"],
        )

    def _begin_update(self, cur: Cursor, req: BeginUpdateRequest) -> BeginUpdateResponse:
        if req.idempotency_key:
            cur.execute(
                "SELECT * FROM topology.leases WHERE request_id = %s", (req.idempotency_key,)
            )
            prior = cur.fetchone()
            if prior is not None:
                if prior["cell_id"] != req.cell_id:
                    raise ServiceError(
                        409, "idempotency_key_reused",
                        "this idempotency key was used by another cell's request",
                        "use a fresh key for each distinct request",
                    )
                return self._lease_response(cur, prior)
        self._get_cell(cur, req.cell_id)
        if not req.create_records and not req.destroy_records:
            raise ServiceError(400, "empty_update", "the update names no records",
                               "give create_records and/or destroy_records")
        keys: list[tuple[str, str]] = [(r.bucket.type, r.bucket.value) for r in req.create_records]
        keys += [(r.bucket.type, r.bucket.value) for r in req.destroy_records]
        dupes = sorted({k for k in keys if keys.count(k) > 1}) if len(set(keys)) < len(keys) else []
        if dupes:
            raise ServiceError(
                400, "duplicate_record",
                "a claim appears more than once in the batch: "
                + ", ".join(f"{t}={v}" for t, v in dupes[:10]),
                "name each bucket at most once per update",
            )
        # Lock order: organization rows, then claims by bucket (commit_move takes the same).
        self._check_orgs_writable(cur, req.cell_id, req.create_records)
        ordered = sorted(set(keys))
        cur.execute(
            """
            SELECT c.* FROM topology.claims c
            WHERE (c.bucket_type, c.bucket_value) IN
                  (SELECT * FROM unnest(%s::text[], %s::text[]))
            ORDER BY c.bucket_type, c.bucket_value
            FOR UPDATE
            """,
            ([k[0] for k in ordered], [k[1] for k in ordered]),
        )
        existing = {(r["bucket_type"], r["bucket_value"]): _claim(r) for r in cur.fetchall()}

        taken: list[str] = []
        leased: list[str] = []
        for rec in req.create_records:
            found = existing.get((rec.bucket.type, rec.bucket.value))
            if found is None:
                continue
            label = f"{rec.bucket.type}={rec.bucket.value} (cell {found.cell_id})"
            (taken if found.status == "ACTIVE" else leased).append(label)
        missing: list[str] = []
        foreign: list[str] = []
        for drec in req.destroy_records:
            found = existing.get((drec.bucket.type, drec.bucket.value))
            label = f"{drec.bucket.type}={drec.bucket.value}"
            if found is None:
                missing.append(label)
            elif found.cell_id != req.cell_id:
                foreign.append(f"{label} (cell {found.cell_id})")
            elif found.status != "ACTIVE":
                leased.append(label)
        if taken:
            raise ServiceError(
                409, "claim_already_taken",
                "already taken: " + ", ".join(taken[:10]) + (" ..." if len(taken) > 10 else ""),
                "these buckets belong to someone else; pick other values",
                details={"buckets": taken},
            )
        if missing:
            raise ServiceError(
                404, "unknown_claim", "no such claim to destroy: " + ", ".join(missing[:10]),
                "list the claims of the cell (GET /v1/claims?cell_id=...) and destroy those",
                details={"buckets": missing},
            )
        if foreign:
            raise ServiceError(
                409, "wrong_cell",
                f"cell {req.cell_id!r} cannot destroy claims it does not own: "
                + ", ".join(foreign[:10]),
                "only the cell that owns a claim may destroy it",
                details={"buckets": foreign},
            )
        if leased:
            raise ServiceError(
                409, "claim_leased",
                "try again later: leased by a pending update: " + ", ".join(leased[:10]),
                "retry after the pending lease is committed or rolled back",
                retryable=True,
                details={"buckets": leased},
            )
        lease_uuid = uuid.uuid4()
        try:
            with cur.connection.transaction():
                cur.execute(
                    "INSERT INTO topology.leases (uuid, cell_id, request_id) VALUES (%s, %s, %s)",
                    (lease_uuid, req.cell_id, req.idempotency_key),
                )
                if req.create_records:
                    recs = req.create_records
                    cur.execute(
                        """
                        INSERT INTO topology.claims (uuid, bucket_type, bucket_value, subject_type,
                            subject_id, source_type, source_rails_primary_key, cell_id,
                            organization_id, status, lease_uuid)
                        SELECT u, bt, bv, st, si, srt, srk, %s, org, 'LEASE_CREATING', %s
                        FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::bigint[],
                                    %s::text[], %s::bigint[], %s::bigint[])
                             AS t(u, bt, bv, st, si, srt, srk, org)
                        """,
                        (
                            req.cell_id, lease_uuid,
                            [uuid.uuid4() for _ in recs],
                            [r.bucket.type for r in recs], [r.bucket.value for r in recs],
                            [r.subject.type for r in recs], [r.subject.id for r in recs],
                            [r.source.type for r in recs],
                            [r.source.rails_primary_key for r in recs],
                            [r.organization_id for r in recs],
                        ),
                    )
        except psycopg.errors.UniqueViolation as exc:
            # Someone inserted the same bucket (or the same idempotency key) concurrently: their
            # lease holds it now.
            raise ServiceError(
                409, "claim_leased",
                "try again later: a concurrent update took one of these buckets "
                f"({exc.diag.constraint_name})",
                "retry; a retry gets either the claim or an 'already taken' answer",
                retryable=True,
            ) from exc
        if req.destroy_records:
            cur.execute(
                """
                UPDATE topology.claims SET status = 'LEASE_DESTROYING', lease_uuid = %s,
                       version = version + 1, updated_at = clock_timestamp()
                WHERE (bucket_type, bucket_value) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
                """,
                (
                    lease_uuid,
                    [r.bucket.type for r in req.destroy_records],
                    [r.bucket.value for r in req.destroy_records],
                ),
            )
        cur.execute("SELECT * FROM topology.leases WHERE uuid = %s", (lease_uuid,))
        lease = cur.fetchone()
        assert lease is not None
        log.info(
            "lease %s begun by cell %s: %d to create, %d to destroy",
            lease_uuid, req.cell_id, len(req.create_records), len(req.destroy_records),
        )
        return self._lease_response(cur, lease)

    def _check_orgs_writable(self, cur: Cursor, cell_id: str, records: Sequence[ClaimIn]) -> None:
        """New claims of an organization go to the cell that owns it, and not while it is
        read-only (a move has fenced it)."""
        org_ids = sorted({r.organization_id for r in records if r.organization_id is not None})
        if not org_ids:
            return
        cur.execute(
            "SELECT id, state FROM topology.organizations WHERE id = ANY(%s) ORDER BY id FOR SHARE",
            (org_ids,),
        )
        states = {r["id"]: r["state"] for r in cur.fetchall()}
        cur.execute(
            "SELECT bucket_value, cell_id FROM topology.claims "
            "WHERE bucket_type = 'organization_id' AND bucket_value = ANY(%s)",
            ([str(o) for o in org_ids],),
        )
        owners = {int(r["bucket_value"]): r["cell_id"] for r in cur.fetchall()}
        for org_id in org_ids:
            owner = owners.get(org_id)
            if owner is not None and owner != cell_id:
                raise ServiceError(
                    409, "wrong_cell",
                    f"organization {org_id} belongs to cell {owner!r}, not {cell_id!r}",
                    "create the organization's claims from the cell that owns it",
                )
            if states.get(org_id) == "read_only":
                raise ServiceError(
                    409, "org_read_only",
                    f"try again later: organization {org_id} is read-only (a move is fencing it)",
                    "retry after the move commits or aborts",
                    retryable=True,
                )

    def _finish_update(
        self, cur: Cursor, lease_uuid: UUID, cell_id: str, *, commit: bool
    ) -> Lease:
        cur.execute("SELECT * FROM topology.leases WHERE uuid = %s FOR UPDATE", (lease_uuid,))
        lease = cur.fetchone()
        verb = "commit" if commit else "roll back"
        if lease is None:
            raise ServiceError(404, "unknown_lease", f"no lease {lease_uuid}",
                               "check the lease_uuid returned by BeginUpdate")
        if lease["cell_id"] != cell_id:
            raise ServiceError(
                409, "wrong_cell",
                f"lease {lease_uuid} belongs to cell {lease['cell_id']!r}, not {cell_id!r}",
                f"only cell {lease['cell_id']!r} may {verb} it",
            )
        done = "committed" if commit else "rolled_back"
        if lease["status"] == done:
            return self._lease(cur, lease_uuid)  # idempotent
        if lease["status"] != "pending":
            raise ServiceError(
                409, "lease_not_pending",
                f"cannot {verb} lease {lease_uuid}: it was already "
                f"{lease['status'].replace('_', ' ')}",
                "begin a new update",
            )
        if commit:
            cur.execute(
                """
                UPDATE topology.claims SET status = 'ACTIVE', lease_uuid = NULL,
                       version = version + 1, updated_at = clock_timestamp()
                WHERE lease_uuid = %s AND status = 'LEASE_CREATING'
                RETURNING organization_id
                """,
                (lease_uuid,),
            )
            orgs = sorted({r["organization_id"] for r in cur.fetchall() if r["organization_id"]})
            if orgs:
                cur.execute(
                    "INSERT INTO topology.organizations (id) SELECT unnest(%s::bigint[]) "
                    "ON CONFLICT (id) DO NOTHING",
                    (orgs,),
                )
            cur.execute(
                "DELETE FROM topology.claims WHERE lease_uuid = %s AND status = 'LEASE_DESTROYING'",
                (lease_uuid,),
            )
        else:
            cur.execute(
                "DELETE FROM topology.claims WHERE lease_uuid = %s AND status = 'LEASE_CREATING'",
                (lease_uuid,),
            )
            cur.execute(
                """
                UPDATE topology.claims SET status = 'ACTIVE', lease_uuid = NULL,
                       version = version + 1, updated_at = clock_timestamp()
                WHERE lease_uuid = %s AND status = 'LEASE_DESTROYING'
                """,
                (lease_uuid,),
            )
        cur.execute(
            "UPDATE topology.leases SET status = %s, finished_at = clock_timestamp() "
            "WHERE uuid = %s",
            (done, lease_uuid),
        )
        log.info("lease %s %s by cell %s", lease_uuid, done.replace("_", " "), cell_id)
        return self._lease(cur, lease_uuid)

    @staticmethod
    def _lease(cur: Cursor, lease_uuid: UUID) -> Lease:
        cur.execute(
            """
            SELECT l.uuid, l.cell_id, l.status, l.created_at, l.finished_at,
                   (l.status = 'pending'
                    AND l.created_at < clock_timestamp() - %s * interval '1 second')
                       AS stale,
                   (SELECT count(*) FROM topology.claims c WHERE c.lease_uuid = l.uuid) AS claims
            FROM topology.leases l WHERE l.uuid = %s
            """,
            (STALE_LEASE_SECONDS, lease_uuid),
        )
        row = cur.fetchone()
        assert row is not None
        return Lease.model_validate(row)

    def list_claims(
        self,
        *,
        cell_id: str | None = None,
        organization_id: int | None = None,
        bucket_type: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> ClaimPage:
        after = _cursor_value(cursor)
        limit = max(1, min(limit, MAX_PAGE))
        with self._tx() as cur:
            cur.execute(
                """
                SELECT c.* FROM topology.claims c
                WHERE c.seq > %(after)s
                  AND (%(cell)s::text IS NULL OR c.cell_id = %(cell)s)
                  AND (%(org)s::bigint IS NULL OR c.organization_id = %(org)s)
                  AND (%(bt)s::text IS NULL OR c.bucket_type = %(bt)s)
                  AND (%(st)s::text IS NULL OR c.status = %(st)s)
                ORDER BY c.seq LIMIT %(lim)s
                """,
                {"after": after, "cell": cell_id, "org": organization_id, "bt": bucket_type,
                 "st": status, "lim": limit + 1},
            )
            rows = cur.fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return ClaimPage(
            items=[_claim(r) for r in rows],
            next_cursor=str(rows[-1]["seq"]) if more and rows else None,
        )

    def list_leases(
        self,
        *,
        cell_id: str | None = None,
        status: str | None = "pending",
        cursor: str | None = None,
        limit: int = 100,
    ) -> LeasePage:
        after = _cursor_value(cursor)
        limit = max(1, min(limit, MAX_PAGE))
        with self._tx() as cur:
            cur.execute(
                """
                SELECT l.uuid, l.seq FROM topology.leases l
                WHERE l.seq > %(after)s
                  AND (%(cell)s::text IS NULL OR l.cell_id = %(cell)s)
                  AND (%(st)s::text IS NULL OR l.status = %(st)s)
                ORDER BY l.seq LIMIT %(lim)s
                """,
                {"after": after, "cell": cell_id, "st": status, "lim": limit + 1},
            )
            rows = cur.fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            items = [self._lease(cur, r["uuid"]) for r in rows]
        return LeasePage(items=items, next_cursor=str(rows[-1]["seq"]) if more and rows else None)

    # --- classify ------------------------------------------------------------------------------

    def classify(self, bucket_type: str, value: str) -> Classification:
        if bucket_type == "route":
            candidates = route_prefixes(value)
        else:
            candidates = [value]
        if not candidates:
            return Classification(action="reject")
        with self._tx() as cur:
            cur.execute(
                """
                SELECT c.*, cells.address, o.state AS org_state
                FROM topology.claims c
                JOIN topology.cells ON cells.name = c.cell_id
                LEFT JOIN topology.organizations o ON o.id = c.organization_id
                WHERE c.bucket_type = %s AND c.bucket_value = ANY(%s)
                  AND c.status <> 'LEASE_CREATING'
                ORDER BY length(c.bucket_value) DESC LIMIT 1
                """,
                (bucket_type, candidates),
            )
            row = cur.fetchone()
        if row is None:
            return Classification(action="reject")
        org_id = row["organization_id"]
        return Classification(
            action="proxy",
            cell=row["cell_id"],
            address=row["address"],
            org_id=org_id,
            org_state=(row["org_state"] or "active") if org_id is not None else None,
            version=row["version"],
            bucket=Bucket(type=row["bucket_type"], value=row["bucket_value"]),
        )

    # --- organizations -------------------------------------------------------------------------

    def get_organization(self, org_id: int) -> Organization:
        with self._tx() as cur:
            cur.execute(
                """
                SELECT i.id AS org_id, coalesce(o.state, 'active') AS state,
                       c.cell_id AS owner_cell, coalesce(o.fencing_token, 0) AS fencing_token,
                       coalesce(o.version, 0) AS version,
                       coalesce(o.updated_at, c.updated_at) AS updated_at,
                       (SELECT m.id FROM topology.moves m
                        WHERE m.org_id = i.id AND m.status IN ('begun', 'fenced')) AS live_move_id,
                       o.id IS NOT NULL OR c.uuid IS NOT NULL AS known
                FROM (SELECT %s::bigint AS id) i
                LEFT JOIN topology.organizations o ON o.id = i.id
                LEFT JOIN topology.claims c
                       ON c.bucket_type = 'organization_id' AND c.bucket_value = i.id::text
                      AND c.status <> 'LEASE_CREATING'
                """,
                (org_id,),
            )
            row = cur.fetchone()
        if row is None or not row.pop("known"):
            raise ServiceError(
                404, "unknown_organization",
                f"organization {org_id} has no claim in the Topology Service",
                "seed the claims of the cell that holds it (orgmove sandbox seed) or check the id",
            )
        return Organization.model_validate(row)

    # --- moves ---------------------------------------------------------------------------------

    def begin_move(self, req: MoveBegin) -> Move:
        with self._tx() as cur:
            if req.idempotency_key:
                cur.execute(
                    "SELECT * FROM topology.moves WHERE request_id = %s",
                    (req.idempotency_key,),
                )
                prior = cur.fetchone()
                if prior is not None:
                    if (prior["org_id"], prior["from_cell"], prior["to_cell"]) != (
                        req.org_id, req.from_cell, req.to_cell
                    ):
                        raise ServiceError(
                            409, "idempotency_key_reused",
                            "this idempotency key was used for another move",
                            "use a fresh key for each distinct move",
                        )
                    return _move(prior)
            if req.from_cell == req.to_cell:
                raise ServiceError(400, "bad_request",
                                   f"the source and target cell are both {req.from_cell!r}",
                                   "move the organization to another cell")
            self._get_cell(cur, req.from_cell)
            self._get_cell(cur, req.to_cell)
            owner = self._owner(cur, req.org_id)
            if owner is None:
                raise ServiceError(
                    404, "unknown_organization",
                    f"organization {req.org_id} has no claim in the Topology Service",
                    "seed the claims of the cell that holds it, or check the id",
                )
            org = self._lock_org(cur, req.org_id)
            cur.execute(
                "SELECT *, lease_expires_at <= clock_timestamp() AS expired "
                "FROM topology.moves WHERE org_id = %s AND status IN ('begun', 'fenced') "
                "FOR UPDATE",
                (req.org_id,),
            )
            live = cur.fetchone()
            if live is not None:
                if live.pop("expired"):
                    self._abort(cur, _move(live), "lease expired; taken over by a new move")
                else:
                    raise ServiceError(
                        409, "move_in_progress",
                        f"organization {req.org_id} is already being moved by move {live['id']} "
                        f"({live['from_cell']} -> {live['to_cell']}, {live['status']}, lease until "
                        f"{live['lease_expires_at'].isoformat()})",
                        "wait for that move to finish, or abort it (orgmove rollback) first",
                        details={"move_id": str(live["id"]), "status": live["status"]},
                    )
            owner = self._owner(cur, req.org_id)  # re-read under the organization lock
            if owner != req.from_cell:
                raise ServiceError(
                    409, "owner_mismatch",
                    f"organization {req.org_id} belongs to cell {owner!r}, not {req.from_cell!r}",
                    f"move it from {owner!r}" if owner else "seed its claims first",
                    details={"owner": owner},
                )
            token = int(org["fencing_token"]) + 1
            cur.execute(
                "UPDATE topology.organizations SET fencing_token = %s, version = version + 1, "
                "updated_at = clock_timestamp() WHERE id = %s",
                (token, req.org_id),
            )
            move_id = uuid.uuid4()
            try:
                with cur.connection.transaction():
                    cur.execute(
                        """
                        INSERT INTO topology.moves (id, org_id, from_cell, to_cell, status,
                            fencing_token, request_id, lease_expires_at)
                        VALUES (%s, %s, %s, %s, 'begun', %s, %s,
                                clock_timestamp() + %s * interval '1 second')
                        RETURNING *
                        """,
                        (move_id, req.org_id, req.from_cell, req.to_cell, token,
                         req.idempotency_key, req.lease_ttl_s),
                    )
            except psycopg.errors.UniqueViolation as exc:
                raise ServiceError(
                    409, "move_in_progress",
                    f"organization {req.org_id} is already being moved",
                    "wait for that move to finish, or abort it first",
                ) from exc
            row = cur.fetchone()
            assert row is not None
            log.info("move %s begun: org %s %s -> %s, fencing token %s",
                     move_id, req.org_id, req.from_cell, req.to_cell, token)
            return _move(row)

    def renew_move(self, move_id: UUID, token: int, ttl_s: float) -> Move:
        with self._tx() as cur:
            move = self._lock_move(cur, move_id, token)
            self._check_live(cur, move)
            cur.execute(
                """
                UPDATE topology.moves
                   SET lease_expires_at = clock_timestamp() + %s * interval '1 second',
                       version = version + 1, updated_at = clock_timestamp()
                WHERE id = %s RETURNING *
                """,
                (ttl_s, move_id),
            )
            row = cur.fetchone()
            assert row is not None
            return _move(row)

    def fence_move(self, move_id: UUID, token: int) -> Move:
        with self._tx() as cur:
            move = self._lock_move(cur, move_id, token)
            self._check_live(cur, move)
            if move.status == "fenced":
                return move  # idempotent
            cur.execute(
                "UPDATE topology.organizations SET state = 'read_only', version = version + 1, "
                "updated_at = clock_timestamp() WHERE id = %s",
                (move.org_id,),
            )
            cur.execute(
                """
                UPDATE topology.moves SET status = 'fenced', fenced_at = clock_timestamp(),
                       version = version + 1, updated_at = clock_timestamp()
                WHERE id = %s RETURNING *
                """,
                (move_id,),
            )
            row = cur.fetchone()
            assert row is not None
            log.info("move %s fenced: org %s is read-only", move_id, move.org_id)
            return _move(row)

    def commit_move(self, move_id: UUID, token: int, expected_owner: str) -> Move:
        with self._tx() as cur:
            move = self._lock_move(cur, move_id, token)
            if move.status == "committed":
                return move  # idempotent: a retry after a lost answer
            self._check_live(cur, move)
            if move.status != "fenced":
                raise ServiceError(
                    409, "move_not_fenced",
                    f"move {move_id} has not fenced organization {move.org_id}",
                    "fence the organization (read-only) and drain it before the flip",
                )
            cur.execute(
                "SELECT cell_id FROM topology.claims WHERE bucket_type = 'organization_id' "
                "AND bucket_value = %s FOR UPDATE",
                (str(move.org_id),),
            )
            row = cur.fetchone()
            owner = row["cell_id"] if row else None
            if owner != expected_owner or owner != move.from_cell:
                raise ServiceError(
                    409, "owner_mismatch",
                    f"organization {move.org_id} belongs to cell {owner!r}; the commit expected "
                    f"{expected_owner!r} (move {move.from_cell} -> {move.to_cell})",
                    "nothing was changed; check the topology (orgmove status) before retrying",
                    details={"owner": owner},
                )
            cur.execute(
                "SELECT bucket_type, bucket_value, status FROM topology.claims "
                "WHERE organization_id = %s AND status <> 'ACTIVE' LIMIT 10",
                (move.org_id,),
            )
            pending = cur.fetchall()
            if pending:
                raise ServiceError(
                    409, "claim_leased",
                    f"try again later: organization {move.org_id} has claims in pending updates: "
                    + ", ".join(f"{r['bucket_type']}={r['bucket_value']} ({r['status']})"
                                for r in pending),
                    "wait until the owning cell commits or rolls back its lease, then retry",
                    retryable=True,
                )
            cur.execute(
                """
                UPDATE topology.claims SET cell_id = %s, version = version + 1,
                       updated_at = clock_timestamp()
                WHERE organization_id = %s
                """,
                (move.to_cell, move.org_id),
            )
            moved = cur.rowcount
            cur.execute(
                "UPDATE topology.organizations SET state = 'active', version = version + 1, "
                "updated_at = clock_timestamp() WHERE id = %s",
                (move.org_id,),
            )
            cur.execute(
                """
                UPDATE topology.moves SET status = 'committed', committed_at = clock_timestamp(),
                       claims_moved = %s, version = version + 1, updated_at = clock_timestamp()
                WHERE id = %s RETURNING *
                """,
                (moved, move_id),
            )
            out = cur.fetchone()
            assert out is not None
            log.info("move %s committed: org %s now on %s (%d claims)",
                     move_id, move.org_id, move.to_cell, moved)
            return _move(out)

    def abort_move(self, move_id: UUID, token: int, reason: str | None = None) -> Move:
        with self._tx() as cur:
            move = self._lock_move(cur, move_id, token)
            if move.status == "aborted":
                return move  # idempotent
            if move.status == "committed":
                raise ServiceError(
                    409, "move_finished",
                    f"move {move_id} is already committed: organization {move.org_id} is on "
                    f"{move.to_cell}",
                    "to undo it, move the organization back with a new move",
                )
            return self._abort(cur, move, reason or "aborted by the mover")

    def _abort(self, cur: Cursor, move: Move, reason: str) -> Move:
        cur.execute(
            "UPDATE topology.organizations SET state = 'active', version = version + 1, "
            "updated_at = clock_timestamp() WHERE id = %s AND fencing_token = %s",
            (move.org_id, move.fencing_token),
        )
        cur.execute(
            """
            UPDATE topology.moves SET status = 'aborted', aborted_at = clock_timestamp(),
                   abort_reason = %s, version = version + 1, updated_at = clock_timestamp()
            WHERE id = %s RETURNING *
            """,
            (reason, move.move_id),
        )
        row = cur.fetchone()
        assert row is not None
        log.info("move %s aborted (%s): org %s stays on %s",
                 move.move_id, reason, move.org_id, move.from_cell)
        return _move(row)

    def reap_expired_moves(self) -> int:
        """Abort live moves whose lease expired: the organization goes back to its source,
        writable. Runs under the same locks as commit, so it never races a commit."""
        with self._tx() as cur:
            cur.execute(
                "SELECT id FROM topology.moves WHERE status IN ('begun', 'fenced') "
                "AND lease_expires_at <= clock_timestamp()"
            )
            ids = [r["id"] for r in cur.fetchall()]
        reaped = 0
        for move_id in ids:
            with self._tx() as cur:
                cur.execute("SELECT org_id FROM topology.moves WHERE id = %s", (move_id,))
                row = cur.fetchone()
                if row is None:
                    continue
                self._lock_org(cur, row["org_id"])
                cur.execute(
                    "SELECT * FROM topology.moves WHERE id = %s "
                    "AND status IN ('begun', 'fenced') AND lease_expires_at <= clock_timestamp() "
                    "FOR UPDATE",
                    (move_id,),
                )
                live = cur.fetchone()
                if live is not None:
                    self._abort(cur, _move(live), "lease expired")
                    reaped += 1
        return reaped

    def get_move(self, move_id: UUID) -> Move:
        with self._tx() as cur:
            cur.execute("SELECT * FROM topology.moves WHERE id = %s", (move_id,))
            row = cur.fetchone()
        if row is None:
            raise ServiceError(404, "unknown_move", f"no move {move_id}",
                               "list the organization's moves: GET /v1/moves?org_id=...")
        return _move(row)

    def list_moves(self, org_id: int | None = None, limit: int = 100) -> list[Move]:
        with self._tx() as cur:
            cur.execute(
                "SELECT * FROM topology.moves "
                "WHERE %(org)s::bigint IS NULL OR org_id = %(org)s "
                "ORDER BY created_at DESC, fencing_token DESC LIMIT %(lim)s",
                {"org": org_id, "lim": max(1, min(limit, MAX_PAGE))},
            )
            return [_move(r) for r in cur.fetchall()]

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _owner(cur: Cursor, org_id: int) -> str | None:
        cur.execute(
            "SELECT cell_id FROM topology.claims WHERE bucket_type = 'organization_id' "
            "AND bucket_value = %s AND status <> 'LEASE_CREATING'",
            (str(org_id),),
        )
        row = cur.fetchone()
        return str(row["cell_id"]) if row else None

    @staticmethod
    def _lock_org(cur: Cursor, org_id: int) -> dict[str, Any]:
        cur.execute(
            "INSERT INTO topology.organizations (id) VALUES (%s) ON CONFLICT (id) DO NOTHING",
            (org_id,),
        )
        cur.execute("SELECT * FROM topology.organizations WHERE id = %s FOR UPDATE", (org_id,))
        row = cur.fetchone()
        assert row is not None
        return row

    def _lock_move(self, cur: Cursor, move_id: UUID, token: int) -> Move:
        """Lock the organization, then the move (the one lock order), and check the token."""
        cur.execute("SELECT org_id FROM topology.moves WHERE id = %s", (move_id,))
        row = cur.fetchone()
        if row is None:
            raise ServiceError(404, "unknown_move", f"no move {move_id}",
                               "list the organization's moves: GET /v1/moves?org_id=...")
        org = self._lock_org(cur, row["org_id"])
        cur.execute("SELECT * FROM topology.moves WHERE id = %s FOR UPDATE", (move_id,))
        locked = cur.fetchone()
        assert locked is not None
        move = _move(locked)
        if token != move.fencing_token or token != org["fencing_token"]:
            raise ServiceError(
                409, "stale_token",
                f"fencing token {token} is stale for move {move_id} of organization {move.org_id} "
                f"(move token {move.fencing_token}, latest token {org['fencing_token']})",
                "nothing was changed; another move holds the organization now: re-read the move "
                "state (orgmove status) before doing anything",
                details={"latest_token": org["fencing_token"]},
            )
        return move

    @staticmethod
    def _check_live(cur: Cursor, move: Move) -> None:
        if move.status in ("committed", "aborted"):
            raise ServiceError(
                409, "move_finished",
                f"move {move.move_id} is already {move.status}"
                + (f" ({move.abort_reason})" if move.abort_reason else ""),
                "nothing was changed; begin a new move if the organization still has to move",
                details={"status": move.status},
            )
        cur.execute(
            "SELECT lease_expires_at <= clock_timestamp() AS expired FROM topology.moves "
            "WHERE id = %s",
            (move.move_id,),
        )
        row = cur.fetchone()
        if row is not None and row["expired"]:
            raise ServiceError(
                410, "lease_expired",
                f"the lease of move {move.move_id} expired at {move.lease_expires_at.isoformat()}",
                "nothing was changed; abort this move and begin a new one (renew the lease "
                "more often than its TTL)",
            )
