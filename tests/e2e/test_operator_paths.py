"""Issue 18: the operator one step off the happy path. Each test follows what the tool prints
(the fix of an error, a `next:` line, a rerun) through the real CLI on real Cells and asserts
where it leads: exit codes, Topology claims, row checksums on both Cells."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.test_operator_experience import assert_same_shape
from tests.helpers import RULES, make_plan, org_checksums, orgmove_cli, orgmove_popen
from tests.world import World, can_write


def _cli(world: World, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    proc = orgmove_cli("--config", str(world.config_path), *args, env=env)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout) if "--json" in args else proc


def _fix_commands(stderr: str) -> list[list[str]]:
    """The `orgmove ...` commands quoted in an error's Fix, as argument lists."""
    fix = stderr.split("Fix:", 1)[1]
    return [cmd.split()[1:] for cmd in re.findall(r"`(orgmove [^`]+)`", fix)]


def _copied_and_cut_over(world: World) -> tuple[Any, Path]:
    plan, path = make_plan(world.cells)
    _cli(world, "copy", str(path))
    _cli(world, "cutover", str(path), "--yes")
    assert world.owner(1) == "cell-2"
    return plan, path


# --- 1. the unclassified-tables refusal -----------------------------------------------------------


def test_unclassified_tables_refusal_is_one_paragraph_then_one_table_a_line(world: World, tmp_path: Path) -> None:
    proc = _cli(world, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2",
                "--out", str(tmp_path / "x.plan.json"), code=2)
    paragraph, *tables = proc.stderr.rstrip("\n").split("\n")
    assert paragraph.startswith("orgmove: error: ") and len(paragraph) < 400, paragraph
    assert "--rules" in paragraph and "--suggest-rules" in paragraph
    n = int(re.search(r"(\d+) table\(s\) are not classified", paragraph).group(1))  # type: ignore[union-attr]
    assert n > 10  # the fixture schema without rules: more than the ten shown
    assert len(tables) == 11 and all(t.startswith("  public.") for t in tables[:10])
    assert tables[10] == f"  ... and {n - 10} more (all of them: --suggest-rules)"
    assert not (tmp_path / "x.plan.json").exists()


# --- 2. rollback after the flip: the hint is the move-back procedure ------------------------------


def test_rollback_of_a_committed_move_names_the_move_back_and_following_it_works(world: World) -> None:
    plan, path = _copied_and_cut_over(world)
    # Refused before any confirmation is asked (no --yes, no terminal): it cannot run at all.
    refused = _cli(world, "rollback", str(path), code=2)
    assert "was committed" in refused.stderr and "confirmation" not in refused.stderr
    steps = _fix_commands(refused.stderr)
    assert [s[0] for s in steps] == ["cleanup", "move"], refused.stderr
    assert str(path) in steps[0]
    for step in steps:
        extra = ["--rules", RULES] if step[0] == "move" else []
        _cli(world, *step, *extra)
    assert world.owner(1) == "cell-1" and world.org_state(1) == "active"
    assert can_write(world.dsn("cell-1"), 1)
    # Back on cell-1 with every row; cell-2 keeps its copy until the move back's own cleanup.
    home = org_checksums(world.dsn("cell-1"), plan)
    assert sum(n for n, _ in home.values()) > 0 and home == org_checksums(world.dsn("cell-2"), plan)


# --- 4 and 5. reruns of finished steps -------------------------------------------------------------


def test_second_copy_is_a_no_op_that_keeps_the_snapshot_facts(world: World) -> None:
    plan, path = make_plan(world.cells)
    first = _cli(world, "copy", str(path), "--json")
    again = _cli(world, "copy", str(path), "--json")
    assert first["already_done"] is False and again["already_done"] is True
    assert_same_shape(again, first)
    assert again["rows"] == 0 and again["chunks"]["skipped"] == first["chunks"]["total"]
    assert again["snapshots"] == 1 and again["snapshot_consistent"] is True
    human = _cli(world, "copy", str(path))
    assert "already done" in human.stdout and f"next: orgmove verify {path}" in human.stdout
    status = _cli(world, "status", str(path), "--json")["moves"][0]
    assert status["snapshots"] == 1 and status["snapshot_consistent"] is True
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(world.dsn("cell-1"), plan)


