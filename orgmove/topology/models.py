"""The Topology Service's API models, shared by the server (which returns them) and the client
(which parses them), the wire form of a refusal (:class:`ServiceError`), and the argument checks
the service and the in-memory implementation share (cell names, buckets once per batch, organization
keys).

Pure data and validation: no I/O, so the client, the in-memory implementation and the pure tests
import it without the server's storage or its database driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from orgmove.errors import BadInput

BucketType = Literal["organization_id", "organization_path", "route", "user_login"]
SubjectType = Literal["organization", "group", "project", "user"]
ClaimStatus = Literal["ACTIVE", "LEASE_CREATING", "LEASE_DESTROYING"]
CellState = Literal["active", "draining", "offline"]
OrgState = Literal["active", "read_only"]
MoveStatus = Literal["begun", "fenced", "committed", "aborted"]
LeaseStatus = Literal["pending", "committed", "rolled_back"]

LIVE_MOVE_STATUSES: tuple[MoveStatus, ...] = ("begun", "fenced")

STALE_LEASE_SECONDS = 600  # GitLab: a lease older than 10 minutes is stale
MAX_BATCH = 5000
MAX_PAGE = 1000


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


# --- argument checks shared by the service (claims.py) and the in-memory implementation ------

MAX_CELL_NAME = 200


def check_cell_name(name: str) -> None:
    if not name or len(name) > MAX_CELL_NAME:
        raise ServiceError(400, "bad_request", f"a cell name is 1 to {MAX_CELL_NAME} characters")


def check_unique_buckets(keys: Sequence[tuple[str, str]]) -> None:
    """Each (bucket type, value) at most once per update."""
    if len(set(keys)) == len(keys):
        return
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    raise ServiceError(
        400, "duplicate_record",
        "a claim appears more than once in the batch: " + ", ".join(f"{t}={v}" for t, v in dupes[:10]),
        "name each bucket at most once per update",
    )


MAX_ORG_KEY = 2048  # the longest bucket value: an organization key is also an organization_id bucket


def org_key(org: int | str) -> str:
    """The key the service knows an organization by: opaque text (an integer id 42 is ``"42"``, a
    uuid is its text), stripped; BadInput for an empty or over-long key, so every caller (client,
    in-memory implementation, CLI) refuses alike."""
    if isinstance(org, bool) or not isinstance(org, (int, str)):
        raise BadInput(f"organization {org!r} is neither an id nor a key",
                       fix="give the organization's id or key as text or an integer")
    key = str(org).strip()
    if not key or len(key) > MAX_ORG_KEY:
        raise BadInput(f"organization key {org!r} is empty or longer than {MAX_ORG_KEY} characters",
                       fix="give the organization's id or key (for example 42 or its uuid)")
    return key


def org_sort_key(key: str) -> tuple[int, int, str]:
    """Listings stay in the order integer ids always had (numeric), with other keys after them in
    text order."""
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


def _org_key_field(value: Any) -> str:
    # pydantic reports a ValueError as a 422 naming the field; BadInput would escape as a 500.
    try:
        return org_key(value)
    except BadInput as exc:
        raise ValueError(exc.message) from None


OrgKey = Annotated[str, BeforeValidator(_org_key_field)]


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
    organization_id: OrgKey | None = None

    @model_validator(mode="after")
    def _org_link(self) -> ClaimIn:
        if self.bucket.type == "organization_id":
            org = _org_key_field(self.bucket.value)
            if self.organization_id is not None and self.organization_id != org:
                raise ValueError("organization_id differs from the organization_id bucket value")
            self.organization_id = org
        return self


class Claim(_Model):
    uuid: UUID
    bucket: Bucket
    subject: Subject
    source: Source
    organization_id: OrgKey | None
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
    org_id: OrgKey | None = None
    org_state: OrgState | None = None
    version: int | None = None
    bucket: Bucket | None = Field(default=None, description="the claim that matched")


class Organization(_Model):
    org_id: OrgKey
    state: OrgState
    owner_cell: str | None
    fencing_token: int
    version: int
    live_move_id: UUID | None
    updated_at: datetime


class MoveBegin(_Model):
    org_id: OrgKey
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
    org_id: OrgKey
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


# --- pure helpers ----------------------------------------------------------------------------


def route_prefixes(path: str) -> list[str]:
    """``a/b/-/issues`` -> ``['a', 'a/b', 'a/b/-', 'a/b/-/issues']``: the longest claimed prefix
    owns the request."""
    parts = [p for p in path.strip("/").split("/") if p]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
