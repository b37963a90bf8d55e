"""The connector boundary: every PostgreSQL connection is opened here, and driver errors are
translated here into :mod:`orgmove.errors`.

Connections are named (``application_name``), carry a ``statement_timeout`` and ``lock_timeout``,
and use the canonical session settings under which values render the same on every Cell (UTC, ISO
dates, full float digits, hex bytea): verify hashes row text, so both sides must agree on it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
from psycopg import conninfo

from orgmove.config import redact
from orgmove.conninfo import data_plane_params, home_directory, ssl_context
from orgmove.errors import (
    AuthenticationFailed,
    CellUnreachable,
    CertificateRejected,
    ConfigError,
    OrgmoveError,
    PermanentError,
    TransientError,
)

CANONICAL_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}

TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "40001", "40P01", "53300", "55P03", "53400")


def _options(settings: dict[str, str]) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(" ", "\\ ")

    return " ".join(f"-c {k}={esc(v)}" for k, v in settings.items())


def session_settings(
    *, statement_timeout_s: float = 0, lock_timeout_s: float = 5.0, extra: dict[str, str] | None = None
) -> dict[str, str]:
    settings = dict(CANONICAL_SETTINGS)
    settings["statement_timeout"] = str(int(statement_timeout_s * 1000))
    settings["lock_timeout"] = str(int(lock_timeout_s * 1000))
    settings["idle_in_transaction_session_timeout"] = "0"
    if extra:
        settings.update(extra)
    return settings


def connect_kwargs(
    dsn: str,
    *,
    application_name: str,
    statement_timeout_s: float = 0,
    lock_timeout_s: float = 5.0,
    connect_timeout_s: int = 10,
    extra_settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    settings = session_settings(
        statement_timeout_s=statement_timeout_s, lock_timeout_s=lock_timeout_s, extra=extra_settings
    )
    params = conninfo.conninfo_to_dict(dsn)
    params["application_name"] = application_name[:63]
    params["connect_timeout"] = connect_timeout_s
    existing = params.get("options")
    opts = _options(settings)
    params["options"] = f"{existing} {opts}" if existing else opts
    return params


def connect(
    dsn: str,
    *,
    cell: str,
    application_name: str,
    autocommit: bool = False,
    statement_timeout_s: float = 0,
    lock_timeout_s: float = 5.0,
    connect_timeout_s: int = 10,
    extra_settings: dict[str, str] | None = None,
) -> psycopg.Connection[Any]:
    """Open a named connection to ``cell`` with the canonical session settings."""
    params = connect_kwargs(
        dsn,
        application_name=application_name,
        statement_timeout_s=statement_timeout_s,
        lock_timeout_s=lock_timeout_s,
        connect_timeout_s=connect_timeout_s,
        extra_settings=extra_settings,
    )
    try:
        return psycopg.connect(autocommit=autocommit, **params)
    except psycopg.Error as exc:
        raise translate(exc, cell=cell, dsn=dsn) from exc


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: lost connections, restarts, serialization failures, deadlocks. Takes
    psycopg, asyncpg and orgmove errors alike."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(e) for e in exc.exceptions)
    if isinstance(exc, OrgmoveError):
        return exc.retryable  # decided by the error (errors.py), e.g. CellUnreachable: yes
    state = getattr(exc, "sqlstate", None) or ""
    if state:
        return str(state).startswith(TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(exc, psycopg.Error):
        # No SQLSTATE: the connection itself broke (reset, server gone, closed under us).
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    import asyncpg

    if isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError | asyncpg.InterfaceError):
        return True
    return isinstance(exc, ConnectionError | TimeoutError | OSError)



def translate(exc: BaseException, *, cell: str, dsn: str | None = None, what: str = "") -> OrgmoveError:
    """Translate a psycopg or asyncpg error into the project's exception tree."""
    if isinstance(exc, OrgmoveError):
        return exc
    text = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    where = f" ({what})" if what else ""
    state = str(getattr(exc, "sqlstate", None) or "")
    lowered = text.lower()
    if state in ("28P01", "28000") or (not state and "authentication failed" in lowered):
        return AuthenticationFailed(
            f"cell {cell!r} refused the login: {text}",
            fix=f"check the user and password in the DSN of cell {cell!r}",
        )
    if state == INSUFFICIENT_PRIVILEGE:
        return permission_denied(cell, where, text)
    if not state and _certificate_rejected(exc, lowered):
        return certificate_rejected(cell, text)
    if not state and _never_connected(exc, lowered, dsn):
        host = _host_of(dsn)
        return CellUnreachable(
            f"cell {cell!r} is unreachable{' at ' + host if host else ''}: {text}",
            fix=f"check that the Cell's PostgreSQL is up and the DSN of cell {cell!r} is right",
        )
    if is_transient(exc):
        return TransientError(f"transient error on cell {cell!r}{where}: {text}", details={"sqlstate": state})
    return PermanentError(f"error on cell {cell!r}{where}: {text}", details={"sqlstate": state})


_UNREACHABLE_TEXTS = ("connection refused", "could not connect", "timeout expired", "could not translate host",
                      "no such file", "connection to server", "connect call failed")


