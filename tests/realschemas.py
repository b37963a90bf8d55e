"""Real open-source schemas (tests/fixtures/schemas/, see its README.md): loaded with psql, as their
projects load them, into a fresh database of each test Cell."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from orgmove.sandbox.pgcluster import find_pg_bin

SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "schemas"


def psql_binary() -> str:
    local = find_pg_bin() / "psql"
    return str(local) if local.exists() else (shutil.which("psql") or "psql")


def load_schema(dsn: str, name: str) -> None:
    """``psql -v ON_ERROR_STOP=1 -f tests/fixtures/schemas/<name>.sql`` into ``dsn``."""
    proc = subprocess.run(
        [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(SCHEMAS / f"{name}.sql")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, f"loading {name}.sql failed: {proc.stderr[-2000:]}"
