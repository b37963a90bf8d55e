"""cutover, rollback, cleanup against real Cells and a real Topology Service."""

from __future__ import annotations

import json
import signal
import time

import psycopg
import pytest

from orgmove.copy import CopyOptions, run_copy
from orgmove.cutover import CutoverOptions, run_cutover
from orgmove.teardown import run_rollback
from tests.helpers import make_plan, org_checksums, orgmove_cli, orgmove_popen, other_rows_checksums
from tests.orgcounts import org_row_counts
from tests.world import World, can_write


def _copied(world: World, org: str = "1"):
    plan, path = make_plan(world.cells, org)
    run_copy(plan, world.config, CopyOptions(workers=2, chunk_rows=25))
    return plan, path


def _cli(world: World, *args: str, env: dict[str, str] | None = None):
    return orgmove_cli("--config", str(world.config_path), *args, env=env)


def test_cutover_flips_claims_and_fences_the_source(world: World) -> None:
    plan, path = _copied(world)
    assert world.owner(1) == "cell-1"
    proc = _cli(world, "cutover", str(path), "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["committed"] is True and doc["new_owner"] == "cell-2"
    assert 0 < doc["freeze_window_s"] < 60
    assert world.owner(1) == "cell-2"
    assert world.org_state(1) == "active"
    assert world.client.classify("organization_id", "1").cell == "cell-2"
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(world.dsn("cell-1"), plan)
    assert not can_write(world.dsn("cell-1"), 1)  # a stale writer cannot write on the source
    assert can_write(world.dsn("cell-2"), 1)
    assert world.owner(3) == "cell-1" and can_write(world.dsn("cell-1"), 3)


def test_cutover_levels_writes_made_after_the_copy(world: World) -> None:
    plan, path = _copied(world)
    src = world.dsn("cell-1")
    with psycopg.connect(src) as conn:
        issue = conn.execute(
            "SELECT min(i.id) FROM issues i JOIN projects p ON p.id = i.project_id "
            "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = 1").fetchone()[0]
        conn.execute("UPDATE issues SET title = 'changed after copy' WHERE id = %s", (issue,))
        conn.execute("INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                     "SELECT project_id, author_id, 424242, 'new after copy', 1, now() FROM issues WHERE id = %s",
                     (issue,))
        conn.execute("DELETE FROM notes WHERE id = (SELECT max(id) FROM notes WHERE project_id IN "
                     "(SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
                     "WHERE n.organization_id = 1))")
    report = run_cutover(plan, world.config, CutoverOptions())
    assert report.committed
    # The copy made a slot: the stream applied the three writes and the final check compared
    # the rows it touched (the deleted note is absent on both sides).
    final = [s for s in report.steps if s["step"] == "final check"]
    assert final and int(final[0]["detail"].split()[0]) >= 2, report.steps
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(src, plan)


def test_cutover_before_copy_finished_is_refused(world: World) -> None:
    plan, path = make_plan(world.cells)
    proc = _cli(world, "cutover", str(path), "--yes")
    assert proc.returncode == 2
    assert "copy" in proc.stderr and "Traceback" not in proc.stderr
    assert world.owner(1) == "cell-1"


def test_cutover_dry_run_changes_nothing(world: World) -> None:
    plan, path = _copied(world)
    proc = _cli(world, "cutover", str(path), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    checks = json.loads(proc.stdout)["checks"]
    assert checks["copy complete"] and checks["lease available"] and checks["fits --max-freeze"]
    assert checks["chunks the sync will re-copy"] == 0
    assert world.owner(1) == "cell-1" and world.org_state(1) == "active"
    assert world.client.moves_for_org(1) == []
    assert can_write(world.dsn("cell-1"), 1)


def test_max_freeze_too_small_refuses_to_fence(world: World) -> None:
    plan, path = _copied(world)
    proc = _cli(world, "cutover", str(path), "--yes", "--max-freeze", "0.001")
    assert proc.returncode != 0
    assert "max-freeze" in proc.stderr
    assert world.owner(1) == "cell-1" and world.org_state(1) == "active"
    assert can_write(world.dsn("cell-1"), 1)


def _assert_on_source_writable(world: World) -> None:
    assert world.owner(1) == "cell-1"
    assert world.org_state(1) == "active"
    assert can_write(world.dsn("cell-1"), 1)


def test_kill_at_each_cutover_step_then_rerun_completes(world: World) -> None:
    plan, path = _copied(world)
    for point in ("cutover.after_lease", "cutover.after_fence", "cutover.before_commit"):
        proc = _cli(world, "cutover", str(path), "--yes", env={"ORGMOVE_FAILPOINTS": f"{point}=exit"})
        assert proc.returncode == 137, (point, proc.stderr)
        assert world.owner(1) == "cell-1", point
        # The org is on exactly one owner; the next cutover (or the lease expiry) makes it writable.
    proc = _cli(world, "cutover", str(path), "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    assert world.owner(1) == "cell-2"
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(world.dsn("cell-1"), plan)


def test_killed_cutover_leaves_org_writable_after_lease_expiry(world: World) -> None:
    plan, path = _copied(world)
    text = world.config_path.read_text().replace("[defaults]\n", "[defaults]\nlease_ttl_s = 2\n")
    world.config_path.write_text(text)
    proc = _cli(world, "cutover", str(path), "--yes", env={"ORGMOVE_FAILPOINTS": "cutover.after_fence=exit"})
    assert proc.returncode == 137
    assert not can_write(world.dsn("cell-1"), 1)  # fenced while the lease lives
    time.sleep(3.5)
    _assert_on_source_writable(world)


def test_kill_after_the_flip_rerun_records_it(world: World) -> None:
    plan, path = _copied(world)
    proc = _cli(world, "cutover", str(path), "--yes", env={"ORGMOVE_FAILPOINTS": "cutover.after_flip=exit"})
    assert proc.returncode == 137
    assert world.owner(1) == "cell-2"
    assert not can_write(world.dsn("cell-1"), 1)
    proc = _cli(world, "status", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["owner"] == "cell-2"
    rerun = _cli(world, "cutover", str(path), "--yes", "--json")
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    assert doc["committed"] and doc["steps"][0]["step"] == "recorded" and doc["freeze_window_s"] > 0


def test_sigint_during_cutover_aborts_and_leaves_org_writable(world: World) -> None:
    plan, path = _copied(world)
    proc = orgmove_popen("--config", str(world.config_path), "cutover", str(path), "--yes",
                         # held long enough that a loaded machine cannot let it run on to the flip;
                         # the SIGINT ends the sleep at once
                         env={"ORGMOVE_FAILPOINTS": "cutover.after_fence=sleep(120)"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and world.org_state(1) != "read_only":
        time.sleep(0.05)
    assert world.org_state(1) == "read_only"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "aborted" in err and "Traceback" not in err
    _assert_on_source_writable(world)


def _wait_for_step(world: World, point: str, timeout: float = 30) -> None:
    """Until the cutover sleeping at ``point`` has reached it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        moves = world.client.moves_for_org(1)
        live = [m for m in moves if m.status in ("begun", "fenced")]
        if point == "cutover.after_lease" and live:
            return
        if point in ("cutover.after_fence", "cutover.before_commit") and world.org_state(1) == "read_only":
            if point == "cutover.before_commit":
                time.sleep(1.5)  # the tiny org's sync is well under a second
            return
        time.sleep(0.05)
    raise AssertionError(f"the cutover never reached {point}")


STEPS = ["cutover.after_lease", "cutover.after_fence", "cutover.before_commit"]


@pytest.mark.parametrize("point", STEPS)
def test_target_down_at_each_cutover_step_aborts(world: World, pg_servers, point: str) -> None:  # type: ignore[no-untyped-def]
    plan, path = _copied(world)
    proc = orgmove_popen("--config", str(world.config_path), "cutover", str(path), "--yes",
                         env={"ORGMOVE_FAILPOINTS": f"{point}=sleep(4)"})
    _wait_for_step(world, point)
    pg_servers.servers["cell-2"].stop("immediate")
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        pg_servers.servers["cell-2"].start()
    assert proc.returncode != 0, err
    assert "Traceback" not in err
    _assert_on_source_writable(world)
    proc2 = _cli(world, "cutover", str(path), "--yes")
    assert proc2.returncode == 0, proc2.stderr
    assert world.owner(1) == "cell-2"
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(world.dsn("cell-1"), plan)


def test_rollback_removes_exactly_the_copied_rows(world: World) -> None:
    plan, path = _copied(world)
    others = other_rows_checksums(world.dsn("cell-2"), plan)
    copied = sum(org_row_counts(world.dsn("cell-2"), 1).values())
    proc = _cli(world, "rollback", str(path), "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows_deleted"] == copied > 0
    assert sum(org_row_counts(world.dsn("cell-2"), 1).values()) == 0
    assert other_rows_checksums(world.dsn("cell-2"), plan) == others
    _assert_on_source_writable(world)


def test_rollback_after_commit_is_refused(world: World) -> None:
    plan, path = _copied(world)
    run_cutover(plan, world.config, CutoverOptions())
    proc = _cli(world, "rollback", str(path), "--yes")
    assert proc.returncode == 2
    assert "moving it back is two steps" in proc.stderr and "orgmove cleanup" in proc.stderr


def test_cleanup_before_commit_is_refused(world: World) -> None:
    plan, path = _copied(world)
    proc = _cli(world, "cleanup", str(path), "--yes")
    assert proc.returncode == 2 and "not committed" in proc.stderr


def test_cleanup_deletes_the_org_from_the_source_only(world: World) -> None:
    plan, path = _copied(world)
    run_cutover(plan, world.config, CutoverOptions())
    source_rows = sum(org_row_counts(world.dsn("cell-1"), 1).values())
    org3 = org_row_counts(world.dsn("cell-1"), 3)
    others = other_rows_checksums(world.dsn("cell-1"), plan)
    target = org_checksums(world.dsn("cell-2"), plan)
    proc = _cli(world, "cleanup", str(path), "--yes", "--batch-rows", "7", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows_deleted"] == source_rows
    assert sum(org_row_counts(world.dsn("cell-1"), 1).values()) == 0
    assert org_row_counts(world.dsn("cell-1"), 3) == org3
    assert other_rows_checksums(world.dsn("cell-1"), plan) == others
    assert org_checksums(world.dsn("cell-2"), plan) == target


def test_rollback_api(world: World) -> None:
    plan, _ = _copied(world)
    doc = run_rollback(plan, world.config)
    assert doc["owner"] == "cell-1"


@pytest.mark.parametrize("point", STEPS)
def test_topology_down_at_each_cutover_step_org_stays_on_source_then_rerun_completes(
    cells, pg_servers, tmp_path, point: str  # type: ignore[no-untyped-def]
) -> None:
    import os
    import subprocess
    import sys

    from orgmove import state
    from orgmove.sandbox.pgcluster import free_port
    from orgmove.topology.client import TopologyClient, seed_claims
    from tests.helpers import REPO

    for name in cells.names:
        with psycopg.connect(cells.dsn(name), autocommit=True) as conn:
            state.install_cell_schema(conn)
    dbname = pg_servers.create_db("topology", prefix="topodown")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = "topology-down-test-token"
    env = {**os.environ, "ORGMOVE_TOPOLOGY_TOKEN": token,
           "ORGMOVE_TOPOLOGY_DSN": pg_servers.admin_dsn("topology", dbname)}

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "orgmove", "topology", "serve", "--listen",
                                 f"127.0.0.1:{port}"], env=env, cwd=str(REPO),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with TopologyClient(url, token, retry_deadline_s=20) as c:
            c.health()
        return proc

    server = serve()
    client = TopologyClient(url, token, retry_deadline_s=20)
    try:
        for name in cells.names:
            client.register_cell(name, f"{name}.example:5432")
        seed_claims(client, cells.dsns)
        text = cells.config_path.read_text()
        text += (f'\n[topology]\nurl = "{url}"\ntoken = "{token}"\nretry_deadline_s = 2\n'
                 f'\n[defaults]\nplans_dir = "{tmp_path / "plans"}"\nlease_ttl_s = 4\n')
        cells.config_path.write_text(text)
        plan, path = make_plan(cells)
        from orgmove.config import load_config

        run_copy(plan, load_config(cells.config_path), CopyOptions(workers=2, chunk_rows=25))
        proc = orgmove_popen("--config", str(cells.config_path), "cutover", str(path), "--yes",
                             env={"ORGMOVE_FAILPOINTS": f"{point}=sleep(3)"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            live = [m for m in client.moves_for_org(1) if m.status in ("begun", "fenced")]
            if live and (point == "cutover.after_lease" or client.org_state(1) == "read_only"):
                break
            time.sleep(0.05)
        if point == "cutover.before_commit":
            time.sleep(1.5)
        server.kill()
        server.wait()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert "aborted" in err and "Traceback" not in err
        assert can_write(cells.dsn("cell-1"), 1)  # the source fence was lifted
        server = serve()
        deadline = time.monotonic() + 30  # the service's reaper aborts the expired move
        while time.monotonic() < deadline and client.org_state(1) != "active":
            time.sleep(0.2)
        assert client.owner_of_org(1) == "cell-1" and client.org_state(1) == "active"
        rerun = orgmove_cli("--config", str(cells.config_path), "cutover", str(path), "--yes")
        assert rerun.returncode == 0, rerun.stderr
        assert client.owner_of_org(1) == "cell-2"
    finally:
        client.close()
        server.kill()
        server.wait()
        pg_servers.drop_db("topology", dbname)
