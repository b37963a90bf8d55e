"""The TopologyAPI contract: behaviours every implementation must show the same way, run against
orgmove/topology/memory.py (tests/unit/test_topology_memory.py, no PostgreSQL) and against the real
HTTP client, server and database (tests/integration/test_topology_contract.py).

Each behaviour takes a :class:`Harness`: the implementation under test, fresh organization ids,
and a way to make a move's lease expire (a ManualClock in memory; the lease's end set into the
past in the service's database).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from orgmove.errors import BadInput, UnknownOrganization
from orgmove.topology.api import ClaimLeased, LeaseExpired, ServiceRefused, TopologyAPI
from orgmove.topology.models import Bucket, ClaimIn, Move, Source, Subject


@dataclass
class Harness:
    api: TopologyAPI
    expire: Callable[[Move], None]  # the move's lease ends now (nothing else changes)
    org_ids: Iterator[int] = field(default_factory=lambda: itertools.count(50_000))

    def new_org(self, cell: str = "cell-1", routes: int = 2) -> int:
        org = next(self.org_ids)
        self.api.create_claims(cell, org_claims(org, routes))
        return org


def org_claims(org: int | str, routes: int = 2, *, subject_id: int | None = None) -> list[ClaimIn]:
    """An organization's claims; a text key (a uuid) needs the integer ``subject_id`` its Rails
    subject and source ids are made of."""
    n = org if isinstance(org, int) else subject_id
    assert n is not None, "a text organization key needs an integer subject_id"
    claims = [ClaimIn(bucket=Bucket(type="organization_id", value=str(org)),
                      subject=Subject(type="organization", id=n),
                      source=Source(type="organizations", rails_primary_key=n))]
    claims += [ClaimIn(bucket=Bucket(type="route", value=f"o{org}/p{i}"),
                       subject=Subject(type="project", id=n * 10 + i),
                       source=Source(type="routes", rails_primary_key=n * 10 + i),
                       organization_id=org) for i in range(routes)]
    return claims


def register_cells(api: TopologyAPI) -> None:
    api.register_cell("cell-1", "http://cell-1.example:8080")
    api.register_cell("cell-2", "http://cell-2.example:8080")


def refused(reason: str, call: Callable[[], object], cls: type[ServiceRefused] = ServiceRefused) -> ServiceRefused:
    with pytest.raises(cls) as caught:
        call()
    assert caught.value.reason == reason, caught.value.message
    return caught.value


def cells_of(h: Harness, org: int | str) -> set[str]:
    return {c.cell_id for c in h.api.iter_claims(organization_id=org)}


# --- claims ------------------------------------------------------------------------------------


def claims_are_created_and_owned(h: Harness) -> None:
    org = h.new_org(routes=3)
    assert h.api.owner_of_org(org) == "cell-1"
    info = h.api.get_organization(org)
    assert (info.owner_cell, info.state, info.live_move_id) == ("cell-1", "active", None)
    assert sorted(c.bucket.value for c in h.api.iter_claims(organization_id=org)) == sorted([
        str(org), f"o{org}/p0", f"o{org}/p1", f"o{org}/p2"])  # the organization's own claim too


def a_taken_bucket_is_refused_and_nothing_is_created(h: Harness) -> None:
    org = h.new_org()
    other = next(h.org_ids)
    clash = org_claims(other)[:1] + [org_claims(org)[1].model_copy(update={"organization_id": str(other)})]
    refused("claim_already_taken", lambda: h.api.create_claims("cell-2", clash))
    assert h.api.owner_of_org(other) is None  # all or nothing


def claims_of_an_org_come_from_its_owner(h: Harness) -> None:
    org = h.new_org("cell-1")
    extra = ClaimIn(bucket=Bucket(type="route", value=f"o{org}/elsewhere"),
                    subject=Subject(type="project", id=1), source=Source(type="routes", rails_primary_key=1),
                    organization_id=org)
    refused("wrong_cell", lambda: h.api.create_claims("cell-2", [extra]))


def an_unknown_organization_is_named(h: Harness) -> None:
    with pytest.raises(UnknownOrganization):
        h.api.get_organization(next(h.org_ids))
    assert h.api.owner_of_org(next(h.org_ids)) is None
    with pytest.raises(UnknownOrganization):
        h.api.begin_move(next(h.org_ids), "cell-1", "cell-2", lease_ttl_s=60)


def arguments_are_checked_alike(h: Harness) -> None:
    refused("bad_request", lambda: h.api.register_cell("c" * 201, "http://x.example"))
    org = next(h.org_ids)
    twice = org_claims(org, routes=1) + org_claims(org, routes=1)[1:]
    error = refused("duplicate_record", lambda: h.api.create_claims("cell-1", twice))
    assert f"route=o{org}/p0" in error.message
    assert h.api.owner_of_org(org) is None
    h.api.create_claims("cell-1", org_claims(org))
    assert h.api.get_organization(str(org)).org_id == str(org)  # 42 and "42" are one organization
    assert h.api.get_organization(f" {org} ").owner_cell == "cell-1"  # keys are stripped
    with pytest.raises(UnknownOrganization, match="has no claim"):
        h.api.get_organization("acme")  # any text is a key; this one has no claim
    with pytest.raises(BadInput, match="empty"):
        h.api.get_organization("  ")


# --- move leases, fencing tokens, compare-and-swap -------------------------------------------


def a_move_flips_every_claim_by_compare_and_swap(h: Harness) -> None:
    org = h.new_org(routes=3)
    move = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    assert move.status == "begun" and h.api.get_organization(org).live_move_id == move.move_id
    fenced = h.api.fence(move.move_id, move.fencing_token)
    assert fenced.status == "fenced" and h.api.get_organization(org).state == "read_only"
    assert h.api.fence(move.move_id, move.fencing_token).status == "fenced"  # idempotent
    done = h.api.commit_move(move.move_id, move.fencing_token, expected_owner="cell-1")
    assert done.status == "committed" and done.claims_moved == 4
    assert cells_of(h, org) == {"cell-2"} and h.api.owner_of_org(org) == "cell-2"
    assert h.api.get_organization(org).state == "active"
    again = h.api.commit_move(move.move_id, move.fencing_token, expected_owner="cell-1")
    assert again.status == "committed"  # idempotent once committed
    refused("move_finished", lambda: h.api.abort_move(move.move_id, move.fencing_token))


def a_commit_with_a_wrong_expected_owner_changes_nothing(h: Harness) -> None:
    org = h.new_org()
    move = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    h.api.fence(move.move_id, move.fencing_token)
    refused("owner_mismatch", lambda: h.api.commit_move(move.move_id, move.fencing_token, "cell-2"))
    assert cells_of(h, org) == {"cell-1"} and h.api.get_move(move.move_id).status == "fenced"


def a_commit_before_the_fence_is_refused(h: Harness) -> None:
    org = h.new_org()
    move = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    refused("move_not_fenced", lambda: h.api.commit_move(move.move_id, move.fencing_token, "cell-1"))
    assert cells_of(h, org) == {"cell-1"}


def a_stale_token_is_refused(h: Harness) -> None:
    org = h.new_org()
    move = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    wrong = move.fencing_token + 1
    refused("stale_token", lambda: h.api.fence(move.move_id, wrong))
    refused("stale_token", lambda: h.api.commit_move(move.move_id, wrong, "cell-1"))
    assert h.api.get_move(move.move_id).status == "begun"


def one_live_move_per_organization(h: Harness) -> None:
    org = h.new_org()
    first = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    error = refused("move_in_progress", lambda: h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60))
    assert error.details["move_id"] == str(first.move_id)
    refused("owner_mismatch", lambda: h.api.begin_move(h.new_org("cell-2"), "cell-1", "cell-2", 60))


def fencing_tokens_strictly_increase_across_moves(h: Harness) -> None:
    org = h.new_org()
    tokens = []
    for source, target in (("cell-1", "cell-2"), ("cell-2", "cell-1")):
        aborted = h.api.begin_move(org, source, target, lease_ttl_s=60)
        h.api.abort_move(aborted.move_id, aborted.fencing_token, "test")
        move = h.api.begin_move(org, source, target, lease_ttl_s=60)
        h.api.fence(move.move_id, move.fencing_token)
        h.api.commit_move(move.move_id, move.fencing_token, expected_owner=source)
        tokens += [aborted.fencing_token, move.fencing_token]
    assert tokens == sorted(set(tokens)) and len(tokens) == 4
    assert h.api.get_organization(org).fencing_token == tokens[-1]
    assert [m.fencing_token for m in h.api.moves_for_org(org)] == tokens[::-1]  # newest first


def an_abort_hands_the_organization_back(h: Harness) -> None:
    org = h.new_org()
    move = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    h.api.fence(move.move_id, move.fencing_token)
    with pytest.raises(ClaimLeased):  # fenced: read-only for claim changes, retry later
        h.api.create_claims("cell-1", [ClaimIn(bucket=Bucket(type="route", value=f"o{org}/new"),
                                               subject=Subject(type="project", id=2),
                                               source=Source(type="routes", rails_primary_key=2),
                                               organization_id=org)])
    aborted = h.api.abort_move(move.move_id, move.fencing_token, "operator")
    assert aborted.status == "aborted" and aborted.abort_reason == "operator"
    assert h.api.abort_move(move.move_id, move.fencing_token).status == "aborted"  # idempotent
    info = h.api.get_organization(org)
    assert (info.state, info.owner_cell, info.live_move_id) == ("active", "cell-1", None)


def a_begin_retried_with_its_key_returns_the_first_move(h: Harness) -> None:
    org = h.new_org()
    key = f"key-{uuid.uuid4()}"
    first = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60, idempotency_key=key)
    again = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60, idempotency_key=key)
    assert (again.move_id, again.fencing_token) == (first.move_id, first.fencing_token)


# --- lease expiry ------------------------------------------------------------------------------


def an_expired_lease_refuses_fence_and_commit(h: Harness) -> None:
    org = h.new_org()
    move = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    h.expire(move)
    refused("lease_expired", lambda: h.api.fence(move.move_id, move.fencing_token), LeaseExpired)
    refused("lease_expired", lambda: h.api.renew(move.move_id, move.fencing_token, 60), LeaseExpired)
    refused("lease_expired", lambda: h.api.commit_move(move.move_id, move.fencing_token, "cell-1"),
            LeaseExpired)
    assert cells_of(h, org) == {"cell-1"}


def a_renewed_lease_lives_on(h: Harness) -> None:
    org = h.new_org()
    move = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    renewed = h.api.renew(move.move_id, move.fencing_token, 600)
    assert renewed.lease_expires_at > move.lease_expires_at
    assert h.api.fence(move.move_id, move.fencing_token).status == "fenced"


def an_expired_move_is_taken_over_and_its_token_goes_stale(h: Harness) -> None:
    org = h.new_org()
    old = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    h.api.fence(old.move_id, old.fencing_token)
    h.expire(old)
    new = h.api.begin_move(org, "cell-1", "cell-2", lease_ttl_s=60)
    assert new.fencing_token > old.fencing_token
    assert h.api.get_move(old.move_id).status == "aborted"
    refused("stale_token", lambda: h.api.commit_move(old.move_id, old.fencing_token, "cell-1"))
    h.api.fence(new.move_id, new.fencing_token)
    assert h.api.commit_move(new.move_id, new.fencing_token, "cell-1").status == "committed"
    assert cells_of(h, org) == {"cell-2"}


def _a_keyed_org_moves_there_and_back(h: Harness, key: str) -> None:
    h.api.create_claims("cell-1", org_claims(key, routes=2, subject_id=next(h.org_ids)))
    info = h.api.get_organization(key)
    assert (info.org_id, info.owner_cell, info.state) == (key, "cell-1", "active")
    assert cells_of(h, key) == {"cell-1"} and len(list(h.api.iter_claims(organization_id=key))) == 3
    move = h.api.begin_move(key, "cell-1", "cell-2", lease_ttl_s=60)
    assert move.org_id == key
    refused("stale_token", lambda: h.api.fence(move.move_id, move.fencing_token + 1))
    h.api.fence(move.move_id, move.fencing_token)
    refused("stale_token", lambda: h.api.commit_move(move.move_id, move.fencing_token - 1, "cell-1"))
    assert cells_of(h, key) == {"cell-1"}  # the stale compare-and-swap changed nothing
    done = h.api.commit_move(move.move_id, move.fencing_token, expected_owner="cell-1")
    assert done.status == "committed" and done.claims_moved == 3
    assert cells_of(h, key) == {"cell-2"} and h.api.owner_of_org(key) == "cell-2"
    assert [m.move_id for m in h.api.moves_for_org(key)] == [move.move_id]
    back = h.api.begin_move(key, "cell-2", "cell-1", lease_ttl_s=60)
    assert back.fencing_token > move.fencing_token
    refused("stale_token", lambda: h.api.fence(back.move_id, move.fencing_token))
    assert h.api.get_organization(key).state == "active" and cells_of(h, key) == {"cell-2"}


def organizations_of_any_key_move_by_compare_and_swap(h: Harness) -> None:
    # A uuid (coder keys its organizations so) and a text key holding a '/' (one URL segment).
    for key in (str(uuid.uuid4()), f"team/acme-{uuid.uuid4().hex[:8]}"):
        _a_keyed_org_moves_there_and_back(h, key)


BEHAVIOURS: dict[str, Callable[[Harness], None]] = {
    f.__name__: f for f in (
        claims_are_created_and_owned,
        a_taken_bucket_is_refused_and_nothing_is_created,
        claims_of_an_org_come_from_its_owner,
        an_unknown_organization_is_named,
        arguments_are_checked_alike,
        a_move_flips_every_claim_by_compare_and_swap,
        a_commit_with_a_wrong_expected_owner_changes_nothing,
        a_commit_before_the_fence_is_refused,
        a_stale_token_is_refused,
        one_live_move_per_organization,
        fencing_tokens_strictly_increase_across_moves,
        an_abort_hands_the_organization_back,
        a_begin_retried_with_its_key_returns_the_first_move,
        an_expired_lease_refuses_fence_and_commit,
        a_renewed_lease_lives_on,
        an_expired_move_is_taken_over_and_its_token_goes_stale,
        organizations_of_any_key_move_by_compare_and_swap,
    )
}
