"""The Topology Service over real HTTP against its real PostgreSQL database."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from orgmove.errors import AuthenticationFailed, TopologyUnavailable, UnknownOrganization
from orgmove.topology.client import (
    ClaimLeased,
    LeaseExpired,
    ServiceRefused,
    TopologyClient,
    seed_claims,
)
from orgmove.topology.models import Bucket, Claim, ClaimIn, Source, Subject, route_prefixes
from orgmove.topology.server import parse_listen, run_in_thread
from tests.pgfixtures import Servers

TOKEN = "s3cret-topology-token"
_org_ids = itertools.count(1000)


@pytest.fixture(scope="module")
def topo_dsn(pg_servers: Servers) -> Iterator[str]:
    db = pg_servers.create_db("topology", prefix="topo")
    yield pg_servers.admin_dsn("topology", db)
    pg_servers.drop_db("topology", db)


@pytest.fixture(scope="module")
def topo_url(topo_dsn: str) -> Iterator[str]:
    # A long reap interval: tests of lease expiry must see the 410, not the reaper's abort.
    with run_in_thread(topo_dsn, TOKEN, reap_interval_s=3600) as url:
        yield url


@pytest.fixture(scope="module")
def client(topo_url: str) -> Iterator[TopologyClient]:
    with TopologyClient(topo_url, TOKEN, timeout_s=10, retry_deadline_s=5) as c:
        c.register_cell("cell-1", "http://cell-1.example:8080")
        c.register_cell("cell-2", "http://cell-2.example:8080")
        yield c


def org_claims(org: int, routes: int = 3) -> list[ClaimIn]:
    recs = [ClaimIn(bucket=Bucket(type="organization_id", value=str(org)),
                    subject=Subject(type="organization", id=org),
                    source=Source(type="organizations", rails_primary_key=org))]
    recs.append(ClaimIn(bucket=Bucket(type="route", value=f"g{org}"),
                        subject=Subject(type="group", id=org * 10),
                        source=Source(type="routes", rails_primary_key=org * 100),
                        organization_id=org))
    for i in range(1, routes):
        recs.append(ClaimIn(bucket=Bucket(type="route", value=f"g{org}/p{i}"),
                            subject=Subject(type="project", id=org * 10 + i),
                            source=Source(type="routes", rails_primary_key=org * 100 + i),
                            organization_id=org))
    return recs


def new_org(client: TopologyClient, cell: str = "cell-1", routes: int = 3) -> int:
    org = next(_org_ids)
    client.create_claims(cell, org_claims(org, routes))
    return org


def claims_of(client: TopologyClient, org: int) -> list[Claim]:
    return sorted(client.iter_claims(organization_id=org),
                  key=lambda c: (c.bucket.type, c.bucket.value))


def route(org: int, value: str = "") -> ClaimIn:
    return ClaimIn(bucket=Bucket(type="route", value=value or f"r{org}"),
                   subject=Subject(type="group", id=org), organization_id=org,
                   source=Source(type="routes", rails_primary_key=org))


# --- basics ------------------------------------------------------------------------------------


def test_health_openapi_and_schema_is_idempotent(topo_url: str, topo_dsn: str) -> None:
    assert httpx.get(f"{topo_url}/healthz").json()["status"] == "ok"
    doc = httpx.get(f"{topo_url}/openapi.json").json()
    for path in ("/v1/classify", "/v1/moves", "/v1/moves/{move_id}/commit", "/v1/leases",
                 "/v1/claims", "/v1/claims/batch", "/v1/cells/{name}"):
        assert path in doc["paths"], path
    # A second service on the same database starts fine (schema creation is idempotent).
    with run_in_thread(topo_dsn, TOKEN) as url2:
        assert httpx.get(f"{url2}/healthz").status_code == 200


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:7480") == ("127.0.0.1", 7480)
    assert parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(Exception, match="HOST:PORT"):
        parse_listen("localhost")


def test_route_prefixes() -> None:
    assert route_prefixes("/a/b/-/issues/") == ["a", "a/b", "a/b/-", "a/b/-/issues"]


def test_cells_and_sequence_ranges(client: TopologyClient) -> None:
    cell = client.register_cell("cell-seq-a", "http://a", sequence_start=1, sequence_end=1000)
    again = client.register_cell("cell-seq-a", "http://a", sequence_start=1, sequence_end=1000)
    assert again.version == cell.version  # no change, no bump
    moved = client.register_cell("cell-seq-a", "http://a2", sequence_start=1, sequence_end=1000)
    assert moved.version == cell.version + 1
    with pytest.raises(ServiceRefused) as err:
        client.register_cell("cell-seq-b", "http://b", sequence_start=500, sequence_end=2000)
    assert err.value.reason == "sequence_overlap"
    assert {"cell-1", "cell-2", "cell-seq-a"} <= {c.name for c in client.list_cells()}
    assert client.get_cell("cell-seq-a").sequence_end == 1000


# --- auth --------------------------------------------------------------------------------------


def test_mutations_need_the_bearer_token(topo_url: str, caplog: pytest.LogCaptureFixture) -> None:
    body = {"address": "http://x"}
    r = httpx.put(f"{topo_url}/v1/cells/cell-x", json=body)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.put(f"{topo_url}/v1/cells/cell-x", json=body,
                  headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.post(f"{topo_url}/v1/moves", headers={"Authorization": f"Basic {TOKEN}"},
                   json={"org_id": 1, "from_cell": "a", "to_cell": "b", "lease_ttl_s": 1})
    assert r.status_code == 401
    assert TOKEN not in r.text
    # Reads are open.
    assert httpx.get(f"{topo_url}/v1/cells").status_code == 200
    with TopologyClient(topo_url, "wrong-token") as bad, pytest.raises(AuthenticationFailed):
        bad.register_cell("cell-x", "http://x")
    with TopologyClient(topo_url, None) as anon, pytest.raises(AuthenticationFailed):
        anon.begin_move(1, "cell-1", "cell-2", 10)
    ok = httpx.put(f"{topo_url}/v1/cells/cell-x", json=body,
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert TOKEN not in caplog.text


def test_no_token_means_open_service(topo_dsn: str) -> None:
    with run_in_thread(topo_dsn, None) as url, TopologyClient(url) as c:
        assert c.register_cell("cell-open", "http://open").name == "cell-open"


# --- classify ------------------------------------------------------------------------------------


def test_classify_proxy_and_reject(client: TopologyClient, topo_url: str) -> None:
    org = new_org(client)
    by_id = client.classify("organization_id", str(org))
    assert by_id.action == "proxy" and by_id.cell == "cell-1"
    assert by_id.address == "http://cell-1.example:8080"
    assert by_id.org_id == str(org) and by_id.org_state == "active" and by_id.version is not None
    # Route classify takes the longest claimed prefix of the path.
    deep = client.classify("route", f"g{org}/p1/-/issues/3")
    assert deep.action == "proxy" and deep.cell == "cell-1" and deep.org_id == str(org)
    assert deep.bucket == Bucket(type="route", value=f"g{org}/p1")
    assert client.classify("route", f"g{org}/unknown-project").bucket == Bucket(
        type="route", value=f"g{org}")
    rejected = client.classify("route", "nobody/claims/this")
    assert rejected.action == "reject" and rejected.cell is None
    r = httpx.get(f"{topo_url}/v1/classify", params={"type": "route", "value": "nobody"})
    assert r.status_code == 404 and r.json()["action"] == "reject"
    r = httpx.post(f"{topo_url}/v1/classify", json={"type": "route", "value": f"g{org}"})
    assert r.status_code == 200 and r.json()["cell"] == "cell-1"
    r = httpx.get(f"{topo_url}/v1/classify", params={"type": "bogus", "value": "x"})
    assert r.status_code == 422 and r.json()["code"] == "bad_request"
    assert client.owner_of_org(org) == "cell-1"
    assert client.owner_of_org(99_999_999) is None
    assert client.owner_of_org(str(org)) == "cell-1"  # plan org keys may be strings
    assert client.owner_of_org("not-a-number") is None
    with pytest.raises(UnknownOrganization):
        client.org_state(99_999_999)


# --- claims: lease first, commit later -----------------------------------------------------------


def test_begin_update_conflicts(client: TopologyClient) -> None:
    org = new_org(client)
    # Already taken (permanent), all or nothing: the new bucket in the batch is not created.
    fresh = route(org, f"fresh-{org}")
    with pytest.raises(ServiceRefused) as err:
        client.begin_update("cell-1", [fresh, route(org, f"g{org}")])
    assert err.value.reason == "claim_already_taken" and not err.value.retryable
    assert client.classify("route", f"fresh-{org}").action == "reject"

    # Leased: "try again later" while another lease holds the bucket.
    lease = client.begin_update("cell-1", [fresh])
    assert [c.status for c in lease.created] == ["LEASE_CREATING"]
    assert client.classify("route", f"fresh-{org}").action == "reject"  # not committed yet
    with pytest.raises(ClaimLeased) as leased:
        client.begin_update("cell-1", [fresh])
    assert leased.value.retryable
    assert lease.lease_uuid in {x.uuid for x in client.list_leases(cell_id="cell-1").items}

    # Rollback is idempotent; then the bucket is free again; commit after rollback is refused.
    client.rollback_update(lease.lease_uuid, "cell-1")
    assert client.rollback_update(lease.lease_uuid, "cell-1").status == "rolled_back"
    with pytest.raises(ServiceRefused) as err:
        client.commit_update(lease.lease_uuid, "cell-1")
    assert err.value.reason == "lease_not_pending"

    lease2 = client.begin_update("cell-1", [fresh])
    with pytest.raises(ServiceRefused) as err:
        client.commit_update(lease2.lease_uuid, "cell-2")
    assert err.value.reason == "wrong_cell"
    assert client.commit_update(lease2.lease_uuid, "cell-1").status == "committed"
    assert client.commit_update(lease2.lease_uuid, "cell-1").status == "committed"  # idempotent
    assert client.classify("route", f"fresh-{org}").cell == "cell-1"

    # A claim at most once per batch.
    with pytest.raises(ServiceRefused) as err:
        client.begin_update("cell-1", [route(org, f"dup-{org}"), route(org, f"dup-{org}")])
    assert err.value.reason == "duplicate_record"

    # Claims of an organization come from the cell that owns it.
    with pytest.raises(ServiceRefused) as err:
        client.begin_update("cell-2", [route(org, f"elsewhere-{org}")])
    assert err.value.reason == "wrong_cell"

    # Destroy: only the owning cell; leased while pending; gone after commit.
    with pytest.raises(ServiceRefused) as err:
        client.begin_update("cell-2", destroy_records=[Bucket(type="route", value=f"fresh-{org}")])
    assert err.value.reason == "wrong_cell"
    d = client.begin_update("cell-1", destroy_records=[Bucket(type="route", value=f"fresh-{org}")])
    assert [c.status for c in d.destroying] == ["LEASE_DESTROYING"]
    assert client.classify("route", f"fresh-{org}").action == "proxy"  # still owned until commit
    with pytest.raises(ClaimLeased):
        client.begin_update("cell-1", destroy_records=[Bucket(type="route", value=f"fresh-{org}")])
    client.commit_update(d.lease_uuid, "cell-1")
    assert client.classify("route", f"fresh-{org}").action == "reject"


def test_begin_update_retry_with_same_key_returns_the_first_lease(client: TopologyClient) -> None:
    org = new_org(client)
    first = client.begin_update("cell-1", [route(org)], idempotency_key=f"k-{org}")
    again = client.begin_update("cell-1", [route(org)], idempotency_key=f"k-{org}")
    assert again.lease_uuid == first.lease_uuid
    client.commit_update(first.lease_uuid, "cell-1")


def test_list_records_paging(client: TopologyClient) -> None:
    org = new_org(client, routes=25)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = client.list_claims(organization_id=org, cursor=cursor, limit=10)
        pages += 1
        seen += [c.bucket.value for c in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert len(seen) == len(set(seen)) == 26
    assert len(list(client.iter_claims(organization_id=org, page_size=7))) == 26
    with pytest.raises(ServiceRefused) as err:
        client.list_claims(cursor="not-a-cursor")
    assert err.value.reason == "bad_cursor"


# --- moves -------------------------------------------------------------------------------------


def test_two_concurrent_begins_exactly_one_wins(client: TopologyClient, topo_url: str) -> None:
    org = new_org(client)
    n = 8
    barrier = threading.Barrier(n)
    results: list[Any] = []
    lock = threading.Lock()

    def attempt() -> None:
        with TopologyClient(topo_url, TOKEN) as c:
            barrier.wait()
            try:
                out: Any = c.begin_move(org, "cell-1", "cell-2", 60)
            except Exception as exc:
                out = exc
            with lock:
                results.append(out)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [r for r in results if not isinstance(r, Exception)]
    losses = [r for r in results if isinstance(r, Exception)]
    assert len(wins) == 1, results
    assert all(isinstance(e, ServiceRefused) and e.reason == "move_in_progress" for e in losses)
    assert [m.move_id for m in client.moves_for_org(org)] == [wins[0].move_id]
    client.abort_move(wins[0].move_id, wins[0].fencing_token)


def test_commit_moves_every_claim_and_bumps_versions(client: TopologyClient) -> None:
    org = new_org(client, routes=5)
    other = new_org(client)
    before = claims_of(client, org)
    move = client.begin_move(org, "cell-1", "cell-2", 60)
    assert move.status == "begun" and move.fencing_token >= 1
    assert client.get_organization(org).live_move_id == move.move_id
    renewed = client.renew(move.move_id, move.fencing_token, 120)
    assert renewed.lease_expires_at > move.lease_expires_at

    with pytest.raises(ServiceRefused) as err:
        client.commit_move(move.move_id, move.fencing_token, "cell-1")
    assert err.value.reason == "move_not_fenced"

    fenced = client.fence(move.move_id, move.fencing_token)
    assert fenced.status == "fenced" and fenced.fenced_at is not None
    assert client.fence(move.move_id, move.fencing_token).status == "fenced"  # idempotent
    assert client.org_state(org) == "read_only"
    assert client.classify("route", f"g{org}/p1").org_state == "read_only"
    # No new claims for a fenced organization: try again later.
    with pytest.raises(ClaimLeased):
        client.create_claims("cell-1", [route(org, f"late-{org}")])

    done = client.commit_move(move.move_id, move.fencing_token, "cell-1")
    assert done.status == "committed" and done.committed_at is not None
    assert done.claims_moved == len(before) == 6
    after = claims_of(client, org)
    assert [c.uuid for c in after] == [c.uuid for c in before]
    assert all(c.cell_id == "cell-2" for c in after)
    assert all(a.version == b.version + 1 for a, b in zip(after, before, strict=True))
    assert client.org_state(org) == "active"
    assert client.owner_of_org(org) == "cell-2"
    routed = client.classify("route", f"g{org}/p4/-/merge_requests")
    assert (routed.cell, routed.address, routed.org_state) == (
        "cell-2", "http://cell-2.example:8080", "active")
    assert all(c.cell_id == "cell-1" for c in claims_of(client, other))  # others untouched
    # A retried commit (lost answer) is idempotent and changes nothing.
    assert client.commit_move(move.move_id, move.fencing_token, "cell-1").version == done.version
    assert claims_of(client, org) == after
    assert client.get_move(move.move_id).status == "committed"

    # The next move (back) gets a strictly greater fencing token.
    back = client.begin_move(org, "cell-2", "cell-1", 60)
    assert back.fencing_token > move.fencing_token
    with pytest.raises(ServiceRefused) as err:
        client.abort_move(move.move_id, move.fencing_token)
    assert err.value.reason in ("move_finished", "stale_token")
    client.abort_move(back.move_id, back.fencing_token)
    assert [m.move_id for m in client.moves_for_org(org)] == [back.move_id, move.move_id]


def test_a_claim_leased_by_its_cell_fails_the_whole_flip(client: TopologyClient) -> None:
    # The flip is one compare-and-swap over every claim: one claim held by a pending lease of the
    # owning cell (changed by someone else) must refuse the commit with no claim moved.
    org = new_org(client, routes=4)
    lease = client.begin_update("cell-1", [route(org, f"pending-{org}")])
    before = claims_of(client, org)
    move = client.begin_move(org, "cell-1", "cell-2", 60)
    client.fence(move.move_id, move.fencing_token)
    with pytest.raises(ClaimLeased) as err:
        client.commit_move(move.move_id, move.fencing_token, "cell-1")
    assert err.value.reason == "claim_leased" and f"pending-{org}" in err.value.message
    assert claims_of(client, org) == before  # nothing partial: same cells, same versions
    assert client.owner_of_org(org) == "cell-1" and client.get_move(move.move_id).status == "fenced"
    client.rollback_update(lease.lease_uuid, "cell-1")
    done = client.commit_move(move.move_id, move.fencing_token, "cell-1")
    assert done.claims_moved == len(before) - 1  # the rolled-back claim is gone, the rest moved
    assert {c.cell_id for c in claims_of(client, org)} == {"cell-2"}


def test_commit_with_stale_token_changes_nothing(client: TopologyClient) -> None:
    org = new_org(client)
    move = client.begin_move(org, "cell-1", "cell-2", 60)
    client.fence(move.move_id, move.fencing_token)
    before = claims_of(client, org)
    for token in (move.fencing_token - 1, move.fencing_token + 1):
        with pytest.raises(ServiceRefused) as err:
            client.commit_move(move.move_id, token, "cell-1")
        assert err.value.reason == "stale_token" and err.value.status == 409
    assert claims_of(client, org) == before
    assert client.get_move(move.move_id).status == "fenced"
    assert client.org_state(org) == "read_only"
    client.abort_move(move.move_id, move.fencing_token)


def test_commit_after_lease_expiry_changes_nothing(client: TopologyClient) -> None:
    org = new_org(client)
    move = client.begin_move(org, "cell-1", "cell-2", 0.3)
    client.fence(move.move_id, move.fencing_token)
    before = claims_of(client, org)
    time.sleep(0.5)
    with pytest.raises(LeaseExpired) as err:
        client.commit_move(move.move_id, move.fencing_token, "cell-1")
    assert err.value.status == 410
    with pytest.raises(LeaseExpired):
        client.renew(move.move_id, move.fencing_token, 60)
    assert claims_of(client, org) == before
    assert client.get_move(move.move_id).status == "fenced"
    # A new move takes over an expired one: the old one is aborted, the org is writable again.
    nxt = client.begin_move(org, "cell-1", "cell-2", 60)
    assert nxt.fencing_token == move.fencing_token + 1
    old = client.get_move(move.move_id)
    assert old.status == "aborted" and old.abort_reason and "expired" in old.abort_reason
    assert client.org_state(org) == "active"
    with pytest.raises(ServiceRefused) as stale:
        client.fence(move.move_id, move.fencing_token)
    assert stale.value.reason == "stale_token"
    client.abort_move(nxt.move_id, nxt.fencing_token)


def test_commit_with_wrong_expected_owner_changes_nothing(client: TopologyClient) -> None:
    org = new_org(client)
    move = client.begin_move(org, "cell-1", "cell-2", 60)
    client.fence(move.move_id, move.fencing_token)
    before = claims_of(client, org)
    with pytest.raises(ServiceRefused) as err:
        client.commit_move(move.move_id, move.fencing_token, "cell-2")
    assert err.value.reason == "owner_mismatch"
    assert claims_of(client, org) == before
    assert client.get_move(move.move_id).status == "fenced"
    client.abort_move(move.move_id, move.fencing_token)


def test_begin_refusals(client: TopologyClient) -> None:
    org = new_org(client)
    with pytest.raises(ServiceRefused) as err:
        client.begin_move(org, "cell-2", "cell-1", 60)
    assert err.value.reason == "owner_mismatch" and "cell-1" in err.value.message
    with pytest.raises(UnknownOrganization):
        client.begin_move(99_999_998, "cell-1", "cell-2", 60)
    with pytest.raises(ServiceRefused) as err:
        client.begin_move(org, "cell-1", "cell-nowhere", 60)
    assert err.value.reason == "unknown_cell"
    with pytest.raises(ServiceRefused) as err:
        client.begin_move(org, "cell-1", "cell-1", 60)
    assert err.value.reason == "bad_request"
    # The refusal carries a fix; the move-in-progress one names the live move.
    move = client.begin_move(org, "cell-1", "cell-2", 60)
    with pytest.raises(ServiceRefused) as err:
        client.begin_move(org, "cell-1", "cell-2", 60)
    assert str(move.move_id) in err.value.message and err.value.fix
    assert client.get_move(move.move_id) == move
    client.abort_move(move.move_id, move.fencing_token)


def test_begin_move_retry_with_same_key_is_idempotent(client: TopologyClient) -> None:
    org = new_org(client)
    a = client.begin_move(org, "cell-1", "cell-2", 60, idempotency_key=f"m-{org}")
    b = client.begin_move(org, "cell-1", "cell-2", 60, idempotency_key=f"m-{org}")
    assert a.move_id == b.move_id
    client.abort_move(a.move_id, a.fencing_token)


def test_abort_restores_the_organization(client: TopologyClient) -> None:
    org = new_org(client)
    before = claims_of(client, org)
    move = client.begin_move(org, "cell-1", "cell-2", 60)
    client.fence(move.move_id, move.fencing_token)
    assert client.org_state(org) == "read_only"
    aborted = client.abort_move(move.move_id, move.fencing_token, "verify mismatch")
    assert aborted.status == "aborted" and aborted.abort_reason == "verify mismatch"
    assert client.abort_move(move.move_id, move.fencing_token).status == "aborted"  # idempotent
    assert client.org_state(org) == "active"
    assert client.owner_of_org(org) == "cell-1"
    assert claims_of(client, org) == before
    with pytest.raises(ServiceRefused) as err:
        client.commit_move(move.move_id, move.fencing_token, "cell-1")
    assert err.value.reason == "move_finished"
    assert client.get_organization(org).live_move_id is None


def test_reaper_aborts_expired_moves(client: TopologyClient, topo_dsn: str) -> None:
    org = new_org(client)
    with run_in_thread(topo_dsn, TOKEN, reap_interval_s=0.1) as url, TopologyClient(
        url, TOKEN
    ) as fast:
        move = fast.begin_move(org, "cell-1", "cell-2", 0.3)
        fast.fence(move.move_id, move.fencing_token)
        assert fast.org_state(org) == "read_only"
        deadline = time.monotonic() + 10
        while fast.get_move(move.move_id).status != "aborted":
            assert time.monotonic() < deadline, "the reaper did not abort the expired move"
            time.sleep(0.1)
        assert fast.org_state(org) == "active"
        assert fast.get_move(move.move_id).abort_reason == "lease expired"


# --- client transport ----------------------------------------------------------------------------


def test_client_retries_transient_errors_then_gives_up() -> None:
    sleeps: list[float] = []
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= 2:
            return httpx.Response(503, json={"code": "busy", "message": "db busy", "fix": "retry"})
        assert request.headers["authorization"] == "Bearer t0k"
        return httpx.Response(200, json=[])

    with TopologyClient("http://topology.test", "t0k", transport=httpx.MockTransport(flaky),
                        sleep=sleeps.append) as c:
        assert c.list_cells() == []
    assert calls["n"] == 3 and len(sleeps) == 2

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake_now = [0.0]

    def fake_sleep(s: float) -> None:
        fake_now[0] += s
        time.sleep(0.001)

    with TopologyClient("http://topology.test", transport=httpx.MockTransport(down),
                        retry_deadline_s=0.2, sleep=fake_sleep) as c:
        with pytest.raises(TopologyUnavailable) as err:
            c.get_move("00000000-0000-0000-0000-000000000000")
    assert "gave up" in err.value.message and err.value.fix
    assert "t0k" not in repr(c)


def test_client_unreachable_service() -> None:
    from orgmove.sandbox.pgcluster import free_port

    with TopologyClient(f"http://127.0.0.1:{free_port()}", retry_deadline_s=0.3,
                        timeout_s=1) as c, pytest.raises(TopologyUnavailable):
        c.health()


# --- seeding from the cells' tables --------------------------------------------------------------

_TINY_SCHEMA = """
CREATE TABLE organizations (id bigint PRIMARY KEY, path text NOT NULL);
CREATE TABLE namespaces (id bigint PRIMARY KEY, organization_id bigint NOT NULL);
CREATE TABLE projects (id bigint PRIMARY KEY, namespace_id bigint NOT NULL);
CREATE TABLE routes (id bigint PRIMARY KEY, source_type text NOT NULL, source_id bigint NOT NULL,
                     path text NOT NULL UNIQUE);
