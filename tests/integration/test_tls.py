"""TLS on both planes against a local cluster that accepts only TLS (``hostssl`` lines only).

The certificates are made here with the ``openssl`` command: a CA, a server certificate it signs
for the name ``localhost`` only, and a second, unrelated CA. Every assertion reads the server's own
view of the session (``pg_stat_ssl``) or the refusal the connection attempt ends with.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orgmove import db
from orgmove.errors import AuthenticationFailed, CellUnreachable, ConfigError, OrgmoveError
from orgmove.sandbox.pgcluster import LocalCluster, find_pg_bin, free_port

PASSWORD = "pw-tls-test-only"
SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=orgmove test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )


def _make_server_cert(directory: Path, ca: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=directory,
    )
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=directory,
    )


@dataclass
class TlsServer:
    port: int
    right_ca: Path
    wrong_ca: Path
    missing_ca: Path

    def dsn(self, host: str = "127.0.0.1", **settings: str | Path) -> str:
        """key=value form: the form whose TLS settings the data plane used to drop."""
        words = [f"host={host}", f"port={self.port}", "user=postgres", f"password={PASSWORD}", "dbname=postgres"]
        words += [f"{key}={value}" for key, value in settings.items()]
        return " ".join(words)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    try:
        find_pg_bin()
    except OrgmoveError as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.mktemp("tls")
    clients = base / "client"
    clients.mkdir()
    _make_ca(clients, "right-ca")
    _make_ca(clients, "wrong-ca")
    cluster_dir = base / "cluster"
    server_tls = cluster_dir / "tls"
    server_tls.mkdir(parents=True)
    for suffix in ("crt", "key"):
        shutil.copy(clients / f"right-ca.{suffix}", server_tls / f"right-ca.{suffix}")
    _make_server_cert(server_tls, "right-ca")
    (server_tls / "server.key").chmod(0o600)  # the server refuses a key others can read
    cluster = LocalCluster(
        cluster_dir, free_port(), password=PASSWORD,
        settings={
            "ssl": "on",
            "ssl_cert_file": f"'{server_tls / 'server.crt'}'",
            "ssl_key_file": f"'{server_tls / 'server.key'}'",
        },
    )
    cluster.init()  # hands the directory (keys included) to the server user
    # TLS only: no plain `host` line, so a connection without TLS finds no entry.
    (cluster.data_dir / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
    )
    cluster.start()
    try:
        yield TlsServer(cluster.port, clients / "right-ca.crt", clients / "wrong-ca.crt", clients / "absent.crt")
    finally:
        cluster.destroy()


def control_plane_ssl(dsn: str) -> bool:
    with db.connect(dsn, cell="tls", application_name="orgmove-test-tls") as conn:
        row = conn.execute(SSL_IN_USE).fetchone()
        assert row is not None
        return bool(row[0])


def data_plane_ssl(dsn: str) -> bool:
    async def probe() -> bool:
        conn = await db.connect_data_plane(dsn, cell="tls", application_name="orgmove-test-tls")
        try:
            return bool(await conn.fetchval(SSL_IN_USE))
        finally:
            await conn.close()

    return asyncio.run(probe())


PLANES = {"control plane (psycopg)": control_plane_ssl, "data plane (asyncpg)": data_plane_ssl}
both_planes = pytest.mark.parametrize("ssl_in_use", PLANES.values(), ids=list(PLANES))


@both_planes
def test_verify_full_with_the_right_root_and_host_uses_tls(tls_server: TlsServer, ssl_in_use) -> None:
    assert ssl_in_use(tls_server.dsn("localhost", sslmode="verify-full", sslrootcert=tls_server.right_ca))


@both_planes
def test_verify_full_as_a_uri_uses_tls(tls_server: TlsServer, ssl_in_use) -> None:
    uri = (f"postgresql://postgres:{PASSWORD}@localhost:{tls_server.port}/postgres"
           f"?sslmode=verify-full&sslrootcert={tls_server.right_ca}")
    assert ssl_in_use(uri)


@both_planes
@pytest.mark.parametrize("sslmode", ["verify-full", "verify-ca", "require"])
def test_a_server_certificate_from_another_ca_is_refused(tls_server: TlsServer, ssl_in_use, sslmode: str) -> None:
    # require with a root certificate verifies the chain, as libpq documents.
    with pytest.raises(CellUnreachable, match="certificate verify failed"):
        ssl_in_use(tls_server.dsn("localhost", sslmode=sslmode, sslrootcert=tls_server.wrong_ca))


@both_planes
def test_verify_full_refuses_a_certificate_for_another_host(tls_server: TlsServer, ssl_in_use) -> None:
    # The certificate names localhost, not 127.0.0.1.
    with pytest.raises(CellUnreachable):
        ssl_in_use(tls_server.dsn("127.0.0.1", sslmode="verify-full", sslrootcert=tls_server.right_ca))


@both_planes
def test_verify_ca_checks_the_chain_not_the_host(tls_server: TlsServer, ssl_in_use) -> None:
    assert ssl_in_use(tls_server.dsn("127.0.0.1", sslmode="verify-ca", sslrootcert=tls_server.right_ca))


@both_planes
def test_require_without_a_root_certificate_uses_tls_without_verifying(tls_server: TlsServer, ssl_in_use) -> None:
    # No root certificate file: libpq encrypts but verifies nothing (the wrong host is accepted too).
    assert ssl_in_use(tls_server.dsn("127.0.0.1", sslmode="require", sslrootcert=tls_server.missing_ca))


@both_planes
@pytest.mark.parametrize("sslmode", ["prefer", "allow"])
def test_prefer_and_allow_end_on_tls_with_a_tls_only_server(tls_server: TlsServer, ssl_in_use, sslmode: str) -> None:
    # allow tries plain text first; the server refuses it and the retry over TLS succeeds.
    assert ssl_in_use(tls_server.dsn("127.0.0.1", sslmode=sslmode, sslrootcert=tls_server.missing_ca))


@both_planes
def test_disable_is_refused_by_the_server(tls_server: TlsServer, ssl_in_use) -> None:
    # libpq reports the pre-authentication refusal without a SQLSTATE, so the control plane
    # classes it as unreachable; asyncpg carries 28000 (authentication failed).
    with pytest.raises((AuthenticationFailed, CellUnreachable), match="no encryption"):
        ssl_in_use(tls_server.dsn("127.0.0.1", sslmode="disable"))


@both_planes
def test_pgsslmode_and_pgsslrootcert_apply_to_both_planes(
    tls_server: TlsServer, ssl_in_use, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(tls_server.wrong_ca))
    with pytest.raises(CellUnreachable, match="certificate verify failed"):
        ssl_in_use(tls_server.dsn("localhost"))
    monkeypatch.setenv("PGSSLROOTCERT", str(tls_server.right_ca))
    assert ssl_in_use(tls_server.dsn("localhost"))


def test_verify_full_without_a_root_certificate_is_a_config_error_on_the_data_plane(tls_server: TlsServer) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        data_plane_ssl(tls_server.dsn("localhost", sslmode="verify-full", sslrootcert=tls_server.missing_ca))
    assert caught.value.exit_code == 2
