"""Issue 13: the copy writes as a replica (target triggers skipped), the trigger policy of the
plan, and the set-based foreign-key check before the flip. Real Cells, the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg

from orgmove.plan import Plan, Trigger, read_plan
from orgmove.triggers import decode_type, fires, refused
from tests.helpers import REPO, RULES, org_checksums, orgmove_cli
from tests.world import World, can_write, world

__all__ = ["world"]


# --- pure ---------------------------------------------------------------------------------------


def _trigger(timing: str = "BEFORE", level: str = "ROW", enabled: str = "origin",
             replica_role: bool = True, allowed: bool = False) -> Trigger:
    events = ["INSERT"]
    return Trigger(table="public.t", name="x", timing=timing, level=level, events=events,  # type: ignore[arg-type]
                   enabled=enabled, function="f", fires=fires(enabled, events, replica_role),  # type: ignore[arg-type]
                   allowed=allowed)


def test_trigger_type_bits_decode() -> None:
    assert decode_type(1 | 2 | 4) == ("BEFORE", "ROW", ["INSERT"])
    assert decode_type(4 | 16) == ("AFTER", "STATEMENT", ["INSERT", "UPDATE"])
    assert decode_type(1 | 64 | 8) == ("INSTEAD OF", "ROW", ["DELETE"])


def test_which_triggers_fire_and_which_are_refused() -> None:
    # Under the replica role only ENABLE REPLICA / ENABLE ALWAYS fire, and every one that fires is
    # refused until allowed.
    assert not _trigger(enabled="origin").fires
    assert refused(_trigger(enabled="always"), replica_role=True)
    assert not refused(_trigger(enabled="always", allowed=True), replica_role=True)
    assert refused(_trigger(timing="AFTER", enabled="replica"), replica_role=True)
    # As a plain client: ENABLE and ENABLE ALWAYS fire; only BEFORE ROW ones are refused.
    plain = _trigger(enabled="origin", replica_role=False)
    assert plain.fires and refused(plain, replica_role=False)
    after = _trigger(timing="AFTER", enabled="origin", replica_role=False)
    assert after.fires and not refused(after, replica_role=False)
    assert not _trigger(enabled="disabled", replica_role=False).fires
    assert not fires("always", ["TRUNCATE"], True)


def test_privileges_doc_lists_exactly_the_grants_of_the_sql() -> None:
    def grants(text: str) -> set[str]:
        found = re.findall(r"(?m)^\s*(GRANT [^;`|]*?;)", text) + re.findall(r"`(GRANT [^`]*;)`", text)
        return {" ".join(g.split()) for g in found if "pg_read_all_stats" not in g}

    sql_grants = grants((REPO / "runbooks" / "least-privilege.sql").read_text())
    doc_grants = grants((REPO / "docs" / "privileges.md").read_text())
    assert "GRANT SET ON PARAMETER session_replication_role TO orgmove_writer;" in sql_grants
    assert sql_grants == doc_grants


# --- against real Cells -------------------------------------------------------------------------


def _cli(config: Path, *args: str) -> Any:
    proc = orgmove_cli("--config", str(config), *args)
    assert proc.returncode == 0, (args, proc.stderr)
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout) if "--json" in args else proc


def counter(dsn: str) -> tuple[int, bool]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT last_value, is_called FROM public.issues_created_counter").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def _plan_args(world: World, path: Path, *extra: str) -> list[str]:
    return ["plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES,
            "--out", str(path), *extra]


def _no_move_state(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('orgmove.moves') IS NULL").fetchone()
        if row and row[0]:
            return True
        return conn.execute("SELECT count(*) FROM orgmove.moves").fetchone() == (0,)


def test_move_into_a_target_with_triggers_lands_rows_as_on_the_source(world: World) -> None:
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    path = world.config_path.parent / "replica.plan.json"
    counter_before = counter(dst)
    doc = _cli(world.config_path, *_plan_args(world, path), "--json")
    listed = {(t["table"], t["name"]): t for s in doc["plan"]["steps"] for t in s["triggers"]}
    builds = listed[("public.p_ci_builds", "assign_p_ci_builds_id_value")]
    assert (builds["timing"], builds["level"], builds["events"], builds["enabled"], builds["fires"]) == (
        "BEFORE", "ROW", ["INSERT"], "origin", False)
    assert listed[("public.issues", "bump_issues_created_counter")]["fires"] is False
    assert doc["plan"]["replica_role"] is True

    copied = _cli(world.config_path, "copy", str(path), "--chunk-rows", "40", "--json")
    assert copied["rows"] > 0
    verified = _cli(world.config_path, "verify", str(path), "--foreign-keys", "--json")
    assert verified["equal"] is True
    fk = verified["foreign_keys"]
    assert fk["clean"] is True and fk["checked"] >= 5 and fk["checked"] + fk["implied"] >= 20
    plan = read_plan(path)
    # Exactly the source's ids: the BEFORE trigger did not assign new ones from the sequence.
    assert org_checksums(dst, plan) == org_checksums(src, plan)
    cut = _cli(world.config_path, "cutover", str(path), "--yes", "--json")
    assert cut["committed"] is True
    assert any(s["step"] == "foreign keys" for s in cut["steps"])
    assert counter(dst) == counter_before  # the AFTER trigger never fired
    assert world.owner(1) == "cell-2"


def test_no_replica_role_refuses_a_before_trigger_naming_it(world: World) -> None:
    path = world.config_path.parent / "plain.plan.json"
    proc = orgmove_cli("--config", str(world.config_path), *_plan_args(world, path, "--no-replica-role"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "public.p_ci_builds.assign_p_ci_builds_id_value" in proc.stderr
    assert "--allow-triggers p_ci_builds.assign_p_ci_builds_id_value" in proc.stderr
    assert not path.exists() and _no_move_state(world.dsn("cell-2"))
    # Accepted by name: the plan lists every trigger that will fire (the AFTER one too).
    doc = _cli(world.config_path, *_plan_args(world, path, "--no-replica-role", "--allow-triggers",
                                              "assign_p_ci_builds_id_value"), "--json")
    firing = {t["name"] for s in doc["plan"]["steps"] for t in s["triggers"] if t["fires"]}
    assert firing == {"assign_p_ci_builds_id_value", "bump_issues_created_counter"}
    assert any("bump_issues_created_counter" in w for w in doc["plan"]["warnings"])


def test_enable_always_trigger_refuses_unless_allowed(world: World) -> None:
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    with psycopg.connect(dst) as conn:
        conn.execute("ALTER TABLE public.issues ENABLE ALWAYS TRIGGER bump_issues_created_counter")
    path = world.config_path.parent / "always.plan.json"
    proc = orgmove_cli("--config", str(world.config_path), *_plan_args(world, path))
    assert proc.returncode == 2, proc.stderr
    assert "public.issues.bump_issues_created_counter" in proc.stderr and "enabled always" in proc.stderr
    assert "Traceback" not in proc.stderr and not path.exists()
    typo = orgmove_cli("--config", str(world.config_path),
                       *_plan_args(world, path, "--allow-triggers", "bump_issue_counter"))
    assert typo.returncode == 2 and "bump_issue_counter" in typo.stderr
    assert _no_move_state(dst)

    before, _ = counter(dst)
    _cli(world.config_path, *_plan_args(world, path, "--allow-triggers", "issues.bump_issues_created_counter"))
    plan: Plan = read_plan(path)
    copied = _cli(world.config_path, "copy", str(path), "--json")
    issues = next(t for t in copied["tables"] if t["table"] == "public.issues")["rows"]
    assert issues > 0
    after, _ = counter(dst)
    assert after - before in (issues, issues - 1)  # it fired once per copied issue
    assert org_checksums(dst, plan) == org_checksums(src, plan)


def test_a_trigger_set_to_always_after_the_plan_stops_the_copy(world: World) -> None:
    path = world.config_path.parent / "late.plan.json"
    _cli(world.config_path, *_plan_args(world, path))
    with psycopg.connect(world.dsn("cell-2")) as conn:
        conn.execute("ALTER TABLE public.p_ci_builds ENABLE ALWAYS TRIGGER assign_p_ci_builds_id_value")
    proc = orgmove_cli("--config", str(world.config_path), "copy", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "assign_p_ci_builds_id_value" in proc.stderr and "Traceback" not in proc.stderr
    assert _no_move_state(world.dsn("cell-2"))


def test_dangling_reference_exits_3_and_the_cutover_does_not_flip(world: World) -> None:
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    path = world.config_path.parent / "dangling.plan.json"
    _cli(world.config_path, *_plan_args(world, path))
    # Plant a fork in another organization: one of org 1's merge requests now comes from a
    # project of org 3, which stays on cell-1 and does not exist on cell-2.
    with psycopg.connect(src) as conn:
        row = conn.execute(
            "WITH mr AS (SELECT m.id FROM merge_requests m JOIN projects p ON p.id = m.target_project_id "
            "  JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = 1 ORDER BY m.id LIMIT 1), "
            "fork AS (SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
            "  WHERE n.organization_id = 3 ORDER BY p.id LIMIT 1) "
            "UPDATE merge_requests SET source_project_id = (SELECT id FROM fork) "
            "WHERE id = (SELECT id FROM mr) RETURNING id, source_project_id").fetchone()
    assert row is not None
    mr_id, fork_id = row
    _cli(world.config_path, "copy", str(path))

    plain = orgmove_cli("--config", str(world.config_path), "verify", str(path), "--json")
    assert plain.returncode == 0 and json.loads(plain.stdout)["foreign_keys"] is None
    verify = orgmove_cli("--config", str(world.config_path), "verify", str(path), "--foreign-keys",
                         "--json")
    assert verify.returncode == 3, verify.stderr
    doc = json.loads(verify.stdout)
    assert doc["equal"] is True  # the rows are equal; the reference dangles
    [dangling] = doc["foreign_keys"]["dangling"]
    assert dangling["table"] == "public.merge_requests"
    assert dangling["constraint"] == "merge_requests_source_project_id_fkey"
    assert dangling["keys"] == [f"id={fork_id}"]

    cut = orgmove_cli("--config", str(world.config_path), "cutover", str(path), "--yes")
    assert cut.returncode == 3, cut.stderr
    assert "Traceback" not in cut.stderr
    assert "public.merge_requests constraint merge_requests_source_project_id_fkey" in cut.stderr
    assert f"id={fork_id}" in cut.stderr
    assert world.owner(1) == "cell-1" and world.org_state(1) == "active"
    assert can_write(src, 1)
    with psycopg.connect(dst) as conn:
        state = conn.execute("SELECT state FROM orgmove.moves").fetchone()
        assert conn.execute("SELECT count(*) FROM projects WHERE id = %s", (fork_id,)).fetchone() == (0,)
    # With change capture the FK check runs while the org is still writable, before the lease:
    # the cutover refuses without fencing, and the move keeps its state.
    assert state == ("verified",)
    assert mr_id > 0
