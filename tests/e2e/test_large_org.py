"""Acceptance points on the large organization (about 1.1 million rows): plan estimates within 2x
of the truth, and a terminal that shows copy progress with a rate and an ETA."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orgmove import planner
from orgmove.chunking import org_rows_where
from orgmove.config import load_config
from orgmove.plan import Plan, table_ident, write_plan
from orgmove.sandbox.seed import seed
from tests.helpers import REPO, RULES

pytestmark = pytest.mark.slow


@dataclass
class LargeOrg:
    dsns: dict[str, str]
    config_path: Path
    plan: Plan
    plan_path: Path


@pytest.fixture(scope="module")
def large_org(pg_servers, tmp_path_factory) -> Iterator[LargeOrg]:  # type: ignore[no-untyped-def]
    dbs = {name: pg_servers.create_db(name, prefix="large") for name in ("cell-1", "cell-2")}
    try:
        dsns = {name: pg_servers.admin_dsn(name, db) for name, db in dbs.items()}
        seed(dsns, orgs=1, scale="large")
        tmp = tmp_path_factory.mktemp("large")
        config_path = tmp / "orgmove.toml"
        config_path.write_text("".join(f'[cells."{n}"]\ndsn = "{d}"\n' for n, d in dsns.items()))
        config_path.chmod(0o600)
        plan = planner.make_plan(load_config(config_path), "1", "cell-1", "cell-2", RULES)
        yield LargeOrg(dsns, config_path, plan, write_plan(plan, tmp / "large.plan.json"))
    finally:
        for name, db in dbs.items():
            pg_servers.drop_db(name, db)


def test_plan_estimates_are_within_2x_of_the_truth(large_org: LargeOrg) -> None:
    plan = large_org.plan
    exact: dict[str, int] = {}
    with psycopg.connect(large_org.dsns["cell-1"]) as conn:
        for step in plan.steps:
            q = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                table_ident(step.table), org_rows_where(step, plan.root, plan.org))
            exact[step.table] = int(conn.execute(q).fetchone()[0])  # type: ignore[index]
    assert sum(exact.values()) >= 1_000_000
    for step in plan.steps:
        if exact[step.table] >= 100:
            ratio = step.estimated_rows / exact[step.table]
            assert 0.5 <= ratio <= 2.0, (step.table, step.estimated_rows, exact[step.table])
    total_ratio = sum(s.estimated_rows for s in plan.steps) / sum(exact.values())
    assert 0.5 <= total_ratio <= 2.0


def test_terminal_shows_progress_with_eta(large_org: LargeOrg) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(str(REPO / ".venv" / "bin" / "python"),
                          ["-m", "orgmove", "--config", str(large_org.config_path), "copy",
                           str(large_org.plan_path)],
                          cwd=str(REPO), timeout=300, dimensions=(40, 160), encoding="utf-8",
                          env={**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"})
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.read())
    child.close()
    assert child.exitstatus == 0, screen[-2000:]
    # A progress frame drawn while copying: the overall task with rows done/total (some done,
    # not all), a rate and an ETA.
    frames = re.findall(
        r"copy: all tables\s+\S*\s+([\d,]+)/([\d,]+)\s+rows\s+([\d,.]+) MB\s+([\d,]+) r/s\s+ETA (\d+:\d\d:\d\d)",
        screen)
    assert any(0 < int(done.replace(",", "")) < int(total.replace(",", "")) and float(mb.replace(",", "")) > 0
               for done, total, mb, _, _ in frames), screen[:3000]
