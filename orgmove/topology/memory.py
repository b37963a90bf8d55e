"""An in-memory :class:`~orgmove.topology.api.TopologyAPI` for the pure tests: the semantics of the
real service's move leases without a database or HTTP.

The same rules as :mod:`orgmove.topology.moves` and :mod:`orgmove.topology.claims`, on plain
dictionaries under one lock (each method is one "transaction"): one live move per organization, a
fencing token that strictly increases per organization, a lease that expires by an injectable
clock (an expired lease is refused with 410 and taken over by the next move), the fence, and a
compare-and-swap commit refused on a stale token or a wrong expected owner. Refusals raise the
errors the HTTP client raises for the same answer (:func:`orgmove.topology.api.refusal`).

Claims are created committed at once (``create_claims``); the two-step BeginUpdate / CommitUpdate
leases, classify and paging are the real service's alone.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from pydantic import ValidationError

from orgmove.errors import OrgmoveError, UnknownOrganization
from orgmove.topology.api import refusal
from orgmove.topology.models import (
    LIVE_MOVE_STATUSES,
    Cell,
    CellIn,
    Claim,
    ClaimIn,
    Move,
    MoveBegin,
    MoveRenew,
    Organization,
    OrgState,
    ServiceError,
    check_cell_name,
    check_unique_buckets,
    org_key,
    org_sort_key,
)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock the test moves: ``advance(seconds)``; starts at a fixed instant."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


@dataclass
class _Org:
    state: OrgState = "active"
    fencing_token: int = 0
    version: int = 1
    updated_at: datetime = field(default_factory=utc_now)


def _bad_request(exc: ValidationError) -> OrgmoveError:
    summary = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5]
    )
    return refusal("bad_request", 422, f"invalid request: {summary}", "correct the request")


@contextlib.contextmanager
def _as_refusal() -> Iterator[None]:
    """A shared argument check's ServiceError, raised as the client raises the service's answer."""
    try:
        yield
    except ServiceError as exc:
        raise refusal(exc.code, exc.status, exc.message, exc.fix, retryable=exc.retryable,
                      details=exc.details) from None


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise refusal("bad_request", 422, f"invalid request: {value!r} is not a UUID",
                      "correct the request") from None


class MemoryTopology:
    """The Topology Service in a dictionary (see the module docstring)."""

    def __init__(self, clock: Clock = utc_now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._cells: dict[str, Cell] = {}
        self._claims: dict[tuple[str, str], Claim] = {}
        self._seq: dict[uuid.UUID, int] = {}
        self._orgs: dict[str, _Org] = {}
        self._moves: dict[uuid.UUID, Move] = {}
        self._move_keys: dict[str, uuid.UUID] = {}
        self._claim_keys: dict[str, list[Claim]] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release; the state survives, like the service's database."""

    # --- cells and claims ----------------------------------------------------------------------

    def register_cell(
        self,
        name: str,
        address: str,
        *,
        state: str = "active",
        sequence_start: int | None = None,
        sequence_end: int | None = None,
    ) -> Cell:
        try:
            cell = CellIn.model_validate({"address": address, "state": state,
                                          "sequence_start": sequence_start,
                                          "sequence_end": sequence_end})
        except ValidationError as exc:
            raise _bad_request(exc) from None
        with _as_refusal():
            check_cell_name(name)
        with self._lock:
            now = self.clock()
            if cell.sequence_start is not None and cell.sequence_end is not None:
                for other in self._cells.values():
                    if (other.name != name and other.sequence_start is not None
                            and other.sequence_end is not None
                            and other.sequence_start <= cell.sequence_end
                            and other.sequence_end >= cell.sequence_start):
                        raise refusal(
                            "sequence_overlap", 409,
                            f"the id range {cell.sequence_start}..{cell.sequence_end} of cell "
                            f"{name!r} overlaps cell {other.name!r} ({other.sequence_start}.."
                            f"{other.sequence_end})",
                            "give each cell its own, non-overlapping id range",
                        )
            old = self._cells.get(name)
            fields = {"address": cell.address, "state": cell.state,
                      "sequence_start": cell.sequence_start, "sequence_end": cell.sequence_end}
            if old is None:
                self._cells[name] = Cell(name=name, version=1, created_at=now, updated_at=now,
                                         **fields)
            elif old.model_dump(include=set(fields)) != fields:
                self._cells[name] = old.model_copy(
                    update={**fields, "version": old.version + 1, "updated_at": now})
            return self._cells[name].model_copy()

    def create_claims(
        self,
        cell_id: str,
        records: Iterable[ClaimIn | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[Claim]:
        try:
            recs = [r if isinstance(r, ClaimIn) else ClaimIn.model_validate(r) for r in records]
        except ValidationError as exc:
            raise _bad_request(exc) from None
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._claim_keys:
                return [c.model_copy() for c in self._claim_keys[idempotency_key]]
            self._cell(cell_id)
            if not recs:
                raise refusal("empty_update", 400, "the update names no records",
                              "give create_records and/or destroy_records")
            keys = [(r.bucket.type, r.bucket.value) for r in recs]
            with _as_refusal():
                check_unique_buckets(keys)
            for org_id in sorted({r.organization_id for r in recs if r.organization_id is not None},
                                 key=org_sort_key):
                owner = self._owner(org_id)
                if owner is not None and owner != cell_id:
                    raise refusal("wrong_cell", 409,
                                  f"organization {org_id} belongs to cell {owner!r}, not {cell_id!r}",
                                  "create the organization's claims from the cell that owns it")
                org = self._orgs.get(org_id)
                if org is not None and org.state == "read_only":
                    raise refusal("org_read_only", 409,
                                  f"try again later: organization {org_id} is read-only (a move "
                                  "is fencing it)", "retry after the move commits or aborts",
                                  retryable=True)
            taken = [f"{t}={v} (cell {self._claims[(t, v)].cell_id})" for t, v in keys
                     if (t, v) in self._claims]
            if taken:
                raise refusal("claim_already_taken", 409, "already taken: " + ", ".join(taken[:10]),
                              "these buckets belong to someone else; pick other values",
                              details={"buckets": taken})
            now = self.clock()
            created = []
            for rec in recs:
                claim = Claim(uuid=uuid.uuid4(), bucket=rec.bucket, subject=rec.subject,
                              source=rec.source, organization_id=rec.organization_id,
                              cell_id=cell_id, status="ACTIVE", lease_uuid=None, created_at=now,
                              updated_at=now, version=1)
                self._claims[(rec.bucket.type, rec.bucket.value)] = claim
                self._seq[claim.uuid] = len(self._seq) + 1
                if rec.organization_id is not None:
                    self._orgs.setdefault(rec.organization_id, _Org(updated_at=now))
                created.append(claim)
            if idempotency_key is not None:
                self._claim_keys[idempotency_key] = created
            return [c.model_copy() for c in created]

    def iter_claims(self, *, page_size: int = 500, **filters: Any) -> Iterator[Claim]:
        wanted = {k: v for k, v in filters.items() if v is not None}
        if "organization_id" in wanted:
            wanted["organization_id"] = org_key(wanted["organization_id"])
        unknown = set(wanted) - {"cell_id", "organization_id", "bucket_type", "status"}
        if unknown:
            raise TypeError(f"unknown claim filters: {sorted(unknown)}")
        with self._lock:
            claims = sorted(self._claims.values(), key=lambda c: self._seq[c.uuid])
            found = [c.model_copy() for c in claims if all(
                (c.bucket.type if k == "bucket_type" else getattr(c, k)) == v
                for k, v in wanted.items())]
        yield from found

    # --- organizations -------------------------------------------------------------------------

    def get_organization(self, org_id: int | str) -> Organization:
        key = org_key(org_id)
        with self._lock:
            return self._organization(key)

    def owner_of_org(self, org_id: int | str) -> str | None:
        try:
            return self.get_organization(org_id).owner_cell
        except UnknownOrganization:
            return None

    # --- move leases ---------------------------------------------------------------------------

    def begin_move(
        self,
        org_id: int | str,
        from_cell: str,
        to_cell: str,
        lease_ttl_s: float,
        *,
        idempotency_key: str | None = None,
    ) -> Move:
        try:
            req = MoveBegin(org_id=org_key(org_id), from_cell=from_cell, to_cell=to_cell,
                            lease_ttl_s=lease_ttl_s, idempotency_key=idempotency_key)
        except ValidationError as exc:
            raise _bad_request(exc) from None
        with self._lock:
            if req.idempotency_key and req.idempotency_key in self._move_keys:
                prior = self._moves[self._move_keys[req.idempotency_key]]
                if (prior.org_id, prior.from_cell, prior.to_cell) != (
                        req.org_id, req.from_cell, req.to_cell):
                    raise refusal("idempotency_key_reused", 409,
                                  "this idempotency key was used for another move",
                                  "use a fresh key for each distinct move")
                return prior.model_copy()
            if req.from_cell == req.to_cell:
                raise refusal("bad_request", 400,
                              f"the source and target cell are both {req.from_cell!r}",
                              "move the organization to another cell")
            self._cell(req.from_cell)
            self._cell(req.to_cell)
            owner = self._owner(req.org_id)
            if owner is None:
                raise UnknownOrganization(
                    f"organization {req.org_id} has no claim in the Topology Service",
                    fix="seed the claims of the cell that holds it, or check the id")
            org = self._orgs.setdefault(req.org_id, _Org(updated_at=self.clock()))
            live = self._live_move(req.org_id)
            if live is not None:
                if self._expired(live):
                    self._abort(live, "lease expired; taken over by a new move")
                else:
                    raise refusal(
                        "move_in_progress", 409,
                        f"organization {req.org_id} is already being moved by move {live.move_id} "
                        f"({live.from_cell} -> {live.to_cell}, {live.status}, lease until "
                        f"{live.lease_expires_at.isoformat()})",
                        "wait for that move to finish, or abort it (orgmove rollback) first",
                        details={"move_id": str(live.move_id), "status": live.status})
            if owner != req.from_cell:
                raise refusal("owner_mismatch", 409,
                              f"organization {req.org_id} belongs to cell {owner!r}, not "
                              f"{req.from_cell!r}", f"move it from {owner!r}",
                              details={"owner": owner})
            now = self.clock()
            org.fencing_token += 1
            self._touch(org)
            move = Move(move_id=uuid.uuid4(), org_id=req.org_id, from_cell=req.from_cell,
                        to_cell=req.to_cell, status="begun", fencing_token=org.fencing_token,
                        lease_expires_at=now + timedelta(seconds=req.lease_ttl_s), created_at=now,
                        fenced_at=None, committed_at=None, aborted_at=None, abort_reason=None,
                        claims_moved=None, version=1)
            self._moves[move.move_id] = move
            if req.idempotency_key:
                self._move_keys[req.idempotency_key] = move.move_id
            return move.model_copy()

    def renew(self, move_id: uuid.UUID | str, token: int, ttl_s: float) -> Move:
        try:
            MoveRenew(token=token, lease_ttl_s=ttl_s)
        except ValidationError as exc:
            raise _bad_request(exc) from None
        with self._lock:
            move = self._locked_move(move_id, token)
            self._check_live(move)
            return self._update(move, lease_expires_at=self.clock() + timedelta(seconds=ttl_s))

    def fence(self, move_id: uuid.UUID | str, token: int) -> Move:
        with self._lock:
            move = self._locked_move(move_id, token)
            self._check_live(move)
            if move.status == "fenced":
                return move.model_copy()
            org = self._orgs[move.org_id]
            org.state = "read_only"
            self._touch(org)
            return self._update(move, status="fenced", fenced_at=self.clock())

    def commit_move(self, move_id: uuid.UUID | str, token: int, expected_owner: str) -> Move:
        with self._lock:
            move = self._locked_move(move_id, token)
            if move.status == "committed":
                return move.model_copy()
            self._check_live(move)
            if move.status != "fenced":
                raise refusal("move_not_fenced", 409,
                              f"move {move.move_id} has not fenced organization {move.org_id}",
                              "fence the organization (read-only) and drain it before the flip")
            owner = self._owner(move.org_id)
            if owner != expected_owner or owner != move.from_cell:
                raise refusal("owner_mismatch", 409,
                              f"organization {move.org_id} belongs to cell {owner!r}; the commit "
                              f"expected {expected_owner!r} (move {move.from_cell} -> "
                              f"{move.to_cell})",
                              "nothing was changed; check the topology (orgmove status) before "
                              "retrying", details={"owner": owner})
            now = self.clock()
            moved = 0
            for key, claim in self._claims.items():
                if claim.organization_id == move.org_id:
                    self._claims[key] = claim.model_copy(update={
                        "cell_id": move.to_cell, "version": claim.version + 1, "updated_at": now})
                    moved += 1
            org = self._orgs[move.org_id]
            org.state = "active"
            self._touch(org)
            return self._update(move, status="committed", committed_at=now, claims_moved=moved)

    def abort_move(self, move_id: uuid.UUID | str, token: int, reason: str | None = None) -> Move:
        with self._lock:
            move = self._locked_move(move_id, token)
            if move.status == "aborted":
                return move.model_copy()
            if move.status == "committed":
                raise refusal("move_finished", 409,
                              f"move {move.move_id} is already committed: organization "
                              f"{move.org_id} is on {move.to_cell}",
                              "to undo it, move the organization back with a new move")
            return self._abort(move, reason or "aborted by the mover")

    def get_move(self, move_id: uuid.UUID | str) -> Move:
        key = _uuid(move_id)
        with self._lock:
            if key not in self._moves:
                raise self._unknown_move(key)
            return self._moves[key].model_copy()

    def moves_for_org(self, org_id: int | str, limit: int = 100) -> list[Move]:
        key = org_key(org_id)
        with self._lock:
            mine = [m for m in self._moves.values() if m.org_id == key]
        mine.sort(key=lambda m: (m.created_at, m.fencing_token), reverse=True)
        return [m.model_copy() for m in mine[: max(1, min(limit, 1000))]]

    def reap_expired_moves(self) -> int:
        """What the service's reaper does each tick: abort every live move whose lease expired."""
        with self._lock:
            expired = [m for m in self._moves.values()
                       if m.status in LIVE_MOVE_STATUSES and self._expired(m)]
            for move in expired:
                self._abort(move, "lease expired")
        return len(expired)

    # --- helpers (called with the lock held) -----------------------------------------------------

    def _cell(self, name: str) -> Cell:
        if name not in self._cells:
            raise refusal("unknown_cell", 404,
                          f"cell {name!r} is not registered in the Topology Service",
                          f"register it first (PUT /v1/cells/{name})")
        return self._cells[name]

    def _org_claim(self, org_id: str) -> Claim | None:
        return self._claims.get(("organization_id", str(org_id)))

    def _owner(self, org_id: str) -> str | None:
        claim = self._org_claim(org_id)
        return claim.cell_id if claim is not None else None

    def _organization(self, org_id: str) -> Organization:
        org = self._orgs.get(org_id)
        claim = self._org_claim(org_id)
        if org is None and claim is None:
            raise UnknownOrganization(
                f"organization {org_id} has no claim in the Topology Service",
                fix="seed the claims of the cell that holds it (orgmove sandbox seed) or check "
                "the id")
        live = self._live_move(org_id)
        updated = org.updated_at if org is not None else claim.updated_at  # type: ignore[union-attr]
        return Organization(
            org_id=org_id, state=org.state if org else "active",
            owner_cell=claim.cell_id if claim else None,
            fencing_token=org.fencing_token if org else 0, version=org.version if org else 0,
            live_move_id=live.move_id if live else None, updated_at=updated)

    def _live_move(self, org_id: str) -> Move | None:
        for move in self._moves.values():
            if move.org_id == org_id and move.status in LIVE_MOVE_STATUSES:
                return move
        return None

    def _expired(self, move: Move) -> bool:
        return move.lease_expires_at <= self.clock()

    def _touch(self, org: _Org) -> None:
        org.version += 1
        org.updated_at = self.clock()

    def _update(self, move: Move, **changes: Any) -> Move:
        updated = move.model_copy(update={**changes, "version": move.version + 1})
        self._moves[move.move_id] = updated
        return updated.model_copy()

    def _unknown_move(self, move_id: uuid.UUID) -> OrgmoveError:
        return refusal("unknown_move", 404, f"no move {move_id}",
                       "list the organization's moves: GET /v1/moves?org_id=...")

    def _locked_move(self, move_id: uuid.UUID | str, token: int) -> Move:
        key = _uuid(move_id)
        move = self._moves.get(key)
        if move is None:
            raise self._unknown_move(key)
        latest = self._orgs[move.org_id].fencing_token
        if token != move.fencing_token or token != latest:
            raise refusal(
                "stale_token", 409,
                f"fencing token {token} is stale for move {key} of organization {move.org_id} "
                f"(move token {move.fencing_token}, latest token {latest})",
                "nothing was changed; another move holds the organization now: re-read the move "
                "state (orgmove status) before doing anything",
                details={"latest_token": latest})
        return move

    def _check_live(self, move: Move) -> None:
        if move.status in ("committed", "aborted"):
            raise refusal(
                "move_finished", 409,
                f"move {move.move_id} is already {move.status}"
                + (f" ({move.abort_reason})" if move.abort_reason else ""),
                "nothing was changed; begin a new move if the organization still has to move",
                details={"status": move.status})
        if self._expired(move):
            raise refusal(
                "lease_expired", 410,
                f"the lease of move {move.move_id} expired at {move.lease_expires_at.isoformat()}",
                "nothing was changed; abort this move and begin a new one (renew the lease more "
                "often than its TTL)")

    def _abort(self, move: Move, reason: str) -> Move:
        org = self._orgs[move.org_id]
        # Only the move that holds the latest token may hand the organization back (as the
        # service's UPDATE ... WHERE fencing_token = the move's).
        if org.fencing_token == move.fencing_token:
            org.state = "active"
            self._touch(org)
        return self._update(move, status="aborted", aborted_at=self.clock(), abort_reason=reason)
