"""The Topology Service client (sync, httpx), used by cutover, status, the sandbox and the router.

Transport failures and 502/503/504 answers are :class:`~orgmove.errors.TopologyUnavailable`
(transient) and are retried with exponential backoff until a deadline. Refusals keep the service's
message and fix: 401 -> :class:`~orgmove.errors.AuthenticationFailed`; unknown organization ->
:class:`~orgmove.errors.UnknownOrganization`; every other 4xx -> :class:`ServiceRefused` (a
:class:`~orgmove.errors.TopologyRefused`) whose ``reason`` is the service's code, with the
subclasses :class:`ClaimLeased` ("try again later") and :class:`LeaseExpired` (410).

Every non-idempotent request carries an idempotency key, so a retry after a lost answer returns
the first answer instead of conflicting with it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from orgmove.config import Config
from orgmove.db import connect
from orgmove.errors import (
    AuthenticationFailed,
    BadInput,
    OrgmoveError,
    PermanentError,
    TopologyUnavailable,
    UnknownOrganization,
)
from orgmove.retry import RetryPolicy, retry_sync
from orgmove.topology.api import ClaimLeased, LeaseExpired, ServiceRefused, TopologyAPI, refusal
from orgmove.topology.models import (
    BeginUpdateResponse,
    Bucket,
    Cell,
    Claim,
    ClaimIn,
    ClaimPage,
    Classification,
    Lease,
    LeasePage,
    Move,
    Organization,
    Source,
    Subject,
    org_key,
)

__all__ = [
    "ClaimLeased",
    "LeaseExpired",
    "ServiceRefused",
    "TopologyAPI",
    "TopologyClient",
    "seed_claims",
]


class TopologyClient:
    """The HTTP implementation of :class:`~orgmove.topology.api.TopologyAPI` (and the rest of the
    service's API: leases, listings, classify)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 10.0,
        *,
        retry_deadline_s: float = 30.0,
        retry_min_wait_s: float = 0.05,
        retry_max_wait_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Several service processes on one database: ``url`` may list them, comma-separated. A
        # request that finds one unreachable (or 502-504) is retried on the next.
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()] or [url]
        self._active = 0
        self._deadline_s = retry_deadline_s
        self._min_wait_s = retry_min_wait_s
        self._max_wait_s = retry_max_wait_s
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._clients = [httpx.Client(base_url=u, headers=headers, timeout=timeout_s, transport=transport)
                         for u in self.urls]

    @property
    def url(self) -> str:
        return self.urls[self._active]

    @property
    def _http(self) -> httpx.Client:
        return self._clients[self._active]

    def _next_url(self) -> None:
        self._active = (self._active + 1) % len(self.urls)

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> TopologyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the token
        return f"TopologyClient({self.url!r})"

    # --- transport ---------------------------------------------------------------------------

    def _once(
        self, method: str, path: str, json: Any, params: Mapping[str, Any] | None,
        allow: Sequence[int],
    ) -> httpx.Response:
        try:
            resp = self._http.request(
                method, path, json=json,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        except httpx.TransportError as exc:
            failed = self.url
            self._next_url()
            raise TopologyUnavailable(
                f"the Topology Service at {failed} did not answer {method} {path}: "
                f"{type(exc).__name__}: {exc}",
                fix="check that the service is running (orgmove sandbox up, or "
                "orgmove topology serve) and [topology] url in orgmove.toml",
            ) from None
        if resp.status_code < 400 or resp.status_code in allow:
            return resp
        error = self._error(method, path, resp)
        if resp.status_code in (502, 503, 504):
            self._next_url()
        raise error

    def _error(self, method: str, path: str, resp: httpx.Response) -> OrgmoveError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("message") or f"HTTP {resp.status_code} for {method} {path}")
        fix = str(body.get("fix") or "")
        code = str(body.get("code") or f"http_{resp.status_code}")
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
        status = resp.status_code
        if status in (502, 503, 504):
            return TopologyUnavailable(
                f"the Topology Service at {self.url} is unavailable: {message}",
                fix=fix or "retry later; check the service and its database",
            )
        if status == 401:
            return AuthenticationFailed(
                f"the Topology Service at {self.url} refused the token: {message}",
                fix="set the service token in orgmove.toml [topology] token or token_env",
            )
        if status >= 500 and code != "unknown_organization":
            return PermanentError(f"the Topology Service failed: {message}", fix=fix)
        return refusal(code, status, message, fix, retryable=bool(body.get("retryable")),
                       details=details)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        allow: Sequence[int] = (),
    ) -> httpx.Response:
        attempts = 1

        def count(_exc: BaseException, attempt: int) -> None:
            nonlocal attempts
            attempts = attempt + 1

        try:
            return retry_sync(
                lambda: self._once(method, path, json, params, allow),
                RetryPolicy(self._deadline_s, self._min_wait_s, self._max_wait_s),
                sleep=self._sleep, on_retry=count,
                is_retryable=lambda exc: isinstance(exc, TopologyUnavailable),
            )
        except TopologyUnavailable as last:
            if attempts == 1:
                raise
            raise TopologyUnavailable(
                f"{last.message} (gave up after {attempts} attempts in {self._deadline_s:g}s)",
                fix=last.fix,
            ) from None

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    # --- health and cells --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self._json("GET", "/healthz")
        return body

    def register_cell(
        self,
        name: str,
        address: str,
        *,
        state: str = "active",
        sequence_start: int | None = None,
        sequence_end: int | None = None,
    ) -> Cell:
        body = {"address": address, "state": state, "sequence_start": sequence_start,
                "sequence_end": sequence_end}
        return Cell.model_validate(self._json("PUT", f"/v1/cells/{name}", json=body))

    def list_cells(self) -> list[Cell]:
        return [Cell.model_validate(c) for c in self._json("GET", "/v1/cells")]

    def get_cell(self, name: str) -> Cell:
        return Cell.model_validate(self._json("GET", f"/v1/cells/{name}"))

    # --- claims ------------------------------------------------------------------------------

    def begin_update(
        self,
        cell_id: str,
        create_records: Iterable[ClaimIn | Mapping[str, Any]] = (),
        destroy_records: Iterable[Bucket | Claim | Mapping[str, Any]] = (),
        *,
        idempotency_key: str | None = None,
    ) -> BeginUpdateResponse:
        """BeginUpdate: all or nothing. Raises ServiceRefused(reason='claim_already_taken')
        (permanent) or ClaimLeased (try again later)."""
        destroy: list[Any] = []
        for rec in destroy_records:
            if isinstance(rec, Bucket):
                destroy.append({"bucket": rec.model_dump()})
            elif isinstance(rec, Claim):
                destroy.append({"bucket": rec.bucket.model_dump()})
            else:
                destroy.append(dict(rec))
        body = {
            "cell_id": cell_id,
            "create_records": [_dump(r) for r in create_records],
            "destroy_records": destroy,
            "idempotency_key": idempotency_key or str(uuid.uuid4()),
        }
        return BeginUpdateResponse.model_validate(self._json("POST", "/v1/leases", json=body))

    def commit_update(self, lease_uuid: uuid.UUID | str, cell_id: str) -> Lease:
        return Lease.model_validate(
            self._json("POST", f"/v1/leases/{lease_uuid}/commit", json={"cell_id": cell_id})
        )

    def rollback_update(self, lease_uuid: uuid.UUID | str, cell_id: str) -> Lease:
        return Lease.model_validate(
            self._json("POST", f"/v1/leases/{lease_uuid}/rollback", json={"cell_id": cell_id})
        )

    def create_claims(
        self,
        cell_id: str,
        records: Iterable[ClaimIn | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[Claim]:
        """Begin + commit in one call (one transaction on the service)."""
        body = {
            "cell_id": cell_id,
            "create_records": [_dump(r) for r in records],
            "idempotency_key": idempotency_key or str(uuid.uuid4()),
        }
        return [Claim.model_validate(c) for c in self._json("POST", "/v1/claims/batch", json=body)]

    def list_claims(
        self,
        *,
        cell_id: str | None = None,
        organization_id: int | str | None = None,
        bucket_type: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> ClaimPage:
        """ListRecords: one page; pass ``next_cursor`` back for the next one."""
        org = org_key(organization_id) if organization_id is not None else None
        params = {"cell_id": cell_id, "organization_id": org,
                  "bucket_type": bucket_type, "status": status, "cursor": cursor, "limit": limit}
        return ClaimPage.model_validate(self._json("GET", "/v1/claims", params=params))

    def iter_claims(self, *, page_size: int = 500, **filters: Any) -> Iterator[Claim]:
        cursor: str | None = None
        while True:
            page = self.list_claims(cursor=cursor, limit=page_size, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def list_leases(
        self,
        *,
        cell_id: str | None = None,
        status: str | None = "pending",
        cursor: str | None = None,
        limit: int = 100,
    ) -> LeasePage:
        params = {"cell_id": cell_id, "status": status or "", "cursor": cursor, "limit": limit}
        return LeasePage.model_validate(self._json("GET", "/v1/leases", params=params))

    # --- classify and organizations -------------------------------------------------------------

    def classify(self, type: str, value: str) -> Classification:
        """``action`` is ``proxy`` (with cell, address, org_id, org_state) or ``reject``."""
        resp = self._request(
            "GET", "/v1/classify", params={"type": type, "value": value}, allow=(404,)
        )
        body = resp.json()
        if resp.status_code == 404 and body.get("action") != "reject":
            raise self._error("GET", "/v1/classify", resp)
        return Classification.model_validate(body)

    def get_organization(self, org_id: int | str) -> Organization:
        # A key is opaque text (a uuid, a slug): quoted so a '/' or '?' in it stays one segment.
        path = f"/v1/organizations/{quote(org_key(org_id), safe='')}"
        return Organization.model_validate(self._json("GET", path))

    def owner_of_org(self, org_id: int | str) -> str | None:
        """The cell holding the organization's claim, or None if it has none."""
        try:
            return self.get_organization(org_id).owner_cell
        except UnknownOrganization:
            return None

    def org_state(self, org_id: int | str) -> str:
        """``active`` or ``read_only``; UnknownOrganization if the service has no claim for it."""
        return self.get_organization(org_id).state

    # --- moves -------------------------------------------------------------------------------

    def begin_move(
        self,
        org_id: int | str,
        from_cell: str,
        to_cell: str,
        lease_ttl_s: float,
        *,
        idempotency_key: str | None = None,
    ) -> Move:
        body = {"org_id": org_key(org_id), "from_cell": from_cell, "to_cell": to_cell,
                "lease_ttl_s": lease_ttl_s,
                "idempotency_key": idempotency_key or str(uuid.uuid4())}
        return Move.model_validate(self._json("POST", "/v1/moves", json=body))

    def renew(self, move_id: uuid.UUID | str, token: int, ttl_s: float) -> Move:
        return self._move_action(move_id, "renew", {"token": token, "lease_ttl_s": ttl_s})

    def fence(self, move_id: uuid.UUID | str, token: int) -> Move:
        return self._move_action(move_id, "fence", {"token": token})

    def commit_move(self, move_id: uuid.UUID | str, token: int, expected_owner: str) -> Move:
        return self._move_action(
            move_id, "commit", {"token": token, "expected_owner": expected_owner}
        )

    def abort_move(self, move_id: uuid.UUID | str, token: int, reason: str | None = None) -> Move:
        return self._move_action(move_id, "abort", {"token": token, "reason": reason})

    def get_move(self, move_id: uuid.UUID | str) -> Move:
        return Move.model_validate(self._json("GET", f"/v1/moves/{move_id}"))

    def moves_for_org(self, org_id: int | str, limit: int = 100) -> list[Move]:
        """Newest first."""
        params = {"org_id": org_key(org_id), "limit": limit}
        rows = self._json("GET", "/v1/moves", params=params)
        return [Move.model_validate(m) for m in rows]

    def _move_action(self, move_id: uuid.UUID | str, action: str, body: dict[str, Any]) -> Move:
        return Move.model_validate(self._json("POST", f"/v1/moves/{move_id}/{action}", json=body))


def client_from_config(config: Config) -> TopologyClient:
    """The client for the config's [topology] section (the caller checks it exists)."""
    topo = config.topology
    if topo is None:
        raise BadInput("the config has no [topology] section",
                       fix="add [topology] url = ... (and token_env) to the config")
    return TopologyClient(topo.url, config.topology_token(), topo.timeout_s,
                          retry_deadline_s=topo.retry_deadline_s)


def _dump(record: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(record, BaseModel):
        return record.model_dump(mode="json")
    return dict(record)


# --- seeding ---------------------------------------------------------------------------------

_ORGS_SQL = "SELECT id FROM organizations ORDER BY id"
_ROUTES_SQL = """
SELECT r.source_type, r.source_id, r.path,
       coalesce((to_jsonb(r) ->> 'id')::bigint, r.source_id) AS route_id,
       CASE r.source_type WHEN 'Namespace' THEN n.organization_id
                          ELSE pn.organization_id END AS organization_id
FROM routes r
LEFT JOIN namespaces n ON r.source_type = 'Namespace' AND n.id = r.source_id
LEFT JOIN projects p ON r.source_type = 'Project' AND p.id = r.source_id
LEFT JOIN namespaces pn ON pn.id = p.namespace_id
ORDER BY r.path
"""


def cell_claims(dsn: str, cell: str) -> list[ClaimIn]:
    """The claims a cell's data implies: one ``organization_id`` claim per organization, one
    ``route`` claim per route (linked to the organization of its namespace or project)."""
    with connect(dsn, cell=cell, application_name="orgmove-seed-claims") as conn:
        orgs = [int(r[0]) for r in conn.execute(_ORGS_SQL).fetchall()]
        routes = conn.execute(_ROUTES_SQL).fetchall()
    records = [
        ClaimIn(
            bucket=Bucket(type="organization_id", value=str(org)),
            subject=Subject(type="organization", id=org),
            source=Source(type="organizations", rails_primary_key=org),
            organization_id=org,
        )
        for org in orgs
    ]
    for source_type, source_id, path, route_id, org_id in routes:
        records.append(
            ClaimIn(
                bucket=Bucket(type="route", value=str(path)),
                subject=Subject(type="project" if source_type == "Project" else "group",
                                id=int(source_id)),
                source=Source(type="routes", rails_primary_key=int(route_id)),
                organization_id=str(org_id) if org_id is not None else None,
            )
        )
    return records


def seed_claims(
    client: TopologyAPI, cell_dsns: Mapping[str, str], *, batch_size: int = 1000
) -> dict[str, int]:
    """Create the claims of every cell's organizations and routes on the cell that holds them.
    Idempotent: buckets the cell already claims are skipped. The cells must be registered.
    Returns the number of claims created per cell."""
    created: dict[str, int] = {}
    for cell, dsn in cell_dsns.items():
        have = {(c.bucket.type, c.bucket.value) for c in client.iter_claims(cell_id=cell)}
        todo = [r for r in cell_claims(dsn, cell) if (r.bucket.type, r.bucket.value) not in have]
        for i in range(0, len(todo), batch_size):
            client.create_claims(cell, todo[i : i + batch_size])
        created[cell] = len(todo)
    return created
