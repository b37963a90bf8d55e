"""A whole world for move tests: seeded Cells with the write fence installed, a real Topology
Service (HTTP, its own database) that knows the cells and every organization's claims, and a
config file naming all of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from orgmove import state
from orgmove.config import Config, load_config
from orgmove.topology.client import TopologyClient, seed_claims
from orgmove.topology.server import run_in_thread

TOKEN = "test-topology-token-5f3a"


@dataclass
class World:
    cells: object
    url: str
    client: TopologyClient
    config_path: Path

    def dsn(self, cell: str) -> str:
        return self.cells.dsn(cell)  # type: ignore[attr-defined]

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def owner(self, org: int) -> str | None:
        return self.client.owner_of_org(org)

    def org_state(self, org: int) -> str:
        return self.client.org_state(org)


def can_write(dsn: str, org: int) -> bool:
    """Does the Cell's write fence let a cooperating writer write the org's rows?"""
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute("SELECT orgmove.assert_writable(%s::text)", (str(org),))
            return True
        except psycopg.errors.ReadOnlySqlTransaction:
            return False


@pytest.fixture()
def world(cells, pg_servers, tmp_path: Path) -> Iterator[World]:  # type: ignore[no-untyped-def]
    for name in cells.names:
        with psycopg.connect(cells.dsn(name), autocommit=True) as conn:
            state.install_cell_schema(conn)
    dbname = pg_servers.create_db("topology", prefix="topo")
    try:
        with run_in_thread(pg_servers.admin_dsn("topology", dbname), TOKEN) as url:
            client = TopologyClient(url, TOKEN, retry_deadline_s=5.0)
            request_cleanup = client.close
            for i, name in enumerate(cells.names, 1):
                client.register_cell(name, f"cell{i}.example:5432")
            seed_claims(client, cells.dsns)
            config_path = cells.config_path
            text = config_path.read_text()
            text += f'\n[topology]\nurl = "{url}"\ntoken = "{TOKEN}"\n'
            text += f'\n[defaults]\nplans_dir = "{tmp_path / "plans"}"\nlock_timeout_s = 5\n'
            config_path.write_text(text)
            try:
                yield World(cells, url, client, config_path)
            finally:
                request_cleanup()
    finally:
        pg_servers.drop_db("topology", dbname)
