"""The stream cutover against real Cells and a real Topology Service: catch up, fence, apply
through the fence position, check only what the stream touched, flip; refuse while the lag does
not fit --max-freeze; kill -9 during the cutover's apply."""

from __future__ import annotations

import psycopg
import pytest

from orgmove.capture import capture_names
from orgmove.copy import CopyOptions, run_copy
from tests.e2e.test_online_capture import _write_after_copy
from tests.helpers import cli_ok, make_plan, org_checksums, orgmove_popen
from tests.world import World, can_write


def _slots(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots "
                                           "WHERE database = current_database()").fetchall()]


def _copied(world: World):
    plan, path = make_plan(world.cells)
    run_copy(plan, world.config, CopyOptions(workers=2, chunk_rows=25))
    return plan, path


def test_stream_cutover_applies_through_the_fence_and_drops_the_slot(world: World) -> None:
    plan, path = _copied(world)
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    _write_after_copy(src, 200)
    cli_ok(world.config_path, "sync", str(path), "--until-caught-up", "--json")
    _write_after_copy(src, 60)  # not yet applied when the cutover starts
    doc = cli_ok(world.config_path, "cutover", str(path), "--yes", "--max-freeze", "10", "--json")
    assert doc["committed"] is True and doc["new_owner"] == "cell-2"
    steps = {s["step"]: s for s in doc["steps"]}
    assert "apply" in steps and "final check" in steps and "sync" not in steps
    assert world.owner(1) == "cell-2"
    assert org_checksums(dst, plan) == org_checksums(src, plan)
    assert not can_write(src, 1)
    assert capture_names(plan.move_key).slot not in _slots(src)
    with psycopg.connect(src) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s",
                            (capture_names(plan.move_key).publication,)).fetchone() == (0,)


def test_cutover_refuses_while_the_lag_does_not_fit(world: World) -> None:
    from tests.helpers import orgmove_cli
    from tests.online_writers import Writers

    plan, path = _copied(world)
    src = world.dsn("cell-1")
    # Writers keep committing and every target commit of the catch-up takes 0.3 s: the lag cannot
    # fit a 0.2 s freeze.
    writers = Writers(src).start()
    try:
        proc = orgmove_cli("--config", str(world.config_path), "cutover", str(path), "--yes", "--max-freeze",
                           "0.2", "--json", env={"ORGMOVE_FAILPOINTS": "apply.before_commit=sleep(0.3)"})
    finally:
        writers.stop()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    import json

    doc = json.loads(proc.stdout)
    assert doc["error"]["code"] == "lag_too_high"
    assert world.owner(1) == "cell-1" and can_write(src, 1)  # nothing fenced


@pytest.mark.parametrize("point", ["cutover.after_fence=exit", "apply.before_commit=exit@2",
                                   "cutover.after_apply=exit", "apply.after_commit=exit@3",
                                   "cutover.before_commit=exit",
                                   # Inside the fenced apply and the final check (freeze window).
                                   "cutover.fenced_apply.start=exit", "cutover.fenced_apply.end=exit",
                                   "cutover.final_check=exit"])
def test_kill_9_during_the_cutover_then_rerun_completes(world: World, point: str) -> None:
    plan, path = _copied(world)
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    _write_after_copy(src, 300)
    args = ("--config", str(world.config_path), "cutover", str(path), "--yes", "--max-freeze", "20", "--json")
    proc = orgmove_popen(*args, env={"ORGMOVE_FAILPOINTS": point})
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 137, (point, proc.returncode, stderr)
    doc = cli_ok(world.config_path, *args[2:])
    assert doc["committed"] is True
    assert world.owner(1) == "cell-2"
    assert org_checksums(dst, plan) == org_checksums(src, plan)  # nothing lost, nothing doubled
    assert capture_names(plan.move_key).slot not in _slots(src)


def test_final_check_catches_a_touched_row_that_differs_and_aborts(world: World) -> None:
    plan, path = _copied(world)
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    _write_after_copy(src, 50)
    cli_ok(world.config_path, "sync", str(path), "--until-caught-up", "--json")
    with psycopg.connect(dst, autocommit=True) as conn:  # a write on the target behind orgmove's back
        changed = conn.execute("UPDATE notes SET note = 'tampered' WHERE id = (SELECT max(id) FROM notes "
                               "WHERE note LIKE 'note %%')").rowcount
    assert changed == 1
    doc = cli_ok(world.config_path, "cutover", str(path), "--yes", "--max-freeze", "10", "--json", code=3)
    assert "public.notes" in doc["error"]["message"]
    assert world.owner(1) == "cell-1" and can_write(src, 1)  # aborted: the org stays on the source
