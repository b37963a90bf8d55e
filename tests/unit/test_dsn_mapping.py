"""The libpq-to-asyncpg mapping of the data plane (orgmove.conninfo.data_plane_params): pure, no PostgreSQL."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from orgmove.conninfo import DataPlaneParams, data_plane_params, parse_options, ssl_context
from orgmove.errors import ConfigError

HOME = Path("/home/op")


def mapped(dsn: str, env: dict[str, str] | None = None, files: set[str] | None = None) -> DataPlaneParams:
    existing = files or set()
    return data_plane_params(
        conninfo_to_dict(dsn), cell="c1", env=env or {}, home=HOME, file_exists=existing.__contains__
    )


def test_key_value_form_keeps_the_tls_settings() -> None:
    params = mapped("host=db1 port=6432 user=u password=p dbname=d sslmode=verify-full sslrootcert=/ca.crt",
                    files={"/ca.crt"})
    assert (params.hosts, params.ports, params.user, params.password, params.database) == (
        ["db1"], [6432], "u", "p", "d")
    assert params.tls is not None
    assert (params.tls.sslmode, params.tls.rootcert, params.tls.check_hostname) == ("verify-full", "/ca.crt", True)
    assert params.attempts == (True,)


def test_uri_form_and_host_lists() -> None:
    params = mapped("postgresql://u@h1:1,h2:2/d?sslmode=require")
    assert (params.hosts, params.ports) == (["h1", "h2"], [1, 2])
    assert params.tls is not None and not params.tls.verifies


@pytest.mark.parametrize(("sslmode", "attempts"), [
    ("disable", (False,)), ("allow", (False, True)), ("prefer", (True, False)),
    ("require", (True,)), ("verify-ca", (True,)), ("verify-full", (True,)),
])
def test_links_are_tried_in_libpq_order(sslmode: str, attempts: tuple[bool, ...]) -> None:
    assert mapped(f"host=h sslmode={sslmode} sslrootcert=/ca", files={"/ca"}).attempts == attempts


def test_default_sslmode_is_prefer() -> None:
    params = mapped("host=h")
    assert params.tls is not None and params.tls.sslmode == "prefer"


def test_require_verifies_the_chain_only_when_a_root_certificate_exists() -> None:
    without = mapped("host=h sslmode=require sslrootcert=/ca")
    with_root = mapped("host=h sslmode=require sslrootcert=/ca", files={"/ca"})
    default_root = mapped("host=h sslmode=require", files={str(HOME / ".postgresql/root.crt")})
    assert without.tls is not None and not without.tls.verifies
    assert with_root.tls is not None and with_root.tls.verifies and not with_root.tls.check_hostname
    assert default_root.tls is not None and default_root.tls.rootcert == str(HOME / ".postgresql/root.crt")


def test_verify_ca_checks_the_chain_not_the_host() -> None:
    tls = mapped("host=h sslmode=verify-ca sslrootcert=/ca", files={"/ca"}).tls
    assert tls is not None and tls.verifies and not tls.check_hostname


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_verify_modes_without_a_root_certificate_are_config_errors(sslmode: str) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        mapped(f"host=h sslmode={sslmode}")


def test_pgsslmode_and_pgsslrootcert_apply_unless_the_dsn_says_otherwise() -> None:
    env = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/env-ca"}
    from_env = mapped("host=h", env=env, files={"/env-ca", "/dsn-ca"})
    assert from_env.tls is not None and (from_env.tls.sslmode, from_env.tls.rootcert) == ("verify-full", "/env-ca")
    from_dsn = mapped("host=h sslmode=verify-ca sslrootcert=/dsn-ca", env=env, files={"/env-ca", "/dsn-ca"})
    assert from_dsn.tls is not None and (from_dsn.tls.sslmode, from_dsn.tls.rootcert) == ("verify-ca", "/dsn-ca")


def test_system_roots_require_verify_full() -> None:
    tls = mapped("host=h sslrootcert=system").tls
    assert tls is not None and tls.system_roots and tls.sslmode == "verify-full"
    with pytest.raises(ConfigError, match="weak sslmode"):
        mapped("host=h sslrootcert=system sslmode=require")


def test_client_certificate_is_used_when_present_and_needs_its_key() -> None:
    tls = mapped("host=h sslcert=/c.crt sslkey=/c.key sslpassword=s", files={"/c.crt", "/c.key"}).tls
    assert tls is not None and (tls.cert, tls.key, tls.key_password) == ("/c.crt", "/c.key", "s")
    absent = mapped("host=h sslcert=/c.crt").tls
    assert absent is not None and absent.cert is None
    with pytest.raises(ConfigError, match="private key"):
        mapped("host=h sslcert=/c.crt sslkey=/c.key", files={"/c.crt"})


@pytest.mark.parametrize("setting", [
    "requirepeer=postgres", "gssencmode=require", "channel_binding=require", "service=prod",
    "require_auth=scram-sha-256", "sslcertmode=require", "load_balance_hosts=random", "replication=database",
])
def test_settings_the_data_plane_cannot_honour_are_refused(setting: str) -> None:
    with pytest.raises(ConfigError, match="cannot honour"):
        mapped(f"host=h {setting}")


def test_an_environment_setting_it_cannot_honour_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PGSERVICE"):
        mapped("host=h", env={"PGSERVICE": "prod"})


def test_harmless_settings_are_accepted() -> None:
    params = mapped("host=h keepalives=1 connect_timeout=3 application_name=x gssencmode=prefer")
    assert params.hosts == ["h"]


def test_options_become_server_settings() -> None:
    assert parse_options(r"-c search_path=a,b -cwork_mem=4MB --geqo-threshold=5 -c x=with\ space", cell="c") == {
        "search_path": "a,b", "work_mem": "4MB", "geqo_threshold": "5", "x": "with space"}
    with pytest.raises(ConfigError):
        parse_options("-d 5", cell="c")


def test_passfile_defaults_to_the_home_pgpass() -> None:
    assert mapped("host=h").passfile == str(HOME / ".pgpass")
    assert mapped("host=h", env={"PGPASSFILE": "/pw"}).passfile == "/pw"


def test_context_without_a_root_certificate_does_not_verify() -> None:
    tls = mapped("host=h sslmode=require").tls
    assert tls is not None
    context = ssl_context(tls, cell="c1")
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
