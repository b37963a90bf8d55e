"""Issue 8: a whole move with only the least-privilege roles of runbooks/least-privilege.sql.

The roles are created by the runbook's SQL itself (run with psql, as the runbook says, on both
Cells, after the administrator installed the write fence); the config then names only those roles
and plan, copy, verify, cutover and cleanup run through the real CLI. No step connects as a
superuser."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from orgmove.sandbox.pgcluster import find_pg_bin
from tests.helpers import REPO, RULES, org_checksums, orgmove_cli, other_rows_checksums
from tests.orgcounts import org_row_counts
from tests.world import World, can_write, world

__all__ = ["world"]  # the `world` fixture, used by the tests below

ROLE_SQL = REPO / "runbooks" / "least-privilege.sql"
PASSWORDS = {"reader": "rd-5b1e-pass", "writer": "wr-9c2d-pass", "cleanup": "cl-3f7a-pass"}
ROLES = ("orgmove_reader", "orgmove_writer", "orgmove_cleanup")


def _psql() -> str:
    try:
        candidate = find_pg_bin() / "psql"
    except Exception:
        candidate = Path("/nonexistent")
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("psql")
    if not found:
        pytest.skip("psql is not installed")
    return found


def run_role_sql(admin_dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_psql(), admin_dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-v", f"reader_password={PASSWORDS['reader']}",
         "-v", f"writer_password={PASSWORDS['writer']}",
         "-v", f"cleanup_password={PASSWORDS['cleanup']}",
         "-f", str(ROLE_SQL)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def role_dsn(admin_dsn: str, role: str) -> str:
    params = conninfo.conninfo_to_dict(admin_dsn)
    return (f"postgresql://orgmove_{role}:{PASSWORDS[role]}@{params['host']}:{params['port']}/"
            f"{params['dbname']}")


def write_role_config(world: World, name: str, source_role: str) -> Path:
    """The world's config with cell-1 (the source) as ``source_role`` and cell-2 as the writer."""
    text = world.config_path.read_text()
    for cell, role in (("cell-1", source_role), ("cell-2", "writer")):
        admin = world.dsn(cell)
        assert admin in text
        text = text.replace(admin, role_dsn(admin, role))
    assert "postgres:" not in text  # no superuser DSN left
    path = world.config_path.parent / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _cli(config: Path, *args: str) -> Any:
    proc = orgmove_cli("--config", str(config), *args)
    assert proc.returncode == 0, (args, proc.stderr)
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout) if "--json" in args else proc


@pytest.fixture()
def roles(world: World) -> World:
    for cell in ("cell-1", "cell-2"):
        proc = run_role_sql(world.dsn(cell))
        assert proc.returncode == 0, proc.stderr
        again = run_role_sql(world.dsn(cell))  # idempotent
        assert again.returncode == 0, again.stderr
    return world