def _never_connected(exc: BaseException, lowered: str, dsn: str | None) -> bool:
    """A connection attempt that failed (as opposed to an established connection that broke)."""
    if isinstance(exc, psycopg.OperationalError):
        return any(t in lowered for t in _UNREACHABLE_TEXTS) and not _connection_was_established(exc)
    if isinstance(exc, psycopg.Error):
        return False
    return dsn is not None and isinstance(exc, OSError)


# How libpq (psycopg) and Python's ssl module (asyncpg) word a refused server certificate.
_CERTIFICATE_TEXTS = ("certificate verify failed", "does not match host name", "hostname mismatch",
                      "ip address mismatch", "server certificate for")


def _certificate_rejected(exc: BaseException, lowered: str) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    return isinstance(exc, psycopg.OperationalError | ssl.SSLError) and any(t in lowered for t in _CERTIFICATE_TEXTS)


def certificate_rejected(cell: str, text: str) -> CertificateRejected:
    return CertificateRejected(
        f"cell {cell!r} presented a TLS certificate this client does not accept: {text}",
        fix=f"make sslrootcert in the DSN of cell {cell!r} name the CA that signed the server's certificate, "
        "and connect with the host name the server certificate is issued for (sslmode=verify-full checks "
        "it; verify-ca checks the CA only); or give the server a certificate from that CA for that name",
    )


INSUFFICIENT_PRIVILEGE = "42501"


def permission_denied(cell: str, where: str, text: str) -> PermanentError:
    return PermanentError(
        f"cell {cell!r} denied a privilege{where}: {text}",
        fix=f"grant the role in the DSN of cell {cell!r} what it needs, as "
        "runbooks/least-privilege.sql does (cleanup deletes source rows as orgmove_cleanup)",
        details={"sqlstate": INSUFFICIENT_PRIVILEGE},
    )


def _connection_was_established(exc: BaseException) -> bool:
    # psycopg 3.3 attaches a pgconn even to a refused connection: ask for its status.
    pgconn = getattr(exc, "pgconn", None)
    if pgconn is None:
        return False
    try:
        return bool(pgconn.status == psycopg.pq.ConnStatus.OK)
    except Exception:
        return False


def _host_of(dsn: str | None) -> str:
    if not dsn:
        return ""
    with contextlib.suppress(Exception):
        params = conninfo.conninfo_to_dict(dsn)
        host = params.get("host") or "localhost"
        port = params.get("port") or "5432"
        return f"{host}:{port}"
    return ""


@contextlib.contextmanager
def wrap_errors(cell: str, what: str = "") -> Iterator[None]:
    """Translate driver errors raised inside the block."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, cell=cell, what=what) from exc


# --- asyncpg: the data plane (see docs/adr/0001-data-plane-driver.md) ---------------------------


def _worth_other_link(exc: BaseException) -> bool:
    """allow/prefer retry with the other link after a failure of the first, as libpq does, but not
    when the server could not be reached at all."""
    return not isinstance(exc, TimeoutError | ConnectionRefusedError | socket.gaierror | ConfigError)


async def connect_data_plane(
    dsn: str,
    *,
    cell: str,
    application_name: str,
    statement_timeout_s: float = 0,
    lock_timeout_s: float = 5.0,
    connect_timeout_s: float = 10,
    extra_settings: dict[str, str] | None = None,
) -> Any:
    """An asyncpg connection with the same name, session settings and connection settings (TLS
    included) as :func:`connect`."""
    import asyncpg

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise ConfigError(
            f"the DSN of cell {cell!r} is not a valid libpq connection string: {redact(str(exc))}",
            fix=f"correct the DSN of cell {cell!r} (a postgresql:// URI or key=value pairs)",
        ) from exc
    plan = data_plane_params(params, cell=cell, env=os.environ, home=home_directory(), file_exists=os.path.isfile)
    context = ssl_context(plan.tls, cell=cell) if plan.tls else None
    settings = session_settings(statement_timeout_s=statement_timeout_s, lock_timeout_s=lock_timeout_s,
                                extra=extra_settings)
    settings.pop("client_encoding", None)
    settings["application_name"] = application_name[:63]
    # orgmove's settings win over the DSN's options, as they do on the control plane (later -c wins).
    server_settings = {**plan.server_settings, **settings}
    for number, use_tls in enumerate(plan.attempts, start=1):
        try:
            return await asyncpg.connect(
                host=plan.hosts, port=plan.ports, user=plan.user, password=plan.password,
                passfile=plan.passfile, database=plan.database, ssl=context if use_tls else False,
                direct_tls=bool(use_tls and plan.tls and plan.tls.direct),
                target_session_attrs=plan.target_session_attrs, krbsrvname=plan.krbsrvname,
                gsslib=plan.gsslib, server_settings=server_settings, timeout=connect_timeout_s,
                statement_cache_size=0,
            )
        except Exception as exc:
            if number < len(plan.attempts) and _worth_other_link(exc):
                continue
            raise translate(exc, cell=cell, dsn=dsn) from exc
    raise AssertionError("unreachable: plan.attempts is never empty")
