from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgfixtures import Servers, start_servers


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[Servers]:
    """Cell-1, cell-2 and the Topology Service database, started once per session."""
    base = Path(tempfile.mkdtemp(prefix="orgmove-test-"))
    with start_servers(base) as servers:
        yield servers