def test_reruns_after_the_flip_are_already_done_with_the_same_json(world: World) -> None:
    plan, path = make_plan(world.cells)
    _cli(world, "copy", str(path))
    cut = _cli(world, "cutover", str(path), "--yes", "--json")
    assert cut["already_done"] is False and cut["estimated_freeze_s"] > 0
    cut_again = _cli(world, "cutover", str(path), "--yes", "--json")
    assert cut_again["already_done"] is True and cut_again["committed"] is True
    assert cut_again["new_owner"] == "cell-2" and cut_again["topology_move_id"] == cut["topology_move_id"]
    assert set(cut_again) == set(cut)
    assert "already done" in _cli(world, "cutover", str(path), "--yes").stdout
    verify_again = _cli(world, "verify", str(path), "--json")
    assert verify_again["already_done"] is True and verify_again["equal"] is True
    copy_again = _cli(world, "copy", str(path), "--json")
    assert copy_again["already_done"] is True and copy_again["rows"] == 0
    clean = _cli(world, "cleanup", str(path), "--yes", "--json")
    clean_again = _cli(world, "cleanup", str(path), "--yes", "--json")
    assert clean["rows_deleted"] > 0 and clean["already_done"] is False
    assert clean_again["already_done"] is True and clean_again["rows_deleted"] == 0
    assert set(clean_again) == set(clean)
    assert _cli(world, "verify", str(path), "--json")["already_done"] is True  # not a mismatch after cleanup
    assert world.owner(1) == "cell-2"
    assert all(n == 0 for n, _ in org_checksums(world.dsn("cell-1"), plan).values())


def test_rollback_rerun_is_already_done(world: World) -> None:
    plan, path = make_plan(world.cells)
    _cli(world, "copy", str(path))
    first = _cli(world, "rollback", str(path), "--yes", "--json")
    again = _cli(world, "rollback", str(path), "--yes", "--json")
    assert first["rows_deleted"] > 0 and first["already_done"] is False
    assert again["already_done"] is True and again["rows_deleted"] == 0 and set(again) == set(first)
    assert world.owner(1) == "cell-1" and can_write(world.dsn("cell-1"), 1)
    assert all(n == 0 for n, _ in org_checksums(world.dsn("cell-2"), plan).values())


# --- 8. next: lines with real paths ------------------------------------------------------------------


def test_next_lines_name_the_real_plan_path_and_verify_always_has_one(world: World) -> None:
    plan, path = make_plan(world.cells)
    _cli(world, "copy", str(path))
    equal = _cli(world, "verify", str(path))
    assert f"next: orgmove cutover {path} --dry-run" in equal.stdout
    with psycopg.connect(world.dsn("cell-2")) as conn:
        conn.execute("UPDATE issues SET title = 'drifted' WHERE id = (SELECT min(id) FROM issues "
                     "WHERE title <> 'drifted' AND project_id IN (SELECT p.id FROM projects p JOIN namespaces n "
                     "ON n.id = p.namespace_id WHERE n.organization_id = 1))")
    mismatch = _cli(world, "verify", str(path), code=3)
    assert "MISMATCH" in mismatch.stdout and f"orgmove copy {path}" in mismatch.stdout
    cut = _cli(world, "cutover", str(path), "--yes")
    assert f"next: orgmove cleanup {path} --yes" in cut.stdout and "PLAN" not in cut.stdout
    assert re.search(r"freeze window: [\d,]+ ms \(fence to commit; estimated [\d,]+ ms\)", cut.stdout), cut.stdout
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(world.dsn("cell-1"), plan)


# --- 9. cutover dry run agrees with the real cutover ----------------------------------------------------


def test_dry_run_refusal_matches_the_real_cutover_and_both_exit_2(world: World) -> None:
    plan, path = make_plan(world.cells)
    _cli(world, "copy", str(path))
    dry = _cli(world, "cutover", str(path), "--dry-run", "--max-freeze", "0.0001", "--json", code=2)
    assert dry["checks"]["fits --max-freeze"] is False
    assert "would refuse: fits --max-freeze" in _cli(world, "cutover", str(path), "--dry-run",
                                                      "--max-freeze", "0.0001", code=2).stdout
    real = _cli(world, "cutover", str(path), "--yes", "--max-freeze", "0.0001", code=2)
    assert "--max-freeze" in real.stderr and "nothing was fenced" in real.stderr
    assert world.owner(1) == "cell-1" and world.org_state(1) == "active" and can_write(world.dsn("cell-1"), 1)
    # Unpadded: a generous but sub-second limit passes the dry run and the real cutover alike.
    ok = _cli(world, "cutover", str(path), "--dry-run", "--max-freeze", "0.9", "--json")
    assert ok["checks"]["fits --max-freeze"] is True and 0 < ok["estimated_freeze_s"] < 0.9
    done = _cli(world, "cutover", str(path), "--yes", "--max-freeze", "0.9", "--json")
    assert done["committed"] is True and world.owner(1) == "cell-2"


# --- 10. messages after Ctrl-C and confirmations ----------------------------------------------------------


def test_confirmation_refusals_are_full_sentences(world: World) -> None:
    plan, path = make_plan(world.cells)
    _cli(world, "copy", str(path))
    proc = _cli(world, "cutover", str(path), code=2)
    assert ("Cutover moves organization 1 from cell-1 to cell-2: its writes freeze until the claims "
            "flip. This needs confirmation and there is no terminal to ask. Fix: pass --yes") in proc.stderr
    assert world.owner(1) == "cell-1"


