"""The Topology Service as several processes on one database: claims, leases and fencing tokens
stay correct under concurrent compare-and-swap from clients of different processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orgmove.sandbox.pgcluster import free_port
from orgmove.topology.client import ServiceRefused, TopologyClient
from tests.integration.test_topology import claims_of, org_claims
from tests.pgfixtures import Servers

TOKEN = "two-processes-token-4e1d"


def _serve(dsn: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "ORGMOVE_TOPOLOGY_TOKEN": TOKEN, "ORGMOVE_TOPOLOGY_DSN": dsn}
    proc = subprocess.Popen([sys.executable, "-m", "orgmove", "topology", "serve", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "service did not start"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def two_services_dsn(pg_servers: Servers) -> Iterator[str]:
    db = pg_servers.create_db("topology", prefix="topo2")
    yield pg_servers.admin_dsn("topology", db)
    pg_servers.drop_db("topology", db)


@pytest.fixture(scope="module")
def two_services(two_services_dsn: str) -> Iterator[list[str]]:
    dsn = two_services_dsn
    procs: list[subprocess.Popen[str]] = []
    try:
        urls = []
        for _ in range(2):
            proc, url = _serve(dsn)
            procs.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)


def test_concurrent_cas_on_one_org_through_two_processes_exactly_one_wins(two_services: list[str]) -> None:
    a, b = two_services
    with TopologyClient(a, TOKEN) as client:
        for cell in ("cell-1", "cell-2"):
            client.register_cell(cell, f"http://{cell}.example:8080")
        org = 7001
        client.create_claims("cell-1", org_claims(org))
    n = 8
    barrier = threading.Barrier(n)
    results: list[Any] = []
    lock = threading.Lock()

    def attempt(url: str) -> None:
        with TopologyClient(url, TOKEN) as c:
            barrier.wait()
            try:
                out: Any = c.begin_move(org, "cell-1", "cell-2", 60)
            except Exception as exc:
                out = exc
            with lock:
                results.append((url, out))

    threads = [threading.Thread(target=attempt, args=(two_services[i % 2],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [(u, r) for u, r in results if not isinstance(r, Exception)]
    losses = [r for _, r in results if isinstance(r, Exception)]
    assert len(wins) == 1, results
    assert all(isinstance(e, ServiceRefused) and e.reason == "move_in_progress" for e in losses), losses
    winner_url, move = wins[0]
    loser_url = b if winner_url == a else a
    # The other process sees the same lease and refuses a stale fencing token ...
    with TopologyClient(loser_url, TOKEN) as other:
        assert [m.move_id for m in other.moves_for_org(org)] == [move.move_id]
        other.fence(move.move_id, move.fencing_token)
        with pytest.raises(ServiceRefused):
            other.commit_move(move.move_id, move.fencing_token + 1, "cell-1")
        assert other.owner_of_org(org) == "cell-1"
        # ... and commits with the right one: every claim moves exactly once.
        other.commit_move(move.move_id, move.fencing_token, "cell-1")
    with TopologyClient(winner_url, TOKEN) as client:
        assert client.owner_of_org(org) == "cell-2"
        assert {c.cell_id for c in claims_of(client, org)} == {"cell-2"}



def test_a_url_list_fails_over_to_the_next_process(two_services: list[str], two_services_dsn: str) -> None:
    _, b = two_services
    org = 7002
    with TopologyClient(b, TOKEN) as direct:
        direct.register_cell("cell-1", "http://cell-1.example:8080")
        direct.create_claims("cell-1", org_claims(org))
    extra_proc, extra = _serve(two_services_dsn)  # a third process on the same database
    try:
        with TopologyClient(f"{extra},{b}", TOKEN, retry_deadline_s=10) as client:
            assert client.owner_of_org(org) == "cell-1"
            assert client.url == extra
            extra_proc.send_signal(signal.SIGINT)
            extra_proc.communicate(timeout=30)
            # the first process is gone: the same client answers from the next one
            assert client.owner_of_org(org) == "cell-1"
            assert client.url == b
    finally:
        if extra_proc.poll() is None:
            extra_proc.kill()
            extra_proc.communicate()
