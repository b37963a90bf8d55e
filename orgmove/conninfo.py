"""libpq connection settings for the data plane: asyncpg does not read libpq connection strings,
so a DSN is parsed with libpq's own parser (``conninfo_to_dict``) and mapped here, purely, onto
asyncpg's arguments and an ``ssl.SSLContext`` (see docs/adr/0001-data-plane-driver.md).
``orgmove.db.connect_data_plane`` is the one caller that opens connections with the result."""

from __future__ import annotations

import contextlib
import os
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orgmove.errors import ConfigError

# asyncpg does not read libpq connection strings, so the DSN is parsed with libpq's own parser
# (conninfo_to_dict) and every keyword is either mapped onto asyncpg with libpq's meaning, ignored
# because it cannot change what or whom we connect to, or refused: a setting that the control plane
# (libpq) would honour must never be dropped silently on the data plane.

# libpq's environment variables ("Environment Variables" in the libpq docs); a keyword in the DSN
# overrides its variable, as in libpq.
LIBPQ_ENV_VARS: dict[str, str] = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
    "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING", "service": "PGSERVICE",
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL", "sslcrldir": "PGSSLCRLDIR", "sslcertmode": "PGSSLCERTMODE",
    "sslnegotiation": "PGSSLNEGOTIATION", "sslsni": "PGSSLSNI", "sslcompression": "PGSSLCOMPRESSION",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE", "channel_binding": "PGCHANNELBINDING", "require_auth": "PGREQUIREAUTH",
    "requirepeer": "PGREQUIREPEER", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS", "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB",
}

# Keywords the data plane maps onto asyncpg (below, in data_plane_params).
_MAPPED_KEYWORDS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "options",
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir", "sslcertmode",
    "sslnegotiation", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "target_session_attrs", "krbsrvname", "gsslib",
})
# Keywords that cannot change whom we talk to or how the link is protected: orgmove sets its own
# name and timeout on every connection, asyncpg always speaks UTF8, and TCP keepalives, SNI and
# (obsolete) compression are transport details.
_IGNORED_KEYWORDS = frozenset({
    "application_name", "fallback_application_name", "connect_timeout", "client_encoding",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "sslsni", "sslcompression",
})
# Keywords accepted only with the values that asyncpg's behaviour matches; any other value asks
# for a guarantee asyncpg cannot give (GSS encryption, channel binding, a random host order).
_ACCEPTED_VALUES: dict[str, frozenset[str]] = {
    "gssencmode": frozenset({"disable", "prefer"}),
    "channel_binding": frozenset({"disable", "prefer"}),
    "load_balance_hosts": frozenset({"disable"}),
}

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")


@dataclass(frozen=True)
class TlsPlan:
    """How the TLS link of a data-plane connection is set up, decided as libpq decides it."""

    sslmode: str
    rootcert: str | None  # the file the server's chain is verified against; None: not verified
    system_roots: bool  # sslrootcert=system: the trust store of the SSL library
    check_hostname: bool  # verify-full only
    crl: str | None
    crldir: str | None
    cert: str | None  # client certificate, sent when the file exists (as libpq does)
    key: str | None
    key_password: str
    min_version: str
    max_version: str | None
    direct: bool  # sslnegotiation=direct: TLS from the first byte

    @property
    def verifies(self) -> bool:
        return self.system_roots or self.rootcert is not None


@dataclass(frozen=True)
class DataPlaneParams:
    """asyncpg's view of one libpq DSN (plus the PG* environment)."""

    hosts: list[str] | None
    ports: list[int] | None
    user: str | None
    password: str | None
    passfile: str | None
    database: str | None
    server_settings: dict[str, str]
    target_session_attrs: str | None
    krbsrvname: str | None
    gsslib: str | None
    tls: TlsPlan | None  # None: sslmode=disable
    # The links tried, in libpq's order: True is TLS. allow tries plain text first, prefer TLS first;
    # the second is tried only when the first fails before the session starts.
    attempts: tuple[bool, ...]