def test_interrupted_copy_records_last_error_and_the_hint_names_the_plan(world: World) -> None:
    plan, path = make_plan(world.cells)
    proc = orgmove_popen("--config", str(world.config_path), "copy", str(path), "--chunk-rows", "10",
                         env={"ORGMOVE_FAILPOINTS": "copy.before_commit=sleep(0.3)"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with psycopg.connect(world.dsn("cell-2")) as conn:
            exists = conn.execute("SELECT to_regclass('orgmove.chunk_log')").fetchone()[0]  # type: ignore[index]
            done = exists and conn.execute("SELECT count(*) FROM orgmove.chunk_log WHERE move_key = %s",
                                           (plan.move_key,)).fetchone()[0]  # type: ignore[index]
        if done:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    hint = re.search(r"`(orgmove status [^`]+)`", err)
    assert hint and hint.group(1) == f"orgmove status {path}", err
    status = _cli(world, *hint.group(1).split()[1:], "--json")
    assert "interrupted" in (status["moves"][0]["last_error"] or "")
    resumed = _cli(world, "copy", str(path), "--json")
    assert resumed["chunks"]["copied"] > 0
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(world.dsn("cell-1"), plan)


# --- 6. output for people ---------------------------------------------------------------------------


def test_plan_verify_and_status_read_well_at_80_columns(world: World, tmp_path: Path) -> None:
    narrow = {"COLUMNS": "80"}
    path = tmp_path / "p.plan.json"
    planned = _cli(world, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES,
                   "--out", str(path), env=narrow)
    tables = [s["table"] for s in json.loads(path.read_text())["steps"]]
    _cli(world, "copy", str(path))
    verified = _cli(world, "verify", str(path), env=narrow)
    for proc in (planned, verified):
        table_lines = [line for line in proc.stdout.splitlines() if not line.startswith(("plan ", "next:"))]
        assert all(len(line) <= 80 for line in table_lines), "\n".join(x for x in table_lines if len(x) > 80)
        for name in tables:  # never split: every name stands whole on one line
            assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", proc.stdout, re.M), (name, proc.stdout)
    _cli(world, "cutover", str(path), "--yes")
    status = _cli(world, "status", str(path)).stdout
    assert "{'" not in status and not re.search(r"\d\.\d{4,}", status), status
    assert re.search(r"^  freeze window +[\d,]+ ms$", status, re.M), status
    assert re.search(r"^  chunks +\d[\d,]* of \d[\d,]* done$", status, re.M), status
    events = [line for line in status.splitlines() if line.startswith("    ")]
    assert len(events) >= 3 and any("committed" in e for e in events), status
    assert re.search(r"^  owner +cell-2$", status, re.M), status


# --- also: move --dry-run and --rate -------------------------------------------------------------------


def test_move_dry_run_changes_nothing_and_rate_limits_a_real_move(world: World) -> None:
    base = ("move", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES)
    dry = _cli(world, *base, "--dry-run", "--json")  # no --yes needed: nothing changes
    assert dry["copy"]["dry_run"] is True and dry["copy"]["rows"] > 0 and dry["new_owner"] is None
    plan = make_plan(world.cells)[0]
    assert all(n == 0 for n, _ in org_checksums(world.dsn("cell-2"), plan).values())
    assert world.owner(1) == "cell-1" and world.client.moves_for_org(1) == []
    assert "dry run: move" in _cli(world, *base, "--dry-run").stdout
    rate = max(1, dry["copy"]["rows"] // 2)  # about two seconds of copying
    moved = _cli(world, *base, "--rate", str(rate), "--yes", "--json")
    assert moved["new_owner"] == "cell-2" and world.owner(1) == "cell-2"
    assert moved["copy"]["seconds"] >= 0.9 * moved["rows"] / rate
    assert org_checksums(world.dsn("cell-2"), plan) == org_checksums(world.dsn("cell-1"), plan)


def test_plan_during_a_move_is_already_done_and_keeps_the_plan(world: World, tmp_path: Path) -> None:
    path = tmp_path / "p.plan.json"
    args = ("plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES, "--out", str(path))
    first = _cli(world, *args, "--json")
    _cli(world, "copy", str(path))
    written = path.read_bytes()
    again = _cli(world, *args, "--json")  # the copied rows on cell-2 are the move's own: no conflict
    assert first["already_done"] is False and again["already_done"] is True
    assert set(again) == set(first) and again["plan"]["checksum"] == first["plan"]["checksum"]
    assert path.read_bytes() == written
    human = _cli(world, *args)
    assert "already done" in human.stdout and f"next: orgmove status {path}" in human.stdout
    _cli(world, "cutover", str(path), "--yes")
    assert world.owner(1) == "cell-2"
