"""The Topology Service's bounded pool (orgmove/topology/database.py, psycopg_pool) against its
real PostgreSQL database: requests past the maximum wait for a connection and succeed, a
connection the server killed is replaced, and a pool that stays exhausted past its wait timeout
answers HTTP 503 "busy", which the client retries and then reports clearly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from orgmove.errors import TopologyUnavailable
from orgmove.topology.client import TopologyClient
from orgmove.topology.database import APPLICATION_NAME, Database
from orgmove.topology.models import Bucket, ClaimIn, Source, Subject
from orgmove.topology.server import run_in_thread
from tests.pgfixtures import Servers

TOKEN = "pool-test-token"


@pytest.fixture(scope="module")
def topo_dsn(pg_servers: Servers) -> Iterator[str]:
    db = pg_servers.create_db("topology", prefix="topopool")
    dsn = pg_servers.admin_dsn("topology", db)
    Database(dsn, max_size=1).ensure_schema()
    yield dsn
    pg_servers.drop_db("topology", db)


def service_backends(dsn: str, application_name: str) -> list[tuple[int, str | None]]:
    """(pid, wait_event_type) of the pool's connections, as the server sees them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, wait_event_type FROM pg_stat_activity WHERE application_name = %s "
            "AND pid <> pg_backend_pid()", (application_name,)).fetchall()
    return [(int(pid), wait) for pid, wait in rows]


def wait_for(condition: Callable[[], bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_requests_past_the_maximum_wait_and_all_succeed(topo_dsn: str) -> None:
    size, extra, hold_s = 2, 4, 0.4
    name = "orgmove-topology-pooltest-wait"
    database = Database(topo_dsn, max_size=size, wait_timeout_s=30, application_name=name)
    peak: list[int] = []

    def request(i: int) -> int:
        with database.transaction() as cur:
            peak.append(len(service_backends(topo_dsn, name)))
            cur.execute("SELECT %s::int FROM pg_sleep(%s)", (i, hold_s))
            row = cur.fetchone()
            assert row is not None
            return int(next(iter(row.values())))

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=size + extra) as threads:
            answers = list(threads.map(request, range(size + extra)))
        elapsed = time.monotonic() - started
        stats = database.stats()
    finally:
        database.close()
    assert answers == list(range(size + extra))  # every request succeeded
    assert max(peak) <= size  # never more connections than the maximum...
    assert stats.get("requests_queued", 0) >= extra  # ...so the others waited for one
    assert elapsed >= hold_s * (size + extra) / size * 0.9


def test_a_killed_connection_is_replaced(topo_dsn: str) -> None:
    name = "orgmove-topology-pooltest-kill"
    database = Database(topo_dsn, max_size=1, wait_timeout_s=10, application_name=name)

    def backend_pid() -> int:
        with database.transaction() as cur:
            cur.execute("SELECT pg_backend_pid() AS pid")
            row = cur.fetchone()
            assert row is not None
            return int(row["pid"])

    try:
        first = backend_pid()
        with psycopg.connect(topo_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        wait_for(lambda: first not in [pid for pid, _ in service_backends(topo_dsn, name)])
        second = backend_pid()  # the health check found the dead one and opened a new one
        stats = database.stats()
    finally:
        database.close()
    assert second != first
    assert stats.get("connections_lost", 0) >= 1


def org_claim(org: int) -> ClaimIn:
    return ClaimIn(bucket=Bucket(type="organization_id", value=str(org)),
                   subject=Subject(type="organization", id=org),
                   source=Source(type="organizations", rails_primary_key=org))


def test_an_exhausted_pool_answers_503_busy_and_the_client_retries(topo_dsn: str) -> None:
    org = 7001
    with run_in_thread(topo_dsn, TOKEN, reap_interval_s=3600, pool_size=1,
                       pool_wait_timeout_s=0.5) as url, \
            TopologyClient(url, TOKEN, retry_deadline_s=30) as patient, \
            TopologyClient(url, TOKEN, retry_deadline_s=1.5) as impatient:
        patient.register_cell("cell-1", "http://cell-1.example:8080")
        patient.register_cell("cell-2", "http://cell-2.example:8080")
        patient.create_claims("cell-1", [org_claim(org)])
        blocked: list[BaseException | None] = []
        with psycopg.connect(topo_dsn) as locker:
            # Hold the organization's row: a move of it keeps the pool's only connection busy.
            locker.execute("INSERT INTO topology.organizations (id) VALUES (%s) ON CONFLICT DO NOTHING", (str(org),))
            locker.commit()
            locker.execute("SELECT 1 FROM topology.organizations WHERE id = %s FOR UPDATE", (str(org),))

            def mutation() -> None:
                try:
                    patient.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
                    blocked.append(None)
                except BaseException as exc:  # reported by the assertion below
                    blocked.append(exc)

            holder = threading.Thread(target=mutation)
            holder.start()
            wait_for(lambda: any(wait == "Lock" for _, wait in service_backends(topo_dsn, APPLICATION_NAME)))

            # The HTTP answer itself: 503, code busy, retryable, and a message that says why.
            raw = httpx.get(f"{url}/v1/organizations/{org}", timeout=10)
            assert raw.status_code == 503
            body = raw.json()
            assert body["code"] == "busy" and body["retryable"] is True
            assert "all 1 connections" in body["message"] and "pool size" in body["fix"]
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 503

            # The client retries 503s, then gives up with a clear, retryable error.
            with pytest.raises(TopologyUnavailable, match="busy.*gave up after") as caught:
                impatient.get_organization(org)
            assert caught.value.retryable

            # A request that outlives the busy spell succeeds by retrying.
            release = threading.Timer(1.5, locker.commit)
            release.start()
            assert patient.get_organization(org).owner_cell == "cell-1"
            release.join()
        holder.join(timeout=15)
        assert blocked == [None]
        assert [m.status for m in patient.moves_for_org(org)] == ["begun"]