"""


def test_seed_claims_from_cell_tables(client: TopologyClient, pg_servers: Servers) -> None:
    org = next(_org_ids)
    db = pg_servers.create_db("cell-1", prefix="seed")
    dsn = pg_servers.admin_dsn("cell-1", db)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_TINY_SCHEMA.encode())
            conn.execute("INSERT INTO organizations VALUES (%s, %s)", (org, f"org{org}"))
            conn.execute("INSERT INTO namespaces VALUES (%s, %s), (%s, %s)",
                         (org * 10, org, org * 10 + 1, org))
            conn.execute("INSERT INTO projects VALUES (%s, %s)", (org * 10 + 5, org * 10 + 1))
            conn.execute(
                "INSERT INTO routes VALUES (%s, 'Namespace', %s, %s), (%s, 'Namespace', %s, %s),"
                " (%s, 'Project', %s, %s)",
                (org * 100, org * 10, f"seed{org}", org * 100 + 1, org * 10 + 1,
                 f"seed{org}/sub", org * 100 + 2, org * 10 + 5, f"seed{org}/sub/proj"),
            )
        assert seed_claims(client, {"cell-1": dsn}) == {"cell-1": 4}
        assert seed_claims(client, {"cell-1": dsn}) == {"cell-1": 0}  # idempotent
        got = client.classify("route", f"seed{org}/sub/proj/-/issues")
        assert (got.cell, got.org_id, got.bucket) == (
            "cell-1", str(org), Bucket(type="route", value=f"seed{org}/sub/proj"))
        proj = [c for c in claims_of(client, org) if c.bucket.value.endswith("proj")][0]
        assert proj.subject == Subject(type="project", id=org * 10 + 5)
        assert proj.source == Source(type="routes", rails_primary_key=org * 100 + 2)
        assert client.owner_of_org(org) == "cell-1"
    finally:
        pg_servers.drop_db("cell-1", db)


# --- the real process ----------------------------------------------------------------------------


def test_serve_runs_as_a_process_and_never_logs_the_token(topo_dsn: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from orgmove.sandbox.pgcluster import free_port

    port = free_port()
    script = (
        "import os; from orgmove.topology.server import serve; "
        f"serve('127.0.0.1:{port}', os.environ['TOPO_DSN'], os.environ['TOPO_TOKEN'])"
    )
    env = {**os.environ, "TOPO_DSN": topo_dsn, "TOPO_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "service did not start"
            time.sleep(0.1)
        with TopologyClient(url, TOKEN) as c:
            assert c.register_cell("cell-proc", "http://proc").name == "cell-proc"
        assert httpx.put(f"{url}/v1/cells/cell-proc", json={"address": "x"},
                         headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "PUT /v1/cells/cell-proc" in out  # the access log is on ...
    assert TOKEN not in out  # ... and never shows the token
    assert "topology service on http://127.0.0.1" in out


# --- organization keys: text, and the migration of a bigint-keyed database ------------------------

_BIGINT_KEYS = """
ALTER TABLE topology.moves DROP CONSTRAINT moves_org_id_fkey;
ALTER TABLE topology.organizations ALTER COLUMN id TYPE bigint USING id::bigint;
ALTER TABLE topology.moves ALTER COLUMN org_id TYPE bigint USING org_id::bigint;
ALTER TABLE topology.moves ADD CONSTRAINT moves_org_id_fkey
    FOREIGN KEY (org_id) REFERENCES topology.organizations (id);
