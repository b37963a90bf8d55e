"""The README's tour and every runbook's commands, as written (extracted from their fenced bash
blocks by tests/docrun.py), run in a sandbox: the docs cannot drift from the tool. Also the two
hints a new sandbox user meets: `sandbox seed` twice, and the README's one-shot `move`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orgmove.config import load_config
from tests.docrun import parse
from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a sandbox, 3 seeds, 11 scripts


def _workdir(base: Path) -> Path:
    """A working directory shaped like a checkout: `.venv/bin/orgmove`, `plans/`, `runbooks/`,
    `orgmove/sql/` (the paths the docs use), with the sandbox under `.orgmove/sandbox`."""
    work = base / "w"
    (work / ".venv" / "bin").mkdir(parents=True)
    shim = work / ".venv" / "bin" / "orgmove"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m orgmove "$@"\n')
    shim.chmod(0o755)
    for name in ("plans", "runbooks", "orgmove"):
        (work / name).symlink_to(REPO / name)
    return work


def _bash(work: Path, script: str, env: dict[str, str], what: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ORGMOVE_")}
    full.update(env)
    full["PATH"] = f"{work / '.venv' / 'bin'}:{full.get('PATH', '')}"
    full["PYTHONPATH"] = str(REPO)
    full["COLUMNS"] = "100"
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=full, capture_output=True, text=True,
                          timeout=600, check=False)
    assert "Traceback" not in proc.stderr, (what, proc.stderr)
    return proc


def _ok(work: Path, script: str, env: dict[str, str], what: str) -> subprocess.CompletedProcess[str]:
    proc = _bash(work, script, env, what)
    assert proc.returncode == 0, (what, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def test_readme_tour_and_every_runbook_run_as_written() -> None:
    # A short base directory: the Cells' Unix sockets live under it (at most 107 bytes a path).
    base = Path(tempfile.mkdtemp(prefix="omdoc-"))
    work = _workdir(base)
    box = work / ".orgmove" / "sandbox"
    config = box / "orgmove.toml"
    sandbox_env = {"ORGMOVE_CONFIG": str(config)}
    try:
        tour = parse(REPO / "README.md")
        assert len(tour.blocks) == 1 and len(tour.blocks[0]) >= 12
        _ok(work, tour.script(), {}, "README tour")

        # `sandbox seed` on a seeded sandbox: its hint, followed as printed, works.
        _ok(work, "orgmove sandbox up", sandbox_env, "sandbox up")
        again = _bash(work, "orgmove sandbox seed", sandbox_env, "seed again")
        assert again.returncode == 2 and "already seeded" in again.stderr, again.stderr
        hint = re.search(r"`(orgmove sandbox seed --reset)`", again.stderr)
        assert hint, again.stderr
        seeded = _ok(work, hint.group(1), sandbox_env, "the seed hint")
        assert "organization 1 is on cell-1" in seeded.stdout and "organization 2 is on cell-2" in seeded.stdout

        # The README's one-shot move, as written: the sandbox config names its rules.
        _ok(work, "orgmove move --org 1 --from cell-1 --to cell-2 --yes", sandbox_env, "one-shot move")
        status = json.loads(_ok(work, "orgmove status --org 1 --json", sandbox_env, "status").stdout)
        assert status["owner"] == "cell-2" and status["moves"][0]["state"] == "committed"

        # Every runbook, each with an organization of its own that lives on cell-1.
        _ok(work, "orgmove sandbox seed --reset --orgs 33 --scale tiny", sandbox_env, "reseed")
        cfg = load_config(config)
        runbooks = sorted((REPO / "runbooks").glob("[0-9][0-9]-*.md"))
        assert len(runbooks) >= 9
        for i, runbook in enumerate(runbooks):
            org = 2 * i + 3  # odd organizations live on cell-1
            env = {
                **sandbox_env, "ORG": str(org), "FROM": "cell-1", "TO": "cell-2",
                "PLAN": str(box / "plans" / f"org-{org}-cell-1-cell-2.plan.json"),
                "MOVE": f"org-{org}-cell-1-cell-2",
                "SOURCE_DSN": cfg.cell_dsn("cell-1"), "TARGET_DSN": cfg.cell_dsn("cell-2"),
                "CELL_ADMIN_DSN": cfg.cell_dsn("cell-1"),
                "READER_PW": "docs-test-reader-pw", "WRITER_PW": "docs-test-writer-pw",
                "CLEANUP_PW": "docs-test-cleanup-pw",
                "ORGMOVE_YES": "1",  # the runbooks' confirmations, answered by the documented twin
            }
            doc = parse(runbook)
            assert doc.blocks, runbook.name
            _ok(work, doc.script(), env, runbook.name)
    finally:
        subprocess.run([sys.executable, "-m", "orgmove", "sandbox", "down", "--wipe", "--dir", str(box)],
                       cwd=work, capture_output=True, timeout=120, check=False)
        shutil.rmtree(base, ignore_errors=True)
