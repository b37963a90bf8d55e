"""The Topology Service's move leases: one live move per organization, a fencing token that
strictly increases per organization, the fence (the organization turns read-only), the
compare-and-swap commit of every claim of the organization, abort, and the reaper of expired
leases.

Every transaction locks the organization row first, then the move, then the claims (the lock order
of :mod:`orgmove.topology.claims`), and checks the caller's fencing token against both the move's
and the organization's latest, so a stale mover changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from uuid import UUID

import psycopg
import psycopg.errors

from orgmove.topology.database import (
    Cursor,
    Database,
    get_cell,
    lock_org,
    move_from_row,
    owner_of,
    unknown_move,
)
from orgmove.topology.models import MAX_PAGE, Move, MoveBegin, ServiceError

log = logging.getLogger("orgmove.topology")


class MoveStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def begin_move(self, req: MoveBegin) -> Move:
        with self._db.transaction() as cur:
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
                    return move_from_row(prior)
            if req.from_cell == req.to_cell:
                raise ServiceError(400, "bad_request",
                                   f"the source and target cell are both {req.from_cell!r}",
                                   "move the organization to another cell")
            get_cell(cur, req.from_cell)
            get_cell(cur, req.to_cell)
            owner = owner_of(cur, req.org_id)
            if owner is None:
                raise ServiceError(
                    404, "unknown_organization",
                    f"organization {req.org_id} has no claim in the Topology Service",
                    "seed the claims of the cell that holds it, or check the id",
                )
            org = lock_org(cur, req.org_id)
            cur.execute(
                "SELECT *, lease_expires_at <= clock_timestamp() AS expired "
                "FROM topology.moves WHERE org_id = %s AND status IN ('begun', 'fenced') "
                "FOR UPDATE",
                (req.org_id,),
            )
            live = cur.fetchone()
            if live is not None:
                if live.pop("expired"):
                    self._abort(cur, move_from_row(live), "lease expired; taken over by a new move")
                else:
                    raise ServiceError(
                        409, "move_in_progress",
                        f"organization {req.org_id} is already being moved by move {live['id']} "
                        f"({live['from_cell']} -> {live['to_cell']}, {live['status']}, lease until "
                        f"{live['lease_expires_at'].isoformat()})",
                        "wait for that move to finish, or abort it (orgmove rollback) first",
                        details={"move_id": str(live["id"]), "status": live["status"]},
                    )
            owner = owner_of(cur, req.org_id)  # re-read under the organization lock
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
            return move_from_row(row)

    def renew_move(self, move_id: UUID, token: int, ttl_s: float) -> Move:
        with self._db.transaction() as cur:
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
            return move_from_row(row)

    def fence_move(self, move_id: UUID, token: int) -> Move:
        with self._db.transaction() as cur:
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
            return move_from_row(row)

    def commit_move(self, move_id: UUID, token: int, expected_owner: str) -> Move:
        with self._db.transaction() as cur:
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
            return move_from_row(out)

    def abort_move(self, move_id: UUID, token: int, reason: str | None = None) -> Move:
        with self._db.transaction() as cur:
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
        return move_from_row(row)

    def reap_expired_moves(self) -> int:
        """Abort live moves whose lease expired: the organization goes back to its source,
        writable. Runs under the same locks as commit, so it never races a commit."""
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT id FROM topology.moves WHERE status IN ('begun', 'fenced') "
                "AND lease_expires_at <= clock_timestamp()"
            )
            ids = [r["id"] for r in cur.fetchall()]
        reaped = 0
        for move_id in ids:
            with self._db.transaction() as cur:
                cur.execute("SELECT org_id FROM topology.moves WHERE id = %s", (move_id,))
                row = cur.fetchone()
                if row is None:
                    continue
                lock_org(cur, row["org_id"])
                cur.execute(
                    "SELECT * FROM topology.moves WHERE id = %s "
                    "AND status IN ('begun', 'fenced') AND lease_expires_at <= clock_timestamp() "
                    "FOR UPDATE",
                    (move_id,),
                )
                live = cur.fetchone()
                if live is not None:
                    self._abort(cur, move_from_row(live), "lease expired")
                    reaped += 1
        return reaped

    def get_move(self, move_id: UUID) -> Move:
        with self._db.transaction() as cur:
            cur.execute("SELECT * FROM topology.moves WHERE id = %s", (move_id,))
            row = cur.fetchone()
        if row is None:
            raise unknown_move(move_id)
        return move_from_row(row)

    def list_moves(self, org_id: str | None = None, limit: int = 100) -> list[Move]:
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT * FROM topology.moves "
                "WHERE %(org)s::text IS NULL OR org_id = %(org)s "
                "ORDER BY created_at DESC, fencing_token DESC LIMIT %(lim)s",
                {"org": org_id, "lim": max(1, min(limit, MAX_PAGE))},
            )
            return [move_from_row(r) for r in cur.fetchall()]

    # --- helpers -------------------------------------------------------------------------------

    def _lock_move(self, cur: Cursor, move_id: UUID, token: int) -> Move:
        """Lock the organization, then the move (the one lock order), and check the token."""
        cur.execute("SELECT org_id FROM topology.moves WHERE id = %s", (move_id,))
        row = cur.fetchone()
        if row is None:
            raise unknown_move(move_id)
        org = lock_org(cur, row["org_id"])
        cur.execute("SELECT * FROM topology.moves WHERE id = %s FOR UPDATE", (move_id,))
        locked = cur.fetchone()
        assert locked is not None
        move = move_from_row(locked)
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
