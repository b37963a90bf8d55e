"""The Topology boundary as the mover sees it: :class:`TopologyAPI`, the methods cutover, rollback,
cleanup, status, plan, the move job and the sandbox call, and the refusals they can raise.

Two implementations: :class:`~orgmove.topology.client.TopologyClient` (HTTP, the real service)
and :class:`~orgmove.topology.memory.MemoryTopology` (in memory, for the pure tests). Both raise
the same errors for the same refusal, built by :func:`refusal` from the service's code.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, Self

from orgmove.errors import OrgmoveError, TopologyRefused, UnknownOrganization
from orgmove.topology.models import Cell, Claim, ClaimIn, Move, Organization

__all__ = ["ClaimLeased", "LeaseExpired", "ServiceRefused", "TopologyAPI", "refusal"]


class ServiceRefused(TopologyRefused):
    """The Topology Service refused the request; nothing was changed by it."""

    def __init__(
        self,
        message: str,
        *,
        fix: str = "",
        reason: str = "refused",
        status: int = 409,
        retryable: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            message, fix=fix, details={"reason": reason, "status": status, **(details or {})}
        )
        self.reason = reason
        self.status = status
        self.retryable = retryable


class ClaimLeased(ServiceRefused):
    """'Try again later': a pending lease (or a fence) holds what the request needs."""

    code = "claim_leased"


class LeaseExpired(ServiceRefused):
    """The move's lease expired (HTTP 410): abort it and begin a new move."""

    code = "lease_expired"


def refusal(
    code: str,
    status: int,
    message: str,
    fix: str = "",
    *,
    retryable: bool = False,
    details: dict[str, Any] | None = None,
) -> OrgmoveError:
    """The error a 4xx refusal of the service is to the mover, whichever implementation refused."""
    if code == "unknown_organization":
        return UnknownOrganization(message, fix=fix)
    cls: type[ServiceRefused] = ServiceRefused
    if code in ("claim_leased", "org_read_only"):
        cls = ClaimLeased
    elif code == "lease_expired":
        cls = LeaseExpired
    return cls(message, fix=fix, reason=code, status=status, retryable=retryable,
               details=details)


class TopologyAPI(Protocol):
    """What the mover needs from the Topology Service. Every mutation is all or nothing; a
    refusal raises (:class:`ServiceRefused` and its subclasses, UnknownOrganization) and changes
    nothing."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def close(self) -> None: ...

    # --- cells and claims (the sandbox, seeding) ------------------------------------------------

    def register_cell(
        self,
        name: str,
        address: str,
        *,
        state: str = "active",
        sequence_start: int | None = None,
        sequence_end: int | None = None,
    ) -> Cell: ...

    def create_claims(
        self,
        cell_id: str,
        records: Iterable[ClaimIn | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[Claim]:
        """Create (lease and commit at once) the claims on the cell; ClaimLeased while the
        organization is fenced."""
        ...

    def iter_claims(self, *, page_size: int = 500, **filters: Any) -> Iterator[Claim]:
        """Every claim matching ``cell_id``, ``organization_id``, ``bucket_type``, ``status``."""
        ...

    # --- organizations -------------------------------------------------------------------------

    def get_organization(self, org_id: int | str) -> Organization:
        """UnknownOrganization if no claim names it."""
        ...

    def owner_of_org(self, org_id: int | str) -> str | None:
        """The cell holding the organization's claim, or None if it has none."""
        ...

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
        """The move lease, with a fencing token strictly greater than every earlier one of the
        organization. Refused while another live move holds an unexpired lease; an expired one is
        aborted and taken over."""
        ...

    def renew(self, move_id: uuid.UUID | str, token: int, ttl_s: float) -> Move: ...

    def fence(self, move_id: uuid.UUID | str, token: int) -> Move:
        """The organization turns read-only (idempotent)."""
        ...

    def commit_move(self, move_id: uuid.UUID | str, token: int, expected_owner: str) -> Move:
        """Compare-and-swap every claim of the organization to the target: refused on a stale
        token, a wrong expected owner, an unfenced or expired move; idempotent once committed."""
        ...

    def abort_move(
        self, move_id: uuid.UUID | str, token: int, reason: str | None = None
    ) -> Move: ...

    def get_move(self, move_id: uuid.UUID | str) -> Move: ...

    def moves_for_org(self, org_id: int | str, limit: int = 100) -> list[Move]:
        """Newest first."""
        ...
