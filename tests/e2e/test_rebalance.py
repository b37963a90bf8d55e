"""The rebalancer end to end on real PostgreSQL: three skewed Cells, a proposal, queued moves run
by worker processes (procrastinate on the Topology Service's database), kill -9 of a worker,
drain, pinned organizations and the per-Cell limits checked from the job history."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orgmove import state
from orgmove.config import Config, load_config
from orgmove.plan import read_plan
from orgmove.rebalance.proposal import within
from orgmove.sandbox.seed import seed
from orgmove.topology.client import TopologyClient, seed_claims
from orgmove.topology.server import run_in_thread
from tests.e2e.test_operator_experience import assert_same_shape, documented
from tests.helpers import RULES, cli_ok, orgmove_popen, step_checksum
from tests.pgfixtures import Servers
from tests.world import can_write

TOKEN = "rebalance-test-token-91c2"
# cell-3 is a database on the second test server: a Cell is a DSN.
SERVER_OF = {"cell-1": "cell-1", "cell-2": "cell-2", "cell-3": "cell-2"}
ORGS = 8


@dataclass
class Cells3:
    config_path: Path
    dsns: dict[str, str]
    queue_dsn: str
    client: TopologyClient
    tmp: Path

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def cli(self, *args: str, code: int = 0) -> Any:
        return cli_ok(self.config_path, *args, code=code)

    def worker(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return orgmove_popen("--config", str(self.config_path), "worker", "--name", name, env=env)

    def status(self) -> dict[str, Any]:
        return self.cli("rebalance", "status", "--json")  # type: ignore[no-any-return]

    def runs(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.queue_dsn, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute("SELECT * FROM rebalance.runs ORDER BY id").fetchall()

    def analyze(self) -> None:
        for dsn in self.dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ANALYZE")


def _config_text(dsns: dict[str, str], url: str, queue_dsn: str, tmp: Path, extra: str, band: float,
                 defaults_extra: str = "", per_cell: int = 2) -> str:
    lines = []
    for name, dsn in dsns.items():
        lines += [f'[cells."{name}"]', f'dsn = "{dsn}"', ""]
    lines += ["[topology]", f'url = "{url}"', f'token = "{TOKEN}"', ""]
    lines += ["[defaults]", f'plans_dir = "{tmp / "plans"}"', f'rules = "{RULES}"', "lock_timeout_s = 5",
              defaults_extra, ""]
    lines += ["[rebalance]", f"band = {band}", f"max_moves_per_cell = {per_cell}", "max_moves_total = 2",
              f'queue_dsn = "{queue_dsn}"', "heartbeat_s = 1", "stalled_after_s = 4", "retry_wait_s = 1",
              "max_freeze_s = 60", extra, ""]
    return "\n".join(lines)


def make_cells3(servers: Servers, tmp: Path, extra: str = "", band: float = 0.25,
                defaults_extra: str = "", per_cell: int = 2) -> Iterator[Cells3]:
    dbs = {name: servers.create_db(server, prefix="reb") for name, server in SERVER_OF.items()}
    dsns = {name: servers.admin_dsn(SERVER_OF[name], db) for name, db in dbs.items()}
    topo_db = servers.create_db("topology", prefix="rebtopo")
    queue_dsn = servers.admin_dsn("topology", topo_db)
    try:
        seed(dsns, orgs=ORGS, scale="tiny", seed=42, skew=True)
        for dsn in dsns.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                state.install_cell_schema(conn)
        with run_in_thread(queue_dsn, TOKEN) as url, TopologyClient(url, TOKEN, retry_deadline_s=5.0) as client:
            for i, name in enumerate(dsns, 1):
                client.register_cell(name, f"cell{i}.example:5432")
            seed_claims(client, dsns)
            config_path = tmp / "orgmove.toml"
            config_path.write_text(_config_text(dsns, url, queue_dsn, tmp, extra, band, defaults_extra, per_cell))
            os.chmod(config_path, 0o600)
            yield Cells3(config_path, dsns, queue_dsn, client, tmp)
    finally:
        for name, db in dbs.items():
            servers.drop_db(SERVER_OF[name], db)
        servers.drop_db("topology", topo_db)


@pytest.fixture()
def cells3(pg_servers: Servers, tmp_path: Path) -> Iterator[Cells3]:
    yield from make_cells3(pg_servers, tmp_path)


@pytest.fixture()
def cells3_one_per_cell(pg_servers: Servers, tmp_path: Path) -> Iterator[Cells3]:
    """Two workers but one move at a time per Cell: the limit, not the workers, bounds the runs."""
    yield from make_cells3(pg_servers, tmp_path, per_cell=1)


def wait_until_done(world: Cells3, n_moves: int, timeout_s: float = 300,
                    procs: list[subprocess.Popen[str]] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = world.status()
        finished = [m for m in doc["moves"] if m["state"] in ("done", "failed", "stopped")]
        if len(finished) == n_moves:
            return doc
        for p in procs or []:
            assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline, doc
        time.sleep(1)


def stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def assert_moved_cleanly(world: Cells3, moves: list[dict[str, Any]]) -> None:
    """Every moved org: Topology routes it to its target, the target's rows equal the source's,
    no fence, no lease left, and it is writable where it lives."""
    config = world.config
    for m in moves:
        org = int(m["org"])
        assert world.client.owner_of_org(org) == m["to_cell"], m
        assert world.client.org_state(org) == "active"
        plan = read_plan(Path(config.defaults.plans_dir) / f"org-{org}-{m['from_cell']}-{m['to_cell']}.plan.json")
        for step in plan.steps:
            src = step_checksum(world.dsns[m["from_cell"]], plan, step)
            dst = step_checksum(world.dsns[m["to_cell"]], plan, step)
            assert src == dst, (org, step.table)
        assert can_write(world.dsns[m["to_cell"]], org)
        verify = cli_ok(world.config_path, "verify", str(Path(config.defaults.plans_dir) /
                                                          f"org-{org}-{m['from_cell']}-{m['to_cell']}.plan.json"),
                        "--json")
        assert verify["equal"] and verify["mismatched_chunks"] == 0, verify
    for cell, dsn in world.dsns.items():
        # A fence in force only on a Cell the organization has left (cutover keeps the old copy
        # fenced), never where it lives.
        with psycopg.connect(dsn) as conn:
            fenced = [int(r[0]) for r in conn.execute(
                "SELECT organization_id FROM orgmove.fences"
                " WHERE expires_at IS NULL OR expires_at > clock_timestamp()").fetchall()]
        assert all(world.client.owner_of_org(org) != cell for org in fenced), (cell, fenced)
    for m in moves:
        assert world.client.moves_for_org(int(m["org"]))[-1].status in ("committed", "aborted")


def test_the_limit_check_sees_an_overlap() -> None:
    at = [f"2026-01-01 00:00:0{i}" for i in range(4)]
    runs = [{"from_cell": "cell-1", "to_cell": "cell-2", "started_at": at[0], "ended_at": at[2]},
            {"from_cell": "cell-1", "to_cell": "cell-3", "started_at": at[1], "ended_at": at[3]}]
    assert_limits_held(runs, per_cell=2, total=2)
    with pytest.raises(AssertionError):
        assert_limits_held(runs, per_cell=1, total=2)


def assert_limits_held(runs: list[dict[str, Any]], per_cell: int, total: int) -> None:
    """At no instant did more runs overlap than the limits allow (from the attempt history)."""
    events = sorted([(r["started_at"], 1, r) for r in runs] + [(r["ended_at"], -1, r) for r in runs],
                    key=lambda e: (e[0], e[1]))
    running: list[dict[str, Any]] = []
    for _, kind, run in events:
        if kind == 1:
            running.append(run)
            assert len(running) <= total, running
            for cell in (run["from_cell"], run["to_cell"]):
                assert sum(cell in (r["from_cell"], r["to_cell"]) for r in running) <= per_cell, running
        else:
            running.remove(run)


def test_report_plan_start_two_workers_balance_three_cells(cells3_one_per_cell: Cells3) -> None:
    cells3 = cells3_one_per_cell
    report = cells3.cli("rebalance", "report", "--json")
    loads = {c["cell"]: c["org_bytes"] for c in report["cells"]}
    assert not within(loads, 0.25), loads  # skewed: most organizations on cell-1
    assert {o["cell"] for o in report["orgs"]} == {"cell-1", "cell-2", "cell-3"}
    proposal = cells3.cli("rebalance", "plan", "--json")
    assert proposal["moves"] and proposal["within_band"], proposal
    assert all(m["from_cell"] == "cell-1" for m in proposal["moves"])
    started = cells3.cli("rebalance", "start", proposal["proposal_file"], "--json")
    assert len([j for j in started["jobs"] if j["job_id"]]) == len(proposal["moves"])
    for command, doc in (("rebalance report", report), ("rebalance plan", proposal), ("rebalance start", started)):
        assert_same_shape(doc, documented(command), command)
    # a second start of the same proposal queues nothing twice (one lock per organization)
    again = cells3.cli("rebalance", "start", proposal["proposal_file"], "--json")
    assert all(j.get("skipped") for j in again["jobs"]), again
    procs = [cells3.worker("w1"), cells3.worker("w2")]
    try:
        doc = wait_until_done(cells3, len(proposal["moves"]), procs=procs)
    finally:
        stop_workers(procs)
    assert {m["state"] for m in doc["moves"]} == {"done"}, [(m["org"], m["phase"], m["reason"]) for m in doc["moves"]]
    assert_same_shape({**doc, "counts": {"done": 0}}, documented("rebalance status"), "rebalance status")
    assert_moved_cleanly(cells3, doc["moves"])
    cells3.analyze()
    after = cells3.cli("rebalance", "report", "--json")
    loads = {c["cell"]: c["org_bytes"] for c in after["cells"]}
    assert within(loads, 0.25), loads
    runs = cells3.runs()
    assert len({r["worker"] for r in runs}) == 2  # both workers took moves
    # every move leaves cell-1, so at most one runs at a time although two workers hold jobs
    assert_limits_held(runs, per_cell=1, total=2)


def fenced_orgs(world: Cells3, cell: str) -> list[str]:
    with psycopg.connect(world.dsns[cell]) as conn:
        return [str(r[0]) for r in conn.execute(
            "SELECT organization_id FROM orgmove.fences"
            " WHERE expires_at IS NULL OR expires_at > clock_timestamp()").fetchall()]


def committed_chunks(world: Cells3, cell: str) -> int:
    with psycopg.connect(world.dsns[cell]) as conn:
        if conn.execute("SELECT to_regclass('orgmove.chunk_log')").fetchone() == (None,):
            return 0
        row = conn.execute("SELECT count(*) FROM orgmove.chunk_log").fetchone()
    assert row is not None
    return int(row[0])


def org_cells(world: Cells3) -> dict[int, str | None]:
    return {org: world.client.owner_of_org(org) for org in range(1, ORGS + 1)}


def advisory_locks(queue_dsn: str) -> int:
    with psycopg.connect(queue_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                           " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                           " AND pid <> pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


# The first worker is held at a failpoint inside the move (its first chunk commit, or just after
# the fence) and killed there, so the kill always lands mid-move however fast the machine is.
KILL_POINTS = [("copy.after_commit", "copy"), ("cutover.after_fence", "cutover")]


@pytest.mark.slow
@pytest.mark.parametrize(("failpoint", "phase"), KILL_POINTS, ids=[p for _, p in KILL_POINTS])
def test_kill_9_of_a_worker_mid_move_the_job_is_picked_up_and_finishes_cleanly(
        cells3: Cells3, failpoint: str, phase: str) -> None:
    proposal = cells3.cli("rebalance", "plan", "--json")
    cells3.cli("rebalance", "start", proposal["proposal_file"], "--json")
    first = cells3.worker("w1", env={"ORGMOVE_FAILPOINTS": f"{failpoint}=sleep(600)@1"})
    victim = None
    try:
        deadline = time.monotonic() + 180
        while victim is None:
            assert first.poll() is None and time.monotonic() < deadline, "the move never reached " + failpoint
            for m in cells3.status()["moves"]:
                if m["state"] == "running" and phase in (m["phase"] or ""):
                    victim = m
            time.sleep(0.2)
        # The move cannot end while held, so waiting costs nothing; the cutover's kill must land
        # inside the fence, the copy's after its first committed chunk.
        while phase == "cutover" and fenced_orgs(cells3, victim["from_cell"]) != [victim["org"]]:
            assert first.poll() is None and time.monotonic() < deadline, "the fence never came"
            time.sleep(0.2)
        while phase == "copy" and not committed_chunks(cells3, victim["to_cell"]):
            assert first.poll() is None and time.monotonic() < deadline, "no chunk was committed"
            time.sleep(0.2)
        assert first.poll() is None, "the held worker ended by itself"
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        procs = [cells3.worker("w2")]
        try:
            doc = wait_until_done(cells3, len(proposal["moves"]), procs=procs)
        finally:
            stop_workers(procs)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    states = {m["org"]: m for m in doc["moves"]}
    assert {m["state"] for m in doc["moves"]} == {"done"}, doc
    assert states[victim["org"]]["attempts"] >= 2, states[victim["org"]]  # picked up again
    assert states[victim["org"]]["worker"] == "w2"
    assert_moved_cleanly(cells3, doc["moves"])
    # the dead worker's attempt left no slot behind; no lease is open for any org
    assert advisory_locks(cells3.queue_dsn) == 0
    for org in range(1, ORGS + 1):
        assert cells3.client.org_state(org) == "active"


@pytest.fixture()
def cells3_pinned(pg_servers: Servers, tmp_path: Path) -> Iterator[Cells3]:
    yield from make_cells3(pg_servers, tmp_path, extra='pinned = ["2"]', band=0.9)


def test_drain_empties_a_cell_and_pinned_orgs_never_move(cells3_pinned: Cells3) -> None:
    world = cells3_pinned
    before = org_cells(world)
    plan = world.cli("rebalance", "plan", "--json")
    assert "2" not in {m["org"] for m in plan["moves"]}
    drain = world.cli("rebalance", "drain", "cell-3", "--json")
    assert [m["from_cell"] for m in drain["moves"]] == ["cell-3"]
    assert drain["after"]["cell-3"] == 0
    world.cli("rebalance", "start", drain["proposal_file"], "--json")
    metrics = world.tmp / "worker.prom"
    world.cli("--metrics-file", str(metrics), "worker", "--once", "--name", "w1")
    doc = world.status()
    assert {m["state"] for m in doc["moves"]} == {"done"}, doc
    moved = sum(m["bytes_done"] for m in doc["moves"])
    assert moved > 0
    text = metrics.read_text()
    assert f"orgmove_rebalance_bytes_moved_total {float(moved)}" in text, text
    assert "orgmove_rebalance_queue_depth" in text and "orgmove_rebalance_moves_running" in text
    assert_moved_cleanly(world, doc["moves"])
    after = org_cells(world)
    assert "cell-3" not in after.values()
    assert after[2] == before[2] == "cell-1"
    report = world.cli("rebalance", "report", "--json")
    assert {c["cell"]: c["orgs"] for c in report["cells"]}["cell-3"] == 0
    sampled = world.cli("rebalance", "report", "--sample-s", "0.3", "--json")
    assert all(c["writes_per_s"] is not None and c["writes_per_s"] >= 0 for c in sampled["cells"])
    # operator mistakes: one paragraph, exit 2, nothing queued
    assert world.cli("rebalance", "drain", "cell-9", code=2).stderr.count("unknown cell") == 1
    missing = world.cli("rebalance", "start", str(world.tmp / "nope.json"), code=2)
    assert "cannot read proposal" in missing.stderr and "Fix:" in missing.stderr
    no_queue = world.tmp / "no-queue.toml"
    no_queue.write_text("\n".join(line for line in world.config_path.read_text().splitlines()
                                  if not line.startswith("queue_dsn")))
    os.chmod(no_queue, 0o600)
    refused = cli_ok(no_queue, "rebalance", "status", code=2)
    assert "queue" in refused.stderr and "Fix:" in refused.stderr
    assert len(world.status()["moves"]) == len(drain["moves"])


def test_stop_cancels_queued_moves(cells3: Cells3) -> None:
    before = org_cells(cells3)
    proposal = cells3.cli("rebalance", "plan", "--json")
    cells3.cli("rebalance", "start", proposal["proposal_file"], "--json")
    stopped = cells3.cli("rebalance", "stop", "--json")
    assert_same_shape(stopped, documented("rebalance stop"), "rebalance stop")
    assert len(stopped["cancelled_jobs"]) == len(proposal["moves"])
    doc = cells3.status()
    assert doc["stopped"] and {m["state"] for m in doc["moves"]} == {"stopped"}
    # a worker started after the stop moves nothing
    cells3.cli("worker", "--once", "--name", "w1")
    assert org_cells(cells3) == before
    for org, cell in before.items():
        assert cell is not None and can_write(cells3.dsns[cell], org)


def test_a_move_that_fails_for_good_leaves_the_org_on_its_source_writable(cells3: Cells3) -> None:
    before = org_cells(cells3)
    proposal = cells3.cli("rebalance", "plan", "--json")
    # The targets lose a column the source has: every plan's pre-flight refuses (not retryable).
    for cell in {m["to_cell"] for m in proposal["moves"]}:
        with psycopg.connect(cells3.dsns[cell], autocommit=True) as conn:
            conn.execute("ALTER TABLE public.labels DROP COLUMN color")
    cells3.cli("rebalance", "start", proposal["proposal_file"], "--json")
    cells3.cli("worker", "--once", "--name", "w1")
    doc = cells3.status()
    assert {m["state"] for m in doc["moves"]} == {"failed"}, doc
    assert all(m["attempts"] == 1 and "color" in (m["reason"] or "") for m in doc["moves"]), doc
    assert org_cells(cells3) == before
    for org, cell in before.items():
        assert cell is not None and can_write(cells3.dsns[cell], org)
        assert cells3.client.org_state(org) == "active"


@pytest.fixture()
def cells3_slow_copy(pg_servers: Servers, tmp_path: Path) -> Iterator[Cells3]:
    yield from make_cells3(pg_servers, tmp_path, defaults_extra="rate_rows_per_s = 20")


def test_stop_during_a_copy_aborts_the_move_before_its_fence(cells3_slow_copy: Cells3) -> None:
    world = cells3_slow_copy
    before = org_cells(world)
    proposal = world.cli("rebalance", "plan", "--json")
    world.cli("rebalance", "start", proposal["proposal_file"], "--json")
    proc = world.worker("w1")
    try:
        deadline = time.monotonic() + 120
        while not any(m["phase"] == "copy" for m in world.status()["moves"]):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        world.cli("rebalance", "stop", "--json")
        doc = wait_until_done(world, len(proposal["moves"]), procs=[proc])
    finally:
        stop_workers([proc])
    assert {m["state"] for m in doc["moves"]} == {"stopped"}, [(m["org"], m["reason"]) for m in doc["moves"]]
    assert any("before this move's cutover" in (m["reason"] or "") for m in doc["moves"]), doc
    assert org_cells(world) == before
    for org, cell in before.items():
        assert cell is not None and can_write(world.dsns[cell], org)
        assert world.client.org_state(org) == "active"
    # the aborted move's copy was deleted from its target
    for m in doc["moves"]:
        with psycopg.connect(world.dsns[m["to_cell"]]) as conn:
            assert conn.execute("SELECT count(*) FROM organizations WHERE id = %s",
                                (int(m["org"]),)).fetchone() == (0,)