def test_the_roles_are_not_privileged(roles: World) -> None:
    with psycopg.connect(roles.dsn("cell-1")) as conn:
        rows = conn.execute(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1", (list(ROLES),)).fetchall()
    assert [r[0] for r in rows] == sorted(ROLES)
    assert all(not any(r[1:]) for r in rows), rows
    reader = role_dsn(roles.dsn("cell-1"), "reader")
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT count(*) FROM public.organizations").fetchone()[0] > 0  # type: ignore[index]
        for statement in ("DELETE FROM public.issues", "UPDATE public.projects SET name = name",
                          "INSERT INTO public.organizations (id, name, path, created_at) "
                          "VALUES (77, 'x', 'x', now())",
                          "CREATE TABLE public.x (id int)", "CREATE SCHEMA x",
                          "DROP TABLE orgmove.fences", "DELETE FROM public.application_settings"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]
            conn.rollback()
    writer = role_dsn(roles.dsn("cell-2"), "writer")
    with psycopg.connect(writer) as conn:
        for statement in ("UPDATE public.users SET username = username", "CREATE SCHEMA x",
                          "DROP FUNCTION orgmove.assert_writable(text)",
                          "INSERT INTO orgmove.fences (organization_id, move_key) VALUES ('1', 'x')",
                          "ALTER TABLE public.issues ADD COLUMN x int"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]
            conn.rollback()


def test_full_move_with_least_privilege_roles(roles: World) -> None:
    world = roles
    config = write_role_config(world, "least.toml", "reader")
    plan_path = world.config_path.parent / "least.plan.json"
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    dst_others = None

    _cli(config, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES,
         "--out", str(plan_path), "--json")
    from orgmove.plan import read_plan

    plan = read_plan(plan_path)
    assert plan.replica_role  # the writer holds SET ON PARAMETER session_replication_role
    dst_others = other_rows_checksums(dst, plan)
    counter_before = _issues_counter(dst)
    # The least-privileged reader has no REPLICATION and owns no table: no change capture, so
    # this also covers the checksum cutover kept for moves without a slot.
    copied = _cli(config, "copy", str(plan_path), "--chunk-rows", "30", "--no-capture", "--json")
    assert copied["rows"] > 0
    verified = _cli(config, "verify", str(plan_path), "--json")
    assert verified["equal"] is True
    # The application writes after the copy: cutover's sync re-copies those chunks (a temporary
    # staging table and MERGE on the target, as the writer).
    with psycopg.connect(src) as conn:
        conn.execute("UPDATE issues SET title = 'changed after copy' WHERE id = (SELECT min(i.id) "
                     "FROM issues i JOIN projects p ON p.id = i.project_id JOIN namespaces n "
                     "ON n.id = p.namespace_id WHERE n.organization_id = 1)")
    cut = _cli(config, "cutover", str(plan_path), "--yes", "--json")
    assert cut["committed"] is True and cut["new_owner"] == "cell-2"
    assert cut["rows_resynced"] >= 1
    assert world.owner(1) == "cell-2" and world.org_state(1) == "active"
    assert org_checksums(dst, plan) == org_checksums(src, plan)
    assert other_rows_checksums(dst, plan) == dst_others
    assert _issues_counter(dst) == counter_before  # written as a replica: the AFTER trigger never ran
    assert not can_write(src, 1) and can_write(dst, 1)

    # The move state lives in tables the writer created and owns; the fence stays the admin's.
    with psycopg.connect(dst) as conn:
        owners = dict(conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'orgmove' AND c.relkind = 'r'").fetchall())
    assert owners.pop("fences") == "postgres"
    assert owners and set(owners.values()) == {"orgmove_writer"}, owners

    # The reader cannot clean up: deleting application rows needs the cleanup role.
    proc = orgmove_cli("--config", str(config), "cleanup", str(plan_path), "--yes")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cell 'cell-1' denied a privilege (delete public." in proc.stderr, proc.stderr
    assert "permission denied for table" in proc.stderr
    assert "Fix: grant the role in the DSN of cell 'cell-1'" in proc.stderr
    assert "orgmove_cleanup" in proc.stderr
    assert sum(org_row_counts(src, 1).values()) > 0

    cleanup_config = write_role_config(world, "cleanup.toml", "cleanup")
    cleaned = _cli(cleanup_config, "cleanup", str(plan_path), "--yes", "--json")
    assert cleaned["rows_deleted"] > 0
    assert sum(org_row_counts(src, 1).values()) == 0
    assert org_row_counts(src, 3) and sum(org_row_counts(src, 3).values()) > 0


def test_rollback_and_aborted_cutover_with_least_privilege_roles(roles: World) -> None:
    world = roles
    config = write_role_config(world, "least.toml", "reader")
    plan_path = world.config_path.parent / "least.plan.json"
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    _cli(config, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES,
         "--out", str(plan_path))
    _cli(config, "copy", str(plan_path), "--no-capture")
    # A cutover that fails after the fence: the reader lifts the source fence again.
    proc = orgmove_cli("--config", str(config), "cutover", str(plan_path), "--yes",
                       env={"ORGMOVE_FAILPOINTS": "cutover.after_fence=error"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert world.owner(1) == "cell-1" and world.org_state(1) == "active"
    assert can_write(src, 1)
    rolled = _cli(config, "rollback", str(plan_path), "--yes", "--json")
    assert rolled["rows_deleted"] > 0
    assert sum(org_row_counts(dst, 1).values()) == 0
    assert world.owner(1) == "cell-1" and can_write(src, 1)


def _issues_counter(dsn: str) -> tuple[int, bool]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT last_value, is_called FROM public.issues_created_counter").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def test_without_the_set_grant_the_preflight_names_it(roles: World) -> None:
    world = roles
    config = write_role_config(world, "least.toml", "reader")
    plan_path = world.config_path.parent / "noset.plan.json"
    dst = world.dsn("cell-2")
    _cli(config, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES,
         "--out", str(plan_path))
    with psycopg.connect(dst) as conn:
        conn.execute("REVOKE SET ON PARAMETER session_replication_role FROM orgmove_writer")
    grant = 'GRANT SET ON PARAMETER session_replication_role TO "orgmove_writer"'
    for args in (("plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", RULES,
                  "--out", str(plan_path.with_name("again.plan.json"))),
                 ("copy", str(plan_path))):
        proc = orgmove_cli("--config", str(config), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "may not set session_replication_role" in proc.stderr
        assert grant in proc.stderr and "--no-replica-role" in proc.stderr
    assert not plan_path.with_name("again.plan.json").exists()
    assert sum(org_row_counts(dst, 1).values()) == 0  # nothing changed on the target
    with psycopg.connect(dst) as conn:
        # The copy stopped before creating the move state.
        assert conn.execute("SELECT to_regclass('orgmove.chunks')").fetchone() == (None,)
    # --no-replica-role without the grant: the fixture's BEFORE trigger is refused by name.
    proc = orgmove_cli("--config", str(config), "plan", "--org", "1", "--from", "cell-1", "--to",
                       "cell-2", "--rules", RULES, "--out", str(plan_path), "--no-replica-role")
    assert proc.returncode == 2 and "assign_p_ci_builds_id_value" in proc.stderr, proc.stderr
