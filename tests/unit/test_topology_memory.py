"""The TopologyAPI contract (tests/topology_contract.py) on the in-memory implementation
(orgmove/topology/memory.py): no PostgreSQL, a ManualClock for lease expiry."""

from __future__ import annotations

import pytest

from orgmove.topology.memory import ManualClock, MemoryTopology
from orgmove.topology.models import Move
from tests.topology_contract import BEHAVIOURS, Harness, register_cells


@pytest.fixture()
def harness() -> Harness:
    clock = ManualClock()
    api = MemoryTopology(clock=clock)
    register_cells(api)

    def expire(move: Move) -> None:
        clock.advance((move.lease_expires_at - clock()).total_seconds())

    return Harness(api, expire)


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_contract(harness: Harness, behaviour: str) -> None:
    BEHAVIOURS[behaviour](harness)


def test_the_reaper_aborts_only_expired_moves(harness: Harness) -> None:
    api = harness.api
    assert isinstance(api, MemoryTopology)
    stays = api.begin_move(harness.new_org(), "cell-1", "cell-2", lease_ttl_s=600)
    goes = api.begin_move(harness.new_org(), "cell-1", "cell-2", lease_ttl_s=60)
    harness.expire(goes)
    assert api.reap_expired_moves() == 1
    assert api.get_move(goes.move_id).status == "aborted"
    assert api.get_move(stays.move_id).status == "begun"
