"""The TopologyAPI contract (tests/topology_contract.py) on the real thing: TopologyClient over
HTTP, the service (orgmove/topology/server.py) and its PostgreSQL database. A lease is made to
expire by setting its end into the past in the database (the reaper is idle: 3600 s)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from orgmove.topology.client import TopologyClient
from orgmove.topology.models import Move
from orgmove.topology.server import run_in_thread
from tests.pgfixtures import Servers
from tests.topology_contract import BEHAVIOURS, Harness, register_cells

TOKEN = "contract-test-token"


@pytest.fixture(scope="module")
def service(pg_servers: Servers) -> Iterator[tuple[str, str]]:
    db = pg_servers.create_db("topology", prefix="topocontract")
    dsn = pg_servers.admin_dsn("topology", db)
    with run_in_thread(dsn, TOKEN, reap_interval_s=3600) as url:
        yield url, dsn
    pg_servers.drop_db("topology", db)


@pytest.fixture(scope="module")
def harness(service: tuple[str, str]) -> Iterator[Harness]:
    url, dsn = service

    def expire(move: Move) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE topology.moves SET lease_expires_at = clock_timestamp() "
                         "WHERE id = %s", (move.move_id,))

    with TopologyClient(url, TOKEN, retry_deadline_s=5) as client:
        register_cells(client)
        yield Harness(client, expire)


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_contract(harness: Harness, behaviour: str) -> None:
    BEHAVIOURS[behaviour](harness)
