"""Organization keys are opaque text: one normalisation for every caller and both stores."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orgmove.errors import BadInput
from orgmove.topology.models import Bucket, ClaimIn, MoveBegin, Source, Subject, org_key, org_sort_key

UUID = "0b6f3f3e-1111-4222-8333-944445555601"


def test_ints_and_strings_are_one_key() -> None:
    assert org_key(42) == org_key("42") == org_key(" 42\n") == "42"
    assert org_key(UUID) == UUID and org_key("team/acme") == "team/acme"


@pytest.mark.parametrize("bad", ["", "   ", "x" * 2049, True, 1.5, None])
def test_empty_overlong_or_odd_keys_are_bad_input(bad: object) -> None:
    with pytest.raises(BadInput):
        org_key(bad)  # type: ignore[arg-type]


def test_listings_order_integer_keys_numerically_then_text() -> None:
    assert sorted(["10", UUID, "9", "acme", "100"], key=org_sort_key) == ["9", "10", "100", UUID, "acme"]


def test_an_organization_id_bucket_takes_any_key_and_links_the_claim() -> None:
    claim = ClaimIn(bucket=Bucket(type="organization_id", value=UUID),
                    subject=Subject(type="organization", id=7),
                    source=Source(type="organizations", rails_primary_key=7))
    assert claim.organization_id == UUID
    route = ClaimIn(bucket=Bucket(type="route", value="g"), subject=Subject(type="group", id=1),
                    source=Source(type="routes", rails_primary_key=1), organization_id=42)  # type: ignore[arg-type]
    assert route.organization_id == "42"
    with pytest.raises(ValidationError, match="differs"):
        ClaimIn(bucket=Bucket(type="organization_id", value=UUID), subject=Subject(type="organization", id=7),
                source=Source(type="organizations", rails_primary_key=7), organization_id="other")
    with pytest.raises(ValidationError, match="empty"):
        MoveBegin(org_id="  ", from_cell="cell-1", to_cell="cell-2", lease_ttl_s=60)
