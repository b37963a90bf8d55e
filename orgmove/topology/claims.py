"""The Topology Service's cells, claims and leases (GitLab's BeginUpdate / CommitUpdate /
RollbackUpdate, ListRecords, ListLeases), classify and the organizations' state.

Every mutation is one transaction. Concurrent callers are serialized by row locks taken in one
order (organization rows, then claims sorted by bucket: :mod:`orgmove.topology.moves` takes the
same), by version columns that every change bumps, and by the unique index on the bucket (one claim
per bucket), so two callers racing for the same bucket cannot both win.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors

from orgmove.topology.database import (
    Cursor,
    Database,
    cell_from_row,
    claim_from_row,
    cursor_value,
    get_cell,
)
from orgmove.topology.models import (
    MAX_PAGE,
    STALE_LEASE_SECONDS,
    BatchRequest,
    BeginUpdateRequest,
    BeginUpdateResponse,
    Bucket,
    Cell,
    CellIn,
    Claim,
    ClaimIn,
    ClaimPage,
    Classification,
    Lease,
    LeasePage,
    Organization,
    ServiceError,
    check_cell_name,
    check_unique_buckets,
    route_prefixes,
)

log = logging.getLogger("orgmove.topology")


class ClaimStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- cells -------------------------------------------------------------------------------

    def register_cell(self, name: str, cell: CellIn) -> Cell:
        check_cell_name(name)
        with self._db.transaction() as cur:
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
            return cell_from_row(row)

    def list_cells(self) -> list[Cell]:
        with self._db.transaction() as cur:
            cur.execute("SELECT * FROM topology.cells ORDER BY name")
            return [cell_from_row(r) for r in cur.fetchall()]

    def get_cell(self, name: str) -> Cell:
        with self._db.transaction() as cur:
            return get_cell(cur, name)

    # --- claims: lease first, commit later ------------------------------------------------------

    def begin_update(self, req: BeginUpdateRequest) -> BeginUpdateResponse:
        with self._db.transaction() as cur:
            return self._begin_update(cur, req)

    def commit_update(self, lease_uuid: UUID, cell_id: str) -> Lease:
        with self._db.transaction() as cur:
            return self._finish_update(cur, lease_uuid, cell_id, commit=True)

    def rollback_update(self, lease_uuid: UUID, cell_id: str) -> Lease:
        with self._db.transaction() as cur:
            return self._finish_update(cur, lease_uuid, cell_id, commit=False)

    def create_claims(self, req: BatchRequest) -> list[Claim]:
        """BeginUpdate + CommitUpdate in one transaction (seeding, tests)."""
        with self._db.transaction() as cur:
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
            return [claim_from_row(r) for r in cur.fetchall()]

    def _lease_response(self, cur: Cursor, lease: dict[str, Any]) -> BeginUpdateResponse:
        cur.execute(
            "SELECT c.* FROM topology.claims c WHERE c.lease_uuid = %s ORDER BY c.seq",
            (lease["uuid"],),
        )
        rows = [claim_from_row(r) for r in cur.fetchall()]
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
        get_cell(cur, req.cell_id)
        if not req.create_records and not req.destroy_records:
            raise ServiceError(400, "empty_update", "the update names no records",
                               "give create_records and/or destroy_records")
        keys: list[tuple[str, str]] = [(r.bucket.type, r.bucket.value) for r in req.create_records]
        keys += [(r.bucket.type, r.bucket.value) for r in req.destroy_records]
        check_unique_buckets(keys)
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
        existing = {(r["bucket_type"], r["bucket_value"]): claim_from_row(r) for r in cur.fetchall()}

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
                                    %s::text[], %s::bigint[], %s::text[])
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
        # Byte order here and COLLATE "C" below: one lock order for text keys whatever the locale.
        org_ids = sorted({r.organization_id for r in records if r.organization_id is not None})
        if not org_ids:
            return
        cur.execute(
            "SELECT id, state FROM topology.organizations WHERE id = ANY(%s::text[]) "
            'ORDER BY id COLLATE "C" FOR SHARE',
            (org_ids,),
        )
        states = {r["id"]: r["state"] for r in cur.fetchall()}
        cur.execute(
            "SELECT bucket_value, cell_id FROM topology.claims "
            "WHERE bucket_type = 'organization_id' AND bucket_value = ANY(%s)",
            (org_ids,),
        )
        owners = {r["bucket_value"]: r["cell_id"] for r in cur.fetchall()}
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
                    "INSERT INTO topology.organizations (id) SELECT unnest(%s::text[]) "
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
        organization_id: str | None = None,
        bucket_type: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> ClaimPage:
        after = cursor_value(cursor)
        limit = max(1, min(limit, MAX_PAGE))
        with self._db.transaction() as cur:
            cur.execute(
                """
                SELECT c.* FROM topology.claims c
                WHERE c.seq > %(after)s
                  AND (%(cell)s::text IS NULL OR c.cell_id = %(cell)s)
                  AND (%(org)s::text IS NULL OR c.organization_id = %(org)s)
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
            items=[claim_from_row(r) for r in rows],
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
        after = cursor_value(cursor)
        limit = max(1, min(limit, MAX_PAGE))
        with self._db.transaction() as cur:
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
        with self._db.transaction() as cur:
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

    def get_organization(self, org_id: str) -> Organization:
        with self._db.transaction() as cur:
            cur.execute(
                """
                SELECT i.id AS org_id, coalesce(o.state, 'active') AS state,
                       c.cell_id AS owner_cell, coalesce(o.fencing_token, 0) AS fencing_token,
                       coalesce(o.version, 0) AS version,
                       coalesce(o.updated_at, c.updated_at) AS updated_at,
                       (SELECT m.id FROM topology.moves m
                        WHERE m.org_id = i.id AND m.status IN ('begun', 'fenced')) AS live_move_id,
                       o.id IS NOT NULL OR c.uuid IS NOT NULL AS known
                FROM (SELECT %s::text AS id) i
                LEFT JOIN topology.organizations o ON o.id = i.id
                LEFT JOIN topology.claims c
                       ON c.bucket_type = 'organization_id' AND c.bucket_value = i.id
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