def _unsupported(cell: str, key: str, value: str, source: str) -> ConfigError:
    return ConfigError(
        f"{source} of cell {cell!r} sets {key}={value!r}, which the data plane (asyncpg) cannot honour; "
        "orgmove refuses to connect rather than silently drop a connection setting",
        fix=f"remove {key} from {source} (docs/configuration.md lists the settings both planes honour)",
    )


def effective_conninfo(params: Mapping[str, object], env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The keywords libpq would use: the DSN's, then the PG* variables for the others. Also returns,
    per keyword, where it came from (for error messages)."""
    merged: dict[str, str] = {}
    source: dict[str, str] = {}
    for key, var in LIBPQ_ENV_VARS.items():
        if env.get(var):
            merged[key], source[key] = env[var], f"the environment variable {var}"
    for key, value in params.items():
        if value is None or value == "":
            continue
        merged[key], source[key] = str(value), "the DSN"
    return merged, source


def data_plane_params(
    params: Mapping[str, object],
    *,
    cell: str,
    env: Mapping[str, str],
    home: Path | None,
    file_exists: Callable[[str], bool],
) -> DataPlaneParams:
    """Map libpq connection keywords (``conninfo_to_dict``) onto asyncpg, with libpq's semantics.

    Pure: the environment, the home directory (for ``~/.postgresql`` and ``~/.pgpass``) and the
    file test are given. Raises :class:`ConfigError` for a setting the data plane cannot honour.
    """
    conf, source = effective_conninfo(params, env)
    for key, value in conf.items():
        allowed = _ACCEPTED_VALUES.get(key)
        if allowed is not None:
            if value not in allowed:
                raise _unsupported(cell, key, value, source[key])
        elif key not in _MAPPED_KEYWORDS and key not in _IGNORED_KEYWORDS:
            raise _unsupported(cell, key, value, source[key])

    hosts = _split_list(conf.get("host"))
    if "hostaddr" in conf:
        if hosts:
            # asyncpg cannot dial one address while verifying and looking up ~/.pgpass by another name.
            raise _unsupported(cell, "hostaddr", conf["hostaddr"], source["hostaddr"])
        hosts = _split_list(conf["hostaddr"])
    ports = _ports(conf.get("port"), cell, source.get("port", "the DSN"))
    tsa = conf.get("target_session_attrs")
    if tsa is not None and tsa not in _SESSION_ATTRS:
        raise _bad_value(cell, "target_session_attrs", tsa, _SESSION_ATTRS)
    passfile = conf.get("passfile") or (str(home / ".pgpass") if home else None)
    tls = _tls_plan(conf, cell=cell, home=home, file_exists=file_exists)
    mode = tls.sslmode if tls else "disable"
    attempts = {"disable": (False,), "allow": (False, True), "prefer": (True, False)}.get(mode, (True,))
    return DataPlaneParams(
        hosts=hosts, ports=ports, user=conf.get("user"), password=conf.get("password"), passfile=passfile,
        database=conf.get("dbname"), server_settings=parse_options(conf.get("options", ""), cell=cell),
        target_session_attrs=tsa, krbsrvname=conf.get("krbsrvname"), gsslib=conf.get("gsslib"),
        tls=tls, attempts=attempts,
    )


def _bad_value(cell: str, key: str, value: str, allowed: tuple[str, ...]) -> ConfigError:
    return ConfigError(
        f"the DSN of cell {cell!r} sets {key}={value!r}, which is not a valid value",
        fix=f"use one of: {', '.join(allowed)}",
    )


def _split_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [part.strip() for part in value.split(",")]


def _ports(value: str | None, cell: str, source: str) -> list[int] | None:
    if not value:
        return None
    try:
        # An empty entry in a list means the default port, as in libpq.
        return [int(p) if p.strip() else 5432 for p in value.split(",")]
    except ValueError:
        raise ConfigError(
            f"{source} of cell {cell!r} gives port={value!r}, which is not a port number",
            fix="give a number (or a comma-separated list, one per host)",
        ) from None


def _tls_plan(conf: Mapping[str, str], *, cell: str, home: Path | None,
              file_exists: Callable[[str], bool]) -> TlsPlan | None:
    dot_pg = home / ".postgresql" if home else None
    rootcert_given = conf.get("sslrootcert")
    sslmode = conf.get("sslmode")
    if rootcert_given == "system":
        # libpq 16+: the system trust store only makes sense with a host check.
        if sslmode is None:
            sslmode = "verify-full"
        elif sslmode != "verify-full":
            raise ConfigError(
                f"the DSN of cell {cell!r} sets sslrootcert=system with the weak sslmode={sslmode!r}",
                fix="use sslmode=verify-full with sslrootcert=system",
            )
    sslmode = sslmode or "prefer"
    if sslmode not in SSL_MODES:
        raise _bad_value(cell, "sslmode", sslmode, SSL_MODES)
    negotiation = conf.get("sslnegotiation", "postgres")
    if negotiation not in ("postgres", "direct"):
        raise _bad_value(cell, "sslnegotiation", negotiation, ("postgres", "direct"))
    if negotiation == "direct" and sslmode not in ("require", "verify-ca", "verify-full"):
        raise ConfigError(
            f"the DSN of cell {cell!r} sets sslnegotiation=direct with the weak sslmode={sslmode!r}",
            fix="use sslmode=require, verify-ca or verify-full with sslnegotiation=direct",
        )
    if sslmode == "disable":
        return None
    for version_key in ("ssl_min_protocol_version", "ssl_max_protocol_version"):
        if version_key in conf and conf[version_key] not in _TLS_VERSIONS:
            raise _bad_value(cell, version_key, conf[version_key], _TLS_VERSIONS)

    # libpq verifies the server's chain whenever a root certificate file exists, whatever the mode
    # (so require with a root certificate behaves like verify-ca); verify-ca and verify-full
    # without one are errors; the host name is checked by verify-full only.
    system_roots = rootcert_given == "system"
    rootcert: str | None = None
    if not system_roots:
        candidate = rootcert_given or (str(dot_pg / "root.crt") if dot_pg else None)
        if candidate and file_exists(candidate):
            rootcert = candidate
        elif sslmode.startswith("verify-"):
            shown = candidate or "~/.postgresql/root.crt"
            raise ConfigError(
                f"cell {cell!r} uses sslmode={sslmode} but the root certificate file {shown!r} does not exist",
                fix="set sslrootcert to the CA certificate that signed the server's certificate (or "
                "sslrootcert=system for the system's trusted roots), or use a weaker sslmode",
            )
    crl = conf.get("sslcrl")
    crldir = conf.get("sslcrldir")
    if not crl and not crldir and dot_pg:
        crl = str(dot_pg / "root.crl")

    certmode = conf.get("sslcertmode", "allow")
    if certmode not in ("disable", "allow"):
        raise _unsupported(cell, "sslcertmode", certmode, "the DSN")
    cert: str | None = None
    key: str | None = None
    if certmode == "allow":
        cert_file = conf.get("sslcert") or (str(dot_pg / "postgresql.crt") if dot_pg else None)
        # As libpq: a missing certificate file means no client certificate, but a certificate
        # without its key is an error.
        if cert_file and file_exists(cert_file):
            cert = cert_file
            key = conf.get("sslkey") or (str(dot_pg / "postgresql.key") if dot_pg else None)
            if not key or not file_exists(key):
                raise ConfigError(
                    f"cell {cell!r} has the client certificate {cert!r} but not its private key file "
                    f"{key or '~/.postgresql/postgresql.key'!r}",
                    fix="set sslkey to the certificate's private key file",
                )
    return TlsPlan(
        sslmode=sslmode, rootcert=rootcert, system_roots=system_roots,
        check_hostname=sslmode == "verify-full", crl=crl if rootcert or system_roots else None,
        crldir=crldir if rootcert or system_roots else None, cert=cert, key=key,
        key_password=conf.get("sslpassword", ""),
        min_version=conf.get("ssl_min_protocol_version", "TLSv1.2"),
        max_version=conf.get("ssl_max_protocol_version"), direct=negotiation == "direct",
    )


def parse_options(options: str, *, cell: str) -> dict[str, str]:
    """libpq ``options`` (``-c name=value``, ``--name=value``; backslash escapes a space) as
    asyncpg ``server_settings``."""
    words: list[str] = []
    current: list[str] = []
    chars = iter(options)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    settings: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            assignment, i = words[i + 1], i + 2
        elif word.startswith("-c") and len(word) > 2:
            assignment, i = word[2:], i + 1
        elif word.startswith("--") and "=" in word:
            assignment, i = word[2:], i + 1
            name, _, value = assignment.partition("=")
            assignment = f"{name.replace('-', '_')}={value}"
        else:
            raise ConfigError(
                f"the options of cell {cell!r} hold {word!r}, which the data plane (asyncpg) cannot send",
                fix="give server settings as -c name=value in options",
            )
        name, eq, value = assignment.partition("=")
        if not eq or not name:
            raise ConfigError(
                f"the options of cell {cell!r} hold {assignment!r}, which is not name=value",
                fix="give server settings as -c name=value in options",
            )
        settings[name] = value
    return settings


def ssl_context(tls: TlsPlan, *, cell: str) -> ssl.SSLContext:
    """The SSLContext for a :class:`TlsPlan` (reads the certificate files)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    try:
        if tls.system_roots:
            context.load_default_certs()
        elif tls.rootcert:
            context.load_verify_locations(cafile=tls.rootcert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cell {cell!r}: cannot load the root certificate {tls.rootcert or 'system'!r}: {exc}",
            fix="point sslrootcert at a readable PEM file of CA certificates",
        ) from exc
    if tls.verifies:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = tls.check_hostname
        if tls.crl or tls.crldir:
            # libpq uses a revocation list when it can load one, and silently goes without otherwise.
            with contextlib.suppress(OSError, ssl.SSLError):
                context.load_verify_locations(cafile=tls.crl, capath=tls.crldir)
                context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    else:
        context.verify_mode = ssl.CERT_NONE
    if tls.cert and tls.key:
        _check_key_file(tls.key, cell=cell)
        password = tls.key_password
        try:
            # Never the interactive prompt of OpenSSL: a job has no terminal.
            context.load_cert_chain(tls.cert, keyfile=tls.key, password=lambda: password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cell {cell!r}: cannot load the client certificate {tls.cert!r} with key {tls.key!r}: {exc}",
                fix="check sslcert, sslkey and sslpassword",
            ) from exc
    context.minimum_version = ssl.TLSVersion[tls.min_version.replace(".", "_")]
    if tls.max_version:
        context.maximum_version = ssl.TLSVersion[tls.max_version.replace(".", "_")]
    # libpq 17+ sends this ALPN protocol; servers require it for direct TLS.
    context.set_alpn_protocols(["postgresql"])
    return context


def _check_key_file(path: str, *, cell: str) -> None:
    """libpq's check: a private key must be 0600 or less (0640 or less when root owns it)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cell {cell!r}: cannot read the private key file {path!r}: {exc}",
                          fix="check sslkey") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"cell {cell!r}: the private key file {path!r} is not a regular file", fix="check sslkey")
    if (st.st_uid == os.geteuid() and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)) or (
        st.st_uid == 0 and st.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO)
    ):
        raise ConfigError(
            f"cell {cell!r}: the private key file {path!r} has group or world access",
            fix=f"chmod 600 {path} (or 640 if root owns it), as libpq requires",
        )


def home_directory() -> Path | None:
    try:
        return Path.home()
    except (RuntimeError, KeyError):
        return None
