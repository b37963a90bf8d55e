"""The Topology Service: an HTTP/JSON API (OpenAPI at ``/openapi.json``, docs at ``/docs``) over
its own PostgreSQL database. See docs/topology-api.md.

Entry points: :func:`create_app` (the FastAPI app), :func:`serve` (``orgmove topology serve``),
:func:`run_in_thread` (a context manager for tests, the sandbox and the cutover tests).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from uuid import UUID

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orgmove import __version__
from orgmove.config import redact
from orgmove.errors import ConfigError, EnvironmentProblem, OrgmoveError
from orgmove.topology.database import DEFAULT_POOL_SIZE, DEFAULT_WAIT_TIMEOUT_S
from orgmove.topology.models import (
    BatchRequest,
    BeginUpdateRequest,
    BeginUpdateResponse,
    BucketType,
    Cell,
    CellIn,
    Claim,
    ClaimPage,
    Classification,
    ClassifyRequest,
    Lease,
    LeaseAction,
    LeasePage,
    Move,
    MoveAbort,
    MoveBegin,
    MoveCommit,
    MoveRenew,
    MoveToken,
    Organization,
    ServiceError,
    org_key,
)
from orgmove.topology.store import Store

log = logging.getLogger("orgmove.topology")

_bearer = HTTPBearer(auto_error=False, description="the service token (orgmove.toml [topology])")


def _org(value: str) -> str:
    try:
        return org_key(value)
    except OrgmoveError as exc:
        raise ServiceError(400, "bad_request", exc.message, exc.fix) from None


def _reaper(store: Store, interval_s: float, stop: threading.Event) -> None:
    while not stop.wait(interval_s):
        try:
            n = store.moves.reap_expired_moves()
            if n:
                log.warning("aborted %d move(s) whose lease expired", n)
        except ServiceError as exc:
            log.warning("lease reaper: %s", exc.message)
        except Exception:  # keep reaping; the next tick may succeed
            log.exception("lease reaper failed")


def create_app(
    dsn: str,
    token: str | None,
    *,
    reap_interval_s: float = 1.0,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
) -> FastAPI:
    """The FastAPI app. The schema is created (idempotently) at startup; a background thread
    aborts moves whose lease expired, so a crashed mover leaves the organization writable.
    At most ``pool_size`` database connections; a request waits ``pool_wait_timeout_s`` for one."""
    store = Store(dsn, pool_size=pool_size, pool_wait_timeout_s=pool_wait_timeout_s)
    expected = token.encode() if token else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.ensure_schema()
        stop = threading.Event()
        reaper = threading.Thread(
            target=_reaper, args=(store, reap_interval_s, stop), name="topology-reaper", daemon=True
        )
        reaper.start()
        try:
            yield
        finally:
            stop.set()
            reaper.join(timeout=10)
            store.close()

    app = FastAPI(
        title="orgmove Topology Service",
        version=__version__,
        description=(
            "Which Cell owns which organization: cells, claims (lease first, commit later), "
            "classify, organization state, and orgmove's move leases with fencing tokens."
        ),
        lifespan=lifespan,
    )
    app.state.store = store

    def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if expected is None:
            return
        given = creds.credentials.encode() if creds is not None else b""
        if creds is None or not secrets.compare_digest(given, expected):
            raise ServiceError(
                401, "unauthorized",
                "missing or invalid bearer token" if creds else "missing bearer token",
                "send `Authorization: Bearer <token>` with the service's token "
                "(orgmove.toml [topology] token or token_env)",
            )

    auth = [Depends(require_token)]

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems[:5])
        body = ServiceError(
            422, "bad_request", f"invalid request: {summary}",
            "correct the request; the schema is at /openapi.json",
            details={"errors": problems},
        ).to_json()
        return JSONResponse(body, status_code=422)

    # --- health ------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> Any:
        try:
            store.ping()
        except ServiceError as exc:
            return JSONResponse(
                {"status": "unavailable", "database": exc.message}, status_code=503
            )
        return {"status": "ok", "version": __version__}

    # --- cells -------------------------------------------------------------------------------

    @app.put("/v1/cells/{name}", dependencies=auth, tags=["cells"])
    def register_cell(name: str, body: CellIn) -> Cell:
        return store.claims.register_cell(name, body)

    @app.get("/v1/cells", tags=["cells"])
    def list_cells() -> list[Cell]:
        return store.claims.list_cells()

    @app.get("/v1/cells/{name}", tags=["cells"])
    def get_cell(name: str) -> Cell:
        """Includes the cell's id range (GitLab's GetCellSequenceInfo)."""
        return store.claims.get_cell(name)

    # --- claims ------------------------------------------------------------------------------

    @app.post("/v1/leases", dependencies=auth, tags=["claims"])
    def begin_update(body: BeginUpdateRequest) -> BeginUpdateResponse:
        """BeginUpdate: lease the records to create and destroy, all or nothing."""
        return store.claims.begin_update(body)

    @app.post("/v1/leases/{lease_uuid}/commit", dependencies=auth, tags=["claims"])
    def commit_update(lease_uuid: UUID, body: LeaseAction) -> Lease:
        """CommitUpdate (idempotent)."""
        return store.claims.commit_update(lease_uuid, body.cell_id)

    @app.post("/v1/leases/{lease_uuid}/rollback", dependencies=auth, tags=["claims"])
    def rollback_update(lease_uuid: UUID, body: LeaseAction) -> Lease:
        """RollbackUpdate (idempotent)."""
        return store.claims.rollback_update(lease_uuid, body.cell_id)

    @app.get("/v1/leases", tags=["claims"])
    def list_leases(
        cell_id: str | None = None,
        status: str | None = "pending",
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> LeasePage:
        """ListLeases: pending leases by default (``status=`` empty for all)."""
        return store.claims.list_leases(cell_id=cell_id, status=status or None, cursor=cursor, limit=limit)

    @app.post("/v1/claims/batch", dependencies=auth, tags=["claims"])
    def create_claims(body: BatchRequest) -> list[Claim]:
        """BeginUpdate + CommitUpdate in one transaction (seeding)."""
        return store.claims.create_claims(body)

    @app.get("/v1/claims", tags=["claims"])
    def list_claims(
        cell_id: str | None = None,
        organization_id: str | None = None,
        bucket_type: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> ClaimPage:
        """ListRecords, paged with an opaque cursor (``next_cursor`` is null on the last page)."""
        return store.claims.list_claims(
            cell_id=cell_id, organization_id=_org(organization_id) if organization_id is not None else None,
            bucket_type=bucket_type,
            status=status, cursor=cursor, limit=limit,
        )

    # --- classify ----------------------------------------------------------------------------

    def _classified(result: Classification) -> Any:
        if result.action == "reject":
            return JSONResponse(result.model_dump(mode="json"), status_code=404)
        return result

    @app.get(
        "/v1/classify", tags=["classify"], response_model=Classification,
        responses={404: {"model": Classification, "description": "reject: nobody claims it"}},
    )
    def classify_get(type: BucketType, value: Annotated[str, Query(min_length=1)]) -> Any:
        """What the router asks for every request; answers may be cached for a short time."""
        return _classified(store.claims.classify(type, value))

    @app.post(
        "/v1/classify", tags=["classify"], response_model=Classification,
        responses={404: {"model": Classification, "description": "reject: nobody claims it"}},
    )
    def classify_post(body: ClassifyRequest) -> Any:
        return _classified(store.claims.classify(body.type, body.value))

    # --- organizations -----------------------------------------------------------------------

    # ``:path``: an organization key is opaque text and may hold a '/' (quoted by the client).
    @app.get("/v1/organizations/{org_id:path}", tags=["organizations"])
    def get_organization(org_id: str) -> Organization:
        return store.claims.get_organization(_org(org_id))

    # --- moves -------------------------------------------------------------------------------

    @app.post("/v1/moves", dependencies=auth, tags=["moves"])
    def begin_move(body: MoveBegin) -> Move:
        """Take the move lease: one live move per organization; a new fencing token."""
        return store.moves.begin_move(body)

    @app.get("/v1/moves", tags=["moves"])
    def list_moves(
        org_id: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[Move]:
        return store.moves.list_moves(_org(org_id) if org_id is not None else None, limit)

    @app.get("/v1/moves/{move_id}", tags=["moves"])
    def get_move(move_id: UUID) -> Move:
        return store.moves.get_move(move_id)

    @app.post("/v1/moves/{move_id}/renew", dependencies=auth, tags=["moves"])
    def renew_move(move_id: UUID, body: MoveRenew) -> Move:
        return store.moves.renew_move(move_id, body.token, body.lease_ttl_s)

    @app.post("/v1/moves/{move_id}/fence", dependencies=auth, tags=["moves"])
    def fence_move(move_id: UUID, body: MoveToken) -> Move:
        """The organization becomes read-only."""
        return store.moves.fence_move(move_id, body.token)

    @app.post("/v1/moves/{move_id}/commit", dependencies=auth, tags=["moves"])
    def commit_move(move_id: UUID, body: MoveCommit) -> Move:
        """Compare-and-swap every claim of the organization to the target cell."""
        return store.moves.commit_move(move_id, body.token, body.expected_owner)

    @app.post("/v1/moves/{move_id}/abort", dependencies=auth, tags=["moves"])
    def abort_move(move_id: UUID, body: MoveAbort) -> Move:
        return store.moves.abort_move(move_id, body.token, body.reason)

    return app


# --- running it ------------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[::1]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"--listen {listen!r} is not HOST:PORT",
            fix="give e.g. --listen 127.0.0.1:7480",
        )
    host = host.strip("[]") or "0.0.0.0"  # an explicit ":PORT" asks for all interfaces
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _db_label(dsn: str) -> str:
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return redact(dsn)
    host = params.get("host") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname')}"


def _uvicorn_config(
    app: FastAPI, host: str, port: int, log_level: str, *, embedded: bool = False
) -> uvicorn.Config:
    # ws="none": no websockets; the access log records method, path and status, never headers.
    # Embedded (run_in_thread): leave the process's logging configuration alone, no access log.
    extra: dict[str, Any] = {"log_config": None, "access_log": False} if embedded else {}
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, ws="none", lifespan="on",
        server_header=False, proxy_headers=False, **extra,
    )


def serve(listen: str, dsn: str, token: str | None, *, log_level: str = "info") -> None:
    """Run the service in the foreground until interrupted (``orgmove topology serve``)."""
    host, port = parse_listen(listen)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    probe = Store(dsn, pool_size=1)
    try:
        probe.ensure_schema()
    except ServiceError as exc:
        raise EnvironmentProblem(
            f"the Topology Service database {_db_label(dsn)} is not usable: {exc.message}",
            fix="check --dsn and that this PostgreSQL is up",
        ) from None
    finally:
        probe.close()
    if token is None and not _is_loopback(host):
        log.warning("no token: anyone who can reach %s:%d can change the topology", host, port)
    log.info(
        "topology service on http://%s:%d (database %s, auth %s)",
        host, port, _db_label(dsn), "bearer token" if token else "none",
    )
    server = uvicorn.Server(_uvicorn_config(create_app(dsn, token), host, port, log_level))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the captured SIGINT after a graceful shutdown
        log.info("topology service stopped")
        return
    if not server.started:
        raise EnvironmentProblem(
            f"the Topology Service could not start on {host}:{port}",
            fix="pick a free port with --listen HOST:PORT, or check the log above",
        )


@contextlib.contextmanager
def run_in_thread(
    dsn: str,
    token: str | None = None,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    reap_interval_s: float = 0.2,
    startup_timeout_s: float = 30.0,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
) -> Iterator[str]:
    """Run the real service in a background thread; yield its base URL; stop it on exit.
    ``port=0`` takes a free port (bound before the server starts, so there is no race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EnvironmentProblem(
            f"cannot listen on {host}:{port}: {exc.strerror}", fix="pick another port"
        ) from None
    bound = int(sock.getsockname()[1])
    app = create_app(dsn, token, reap_interval_s=reap_interval_s, pool_size=pool_size,
                     pool_wait_timeout_s=pool_wait_timeout_s)
    server = uvicorn.Server(_uvicorn_config(app, host, bound, "warning", embedded=True))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"topology-{bound}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            why = f": {errors[0]}" if errors else " (see the log)"
            if errors and isinstance(errors[0], OrgmoveError):
                raise errors[0]
            raise EnvironmentProblem(
                f"the Topology Service did not start on {host}:{bound}{why}",
                fix=f"check that its database {_db_label(dsn)} is reachable",
            )
        time.sleep(0.02)
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