ALTER TABLE topology.claims ALTER COLUMN organization_id TYPE bigint USING organization_id::bigint;
INSERT INTO topology.cells (name, address) VALUES ('cell-1', 'http://c1'), ('cell-2', 'http://c2');
INSERT INTO topology.claims (uuid, bucket_type, bucket_value, subject_type, subject_id, source_type,
                             source_rails_primary_key, cell_id, organization_id, status)
VALUES (gen_random_uuid(), 'organization_id', '42', 'organization', 42, 'organizations', 42,
        'cell-1', 42, 'ACTIVE'),
       (gen_random_uuid(), 'route', 'g42', 'group', 420, 'routes', 4200, 'cell-1', 42, 'ACTIVE');
INSERT INTO topology.organizations (id, fencing_token) VALUES (42, 3);
INSERT INTO topology.moves (id, org_id, from_cell, to_cell, status, fencing_token, lease_expires_at,
                            aborted_at, abort_reason)
VALUES (gen_random_uuid(), 42, 'cell-1', 'cell-2', 'aborted', 3, now(), now(), 'old');
"""


def _key_columns(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'topology' AND (table_name, column_name) IN "
            "(('organizations', 'id'), ('moves', 'org_id'), ('claims', 'organization_id'))").fetchall()
        fks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'topology.moves'::regclass "
            "AND contype = 'f' AND confrelid = 'topology.organizations'::regclass").fetchone()
    assert fks is not None
    return {**{r[0]: r[1] for r in rows}, "fks": str(fks[0])}


def test_a_bigint_keyed_database_is_migrated_in_place(pg_servers: Servers) -> None:
    db = pg_servers.create_db("topology", prefix="topo_mig")
    dsn = pg_servers.admin_dsn("topology", db)
    try:
        with run_in_thread(dsn, TOKEN):
            pass  # today's schema, then turned back into the bigint-keyed one with its data
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_BIGINT_KEYS.encode())
        assert _key_columns(dsn) == {"organizations.id": "bigint", "moves.org_id": "bigint",
                                     "claims.organization_id": "bigint", "fks": "1"}
        for _ in range(2):  # the migration runs on every start and changes nothing the second time
            with run_in_thread(dsn, TOKEN) as url, TopologyClient(url, TOKEN, retry_deadline_s=5) as c:
                assert _key_columns(dsn) == {"organizations.id": "text", "moves.org_id": "text",
                                             "claims.organization_id": "text", "fks": "1"}
                info = c.get_organization(42)
                assert (info.org_id, info.owner_cell, info.fencing_token) == ("42", "cell-1", 3)
                assert [m.abort_reason for m in c.moves_for_org("42")][-1] == "old"
                assert {cl.bucket.value for cl in c.iter_claims(organization_id=42)} == {"42", "g42"}
        with run_in_thread(dsn, TOKEN) as url, TopologyClient(url, TOKEN, retry_deadline_s=5) as c:
            move = c.begin_move(42, "cell-1", "cell-2", 60)  # the fencing token carries on
            assert move.fencing_token == 4 and move.org_id == "42"
            with pytest.raises(psycopg.errors.ForeignKeyViolation), psycopg.connect(dsn) as conn:
                conn.execute("INSERT INTO topology.moves (id, org_id, from_cell, to_cell, status, "
                             "fencing_token, lease_expires_at) VALUES (gen_random_uuid(), 'nobody', "
                             "'cell-1', 'cell-2', 'aborted', 1, now())")
    finally:
        pg_servers.drop_db("topology", db)
