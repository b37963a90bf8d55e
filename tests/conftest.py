from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgfixtures import Servers, start_servers

pytest_plugins = ["tests.world"]


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[Servers]:
    """Cell-1, cell-2 and the Topology Service database, started once per session."""
    base = Path(tempfile.mkdtemp(prefix="orgmove-test-"))
    with start_servers(base) as servers:
        yield servers


# --- GitLab-shaped fixture data (orgmove.sandbox.seed) -----------------------------------------
# Template databases are built once per session (schema installed; seeded with orgs=3,
# scale="tiny" for `cells`); each test gets fresh clones (CREATE DATABASE ... TEMPLATE, ~100 ms).


class CellDbs:
    """Fresh databases of cell-1 and cell-2 for one test, and an orgmove.toml naming them."""

    def __init__(self, servers: Servers, dbnames: dict[str, str], config_path: Path) -> None:
        self.servers = servers
        self.dbnames = dbnames
        self.names: tuple[str, ...] = tuple(dbnames)
        self.config_path = config_path

    def dsn(self, cell_name: str) -> str:
        return self.servers.admin_dsn(cell_name, self.dbnames[cell_name])

    @property
    def dsns(self) -> dict[str, str]:
        return {name: self.dsn(name) for name in self.names}


def _build_templates(servers: Servers, *, seeded: bool) -> dict[str, str]:
    from orgmove.sandbox.seed import cell_number, install_schema, seed
    from tests.pgfixtures import CELL_NAMES

    prefix = "tpl_seeded" if seeded else "tpl_schema"
    dbnames = {name: servers.create_db(name, prefix=prefix) for name in CELL_NAMES}
    dsns = {name: servers.admin_dsn(name, db) for name, db in dbnames.items()}
    if seeded:
        seed(dsns, orgs=3, scale="tiny", seed=42)
    else:
        for name, dsn in dsns.items():
            install_schema(dsn, cell_number(name), cell=name)
    return dbnames


def _clone_cells(servers: Servers, templates: dict[str, str], tmp_path: Path) -> Iterator[CellDbs]:
    import os

    dbnames: dict[str, str] = {}
    try:
        for name, template in templates.items():
            dbnames[name] = servers.create_db(name, template=template, prefix="cell")
        config_path = tmp_path / "orgmove.toml"
        lines = []
        for name, db in dbnames.items():
            lines += [f'[cells."{name}"]', f'dsn = "{servers.admin_dsn(name, db)}"', ""]
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
        os.chmod(config_path, 0o600)
        yield CellDbs(servers, dbnames, config_path)
    finally:
        for name, db in dbnames.items():
            servers.drop_db(name, db)


@pytest.fixture(scope="session")
def seeded_templates(pg_servers: Servers) -> Iterator[dict[str, str]]:
    """Cell name -> template database: fixture schema, seeded with orgs=3, scale="tiny", seed=42
    (org 1 and org 3 on cell-1, org 2 on cell-2). Do not write to these; clone them (`cells`)."""
    dbnames = _build_templates(pg_servers, seeded=True)
    yield dbnames
    for name, db in dbnames.items():
        pg_servers.drop_db(name, db)


@pytest.fixture(scope="session")
def schema_templates(pg_servers: Servers) -> Iterator[dict[str, str]]:
    """Cell name -> template database with the fixture schema installed and no rows."""
    dbnames = _build_templates(pg_servers, seeded=False)
    yield dbnames
    for name, db in dbnames.items():
        pg_servers.drop_db(name, db)


@pytest.fixture()
def cells(
    pg_servers: Servers, seeded_templates: dict[str, str], tmp_path: Path
) -> Iterator[CellDbs]:
    """Fresh seeded cell-1/cell-2 databases (clones of `seeded_templates`), dropped afterwards.
    `.dsn(name)`, `.dsns`, `.names`, `.config_path` (orgmove.toml, mode 0600)."""
    yield from _clone_cells(pg_servers, seeded_templates, tmp_path)


@pytest.fixture()
def empty_cells(
    pg_servers: Servers, schema_templates: dict[str, str], tmp_path: Path
) -> Iterator[CellDbs]:
    """Like `cells`, but with the fixture schema only (no rows); sequences in each cell's range."""
    yield from _clone_cells(pg_servers, schema_templates, tmp_path)
