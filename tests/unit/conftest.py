"""tests/unit runs without PostgreSQL: the cluster fixtures and the local-cluster starter refuse here,
so a test that needs a database fails at once, naming where it belongs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orgmove.sandbox.pgcluster import LocalCluster

SERVER_PROGRAMS = frozenset({"postgres", "pg_ctl", "initdb", "pg_basebackup"})
REFUSAL = "tests/unit must not start PostgreSQL: put this test in tests/integration or tests/e2e"


class PostgresInUnitTest(AssertionError):
    """A unit test tried to start a PostgreSQL server."""


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[Any]:
    # Overrides tests/conftest.py's fixture for this folder; `cells`, `world` etc. depend on it.
    raise PostgresInUnitTest(REFUSAL)
    yield  # pragma: no cover (makes this a generator fixture like the one it overrides)


def _refuse(*_args: Any, **_kwargs: Any) -> None:
    raise PostgresInUnitTest(REFUSAL)


@pytest.fixture(autouse=True)
def _no_postgres_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any local cluster init/start, or a server program run directly, raises in a unit test."""
    monkeypatch.setattr(LocalCluster, "init", _refuse)
    monkeypatch.setattr(LocalCluster, "start", _refuse)
    real_popen_init = subprocess.Popen.__init__

    def guarded_popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        program = Path(str(argv[0]).split()[0]).name if argv else ""
        if program in SERVER_PROGRAMS:
            raise PostgresInUnitTest(f"{REFUSAL} (ran {program})")
        real_popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen_init)
