"""The unit folder's guard works: asking for a cluster, starting a local one or running a server
program fails here (tests/unit/conftest.py), so every test in tests/unit runs without PostgreSQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orgmove.sandbox.pgcluster import LocalCluster
from tests.unit.conftest import PostgresInUnitTest


def test_the_cluster_fixture_refuses(request: pytest.FixtureRequest) -> None:
    with pytest.raises(PostgresInUnitTest, match="tests/integration or tests/e2e"):
        request.getfixturevalue("pg_servers")


def test_a_local_cluster_cannot_start(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", port=1)
    with pytest.raises(PostgresInUnitTest):
        cluster.init()
    with pytest.raises(PostgresInUnitTest):
        cluster.start()


@pytest.mark.parametrize("program", ["initdb", "/usr/lib/postgresql/15/bin/pg_ctl", "postgres"])
def test_server_programs_cannot_run(program: str) -> None:
    with pytest.raises(PostgresInUnitTest, match="ran"):
        subprocess.run([program, "--version"], check=False)


def test_other_programs_still_run() -> None:
    assert subprocess.run(["true"], check=False).returncode == 0
