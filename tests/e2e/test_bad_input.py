"""Issue 8: a catalogue of bad inputs, each through the real CLI (``orgmove_cli``).

Every case asserts the exit code (2 for bad input or a failed pre-flight, 3 for a verification
mismatch), a message naming the problem and the fix, no traceback (unless ``--debug``), and that
NOTHING changed: a content fingerprint of both Cell databases (md5 of every table's rows, sequence
positions and the user catalog) and of the Topology Service (claims, leases, moves) is taken before
and compared after.

docs/safety.md lists every case with what the operator sees and the test that shows it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orgmove.copy import CopyOptions, run_copy
from orgmove.sandbox.pgcluster import free_port
from tests.helpers import (
    RULES,
    chunk_log_duplicates,
    make_plan,
    org_checksums,
    orgmove_cli,
    orgmove_popen,
    other_rows_checksums,
)
from tests.world import World, can_write, world

__all__ = ["world"]  # the `world` fixture, used by the tests below

ORGS = (1, 2, 3)


# --- "nothing changed": fingerprints of both Cells and the Topology Service ----------------------

_USER_RELATIONS = """
SELECT n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""

# The user-visible catalog: relations, columns, constraints, indexes, functions, schemas.
_CATALOG = """
SELECT md5(string_agg(line, E'\\n' ORDER BY line)) FROM (
  SELECT format('rel %s %s %s', n.nspname, c.relname, c.relkind) AS line
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  UNION ALL
  SELECT format('col %s %s %s %s %s', a.attrelid::regclass, a.attnum, a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE a.attnum > 0 AND NOT a.attisdropped
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  UNION ALL
  SELECT format('con %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace NOT IN
      (SELECT oid FROM pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema'))
  UNION ALL
  SELECT format('fn %s', p.oid::regprocedure) FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT format('nsp %s', nspname) FROM pg_namespace
) s
"""


def cell_fingerprint(dsn: str) -> dict[str, str]:
    """md5 of every user table's rows (and each sequence's position), plus the catalog."""
    out: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'")
        relations = conn.execute(_USER_RELATIONS).fetchall()
        for schema, rel, kind in relations:
            ident = sql.Identifier(schema, rel)
            name = f"{schema}.{rel}"
            if kind == "S":
                q = sql.SQL("SELECT format('%s %s', last_value, is_called) FROM {}").format(ident)
            else:
                q = sql.SQL(
                    "SELECT format('%s %s', count(*), md5(COALESCE(string_agg(t::text, E'\\n' "
                    "ORDER BY t::text), ''))) FROM {} AS t"
                ).format(ident)
            row = conn.execute(q).fetchone()
            out[f"{kind} {name}"] = str(row[0]) if row else ""
        row = conn.execute(_CATALOG).fetchone()
        out["catalog"] = str(row[0]) if row else ""
    return out


def _rows_only(fingerprint: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fingerprint.items() if k != "catalog" and not k.split(" ", 1)[1].startswith("orgmove.")}


def topology_fingerprint(world: World) -> dict[str, Any]:
    client = world.client
    claims = sorted((c.model_dump(mode="json") for c in client.iter_claims()),
                    key=lambda c: json.dumps(c, sort_keys=True))
    leases = client.list_leases(status="", limit=1000).model_dump(mode="json")
    moves = {org: [m.model_dump(mode="json") for m in client.moves_for_org(org)] for org in ORGS}
    states = {org: (client.owner_of_org(org), _org_state(world, org)) for org in ORGS}
    return {"claims": claims, "leases": leases, "moves": moves, "orgs": states}


def _org_state(world: World, org: int) -> str | None:
    try:
        return world.org_state(org)
    except Exception:
        return None


@dataclass
class Fingerprint:
    cells: dict[str, dict[str, str]]
    topology: dict[str, Any] | None

    @classmethod
    def take(cls, world: World) -> Fingerprint:
        cells = {name: cell_fingerprint(world.dsn(name)) for name in ("cell-1", "cell-2")}
        return cls(cells, topology_fingerprint(world))

    def assert_unchanged(self, world: World) -> None:
        now = Fingerprint.take(world)
        for name in self.cells:
            changed = {k for k in self.cells[name].keys() | now.cells[name].keys()
                       if self.cells[name].get(k) != now.cells[name].get(k)}
            assert not changed, f"cell {name} changed: {sorted(changed)}"
        assert now.topology == self.topology, "the Topology Service changed"


# --- running the CLI ----------------------------------------------------------------------------


def cli(world: World, *args: str, config: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return orgmove_cli("--config", str(config or world.config_path), *args, env=env)


def assert_refused(proc: Any, code: int, *needles: str) -> str:
    """The process refused with ``code``, one clear paragraph naming the problem and the fix."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    assert err.startswith("orgmove: error: "), err
    assert "Fix: " in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return str(err)


def refused_and_unchanged(world: World, run: Callable[[], Any], code: int, *needles: str) -> str:
    before = Fingerprint.take(world)
    proc = run()
    text = assert_refused(proc, code, *needles)
    before.assert_unchanged(world)
    return text


def plan_cmd(world: World, *extra: str, org: str = "1", src: str = "cell-1", dst: str = "cell-2",
             config: Path | None = None, rules: str = RULES) -> Any:
    return cli(world, "plan", "--org", org, "--from", src, "--to", dst, "--rules", rules,
               "--out", str(world.config_path.parent / "bad.plan.json"), *extra, config=config)


def write_config(world: World, name: str, replace: dict[str, str]) -> Path:
    """A copy of the world's config with some text replaced (mode 0600)."""
    text = world.config_path.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = world.config_path.parent / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _copied(world: World, org: str = "1") -> tuple[Any, Path]:
    plan, path = make_plan(world.cells, org)
    run_copy(plan, world.config, CopyOptions(workers=2, chunk_rows=25))
    return plan, path


def _one(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _exec(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)  # type: ignore[arg-type]


# --- plan: the organization and the cells -------------------------------------------------------


def test_unknown_organization(world: World) -> None:
    refused_and_unchanged(world, lambda: plan_cmd(world, org="999"), 2,
                          "organization 999 does not exist on cell 'cell-1'", "check the organization id")


def test_from_equals_to(world: World) -> None:
    refused_and_unchanged(world, lambda: plan_cmd(world, dst="cell-1"), 2,
                          "--from and --to are the same cell", "another cell")


def test_unknown_cell_name(world: World) -> None:
    refused_and_unchanged(world, lambda: plan_cmd(world, dst="cell-9"), 2,
                          "unknown cell 'cell-9'", "cell-1, cell-2", "[cells.cell-9]")


def test_unreachable_cell(world: World) -> None:
    port = world.dsn("cell-2").split("@127.0.0.1:")[1].split("/")[0]
    config = write_config(world, "dead.toml", {f"@127.0.0.1:{port}/": f"@127.0.0.1:{free_port()}/"})
    refused_and_unchanged(world, lambda: plan_cmd(world, config=config), 2,
                          "cell 'cell-2' is unreachable", "check that the Cell's PostgreSQL is up")


def test_wrong_password(world: World) -> None:
    dsn = world.dsn("cell-2")
    password = dsn.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    config = write_config(world, "badpw.toml", {f":{password}@127.0.0.1:{dsn.split(':')[-1].split('/')[0]}":
                                                f":not-the-password@127.0.0.1:{dsn.split(':')[-1].split('/')[0]}"})
    text = refused_and_unchanged(world, lambda: plan_cmd(world, config=config), 2,
                                 "cell 'cell-2' refused the login", "check the user and password")
    assert "not-the-password" not in text  # the password is never printed


def test_source_is_not_the_owner_in_the_topology_service(world: World) -> None:
    # Someone already moved organization 1's claims to cell-2 (the rows are still on cell-1).
    mv = world.client.begin_move(1, "cell-1", "cell-2", 600)
    world.client.fence(mv.move_id, mv.fencing_token)
    world.client.commit_move(mv.move_id, mv.fencing_token, "cell-1")
    assert world.owner(1) == "cell-2"
    refused_and_unchanged(world, lambda: plan_cmd(world), 2,
                          "organization 1 is owned by cell 'cell-2', not 'cell-1'", "--from cell-2")


def test_org_id_of_the_wrong_type(world: World) -> None:
    refused_and_unchanged(world, lambda: plan_cmd(world, org="acme"), 2,
                          "organization id 'acme' is not an integer", "bigint", "numeric id")


def test_org_id_out_of_range(world: World) -> None:
    refused_and_unchanged(world, lambda: plan_cmd(world, org=str(2**63)), 2,
                          "out of the range of bigint")


# --- plan: the target ---------------------------------------------------------------------------


def test_target_table_missing(world: World) -> None:
    _exec(world.dsn("cell-2"), "DROP TABLE public.lfs_objects_projects")
    refused_and_unchanged(world, lambda: plan_cmd(world), 2,
                          "public.lfs_objects_projects is missing on the target", "run the same migrations")


def test_target_column_of_an_incompatible_type(world: World) -> None:
    _exec(world.dsn("cell-2"), "ALTER TABLE public.issues ALTER COLUMN title TYPE varchar(200)")
    refused_and_unchanged(world, lambda: plan_cmd(world), 2,
                          "public.issues.title is text on the source but character varying(200) on the target",
                          "run the same migrations")


def test_target_row_already_uses_a_key_of_the_org(world: World) -> None:
    ns = _one(world.dsn("cell-1"), "SELECT min(id) FROM public.namespaces WHERE organization_id = 1")
    _exec(world.dsn("cell-2"),
          "INSERT INTO public.organizations (id, name, path, created_at) VALUES (9, 'o', 'o', now())",
          f"INSERT INTO public.namespaces (id, organization_id, type, name, path, created_at) "
          f"VALUES ({int(ns)}, 9, 'Group', 'x', 'squat{int(ns)}', now())")
    refused_and_unchanged(world, lambda: plan_cmd(world), 2,
                          "already holds rows with the keys of organization 1", f"public.namespaces: id={ns}",
                          "remove those rows")


def test_cluster_wide_rows_missing_on_the_target(world: World) -> None:
    # A user that org 1's projects reference on cell-1 and that nothing on cell-2 references.
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    with psycopg.connect(src) as conn:
        users = [r[0] for r in conn.execute(
            "SELECT DISTINCT p.creator_id FROM public.projects p JOIN public.namespaces n "
            "ON n.id = p.namespace_id WHERE n.organization_id = 1 AND p.creator_id IS NOT NULL "
            "ORDER BY 1").fetchall()]
    user = users[0]
    with psycopg.connect(dst) as conn:
        # Cell-2's own rows may reference the user too: skip the FK triggers (superuser).
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM public.users WHERE id = %s", (user,))
        conn.commit()
    refused_and_unchanged(world, lambda: plan_cmd(world), 2,
                          "rows of cluster-wide tables that organization 1 references are missing",
                          f"public.users (referenced by public.projects.creator_id): id={user}",
                          "cluster-wide data")


# --- plan: the rules file -----------------------------------------------------------------------


def _rules_file(world: World, name: str, text: str) -> str:
    path = world.config_path.parent / name
    path.write_text(text)
    return str(path)


def test_rules_file_with_a_syntax_error(world: World) -> None:
    rules = _rules_file(world, "syntax.rules.yaml", "tables:\n  notes: {sharding_key: [unclosed\n")
    refused_and_unchanged(world, lambda: plan_cmd(world, rules=rules), 2,
                          "is not valid YAML at line", "correct the syntax")


def test_rules_file_with_an_unknown_table(world: World) -> None:
    text = Path(RULES).read_text().replace("ci_pipelines:\n    sharding_key: {project_id: projects}",
                                           "ci_pipelines:\n    sharding_key: {project_id: projekts}")
    rules = _rules_file(world, "unknown.rules.yaml", text)
    refused_and_unchanged(world, lambda: plan_cmd(world, rules=rules), 2,
                          "points at table projekts, which does not exist", "correct the table name")


def test_rules_file_with_a_cycle(world: World) -> None:
    # projects must now wait for issues, which have a foreign key to projects.
    text = Path(RULES).read_text().replace(
        "tables:\n", "tables:\n  projects:\n    references: {id: issues(project_id)}\n", 1)
    rules = _rules_file(world, "cycle.rules.yaml", text)
    refused_and_unchanged(world, lambda: plan_cmd(world, rules=rules), 2,
                          "form a cycle", "ignore_fks")


def test_rules_file_that_is_not_a_mapping(world: World) -> None:
    rules = _rules_file(world, "list.rules.yaml", "- just\n- a list\n")
    refused_and_unchanged(world, lambda: plan_cmd(world, rules=rules), 2, "must be a YAML mapping")


def test_rules_file_missing(world: World) -> None:
    refused_and_unchanged(world, lambda: plan_cmd(world, rules="no/such.rules.yaml"), 2,
                          "rules file no/such.rules.yaml does not exist")


# --- the config file ----------------------------------------------------------------------------


def test_config_that_is_not_toml(world: World) -> None:
    path = world.config_path.parent / "broken.toml"
    path.write_text("[cells.cell-1\ndsn = postgresql://x\n")
    refused_and_unchanged(world, lambda: plan_cmd(world, config=path), 2,
                          "is not valid TOML", "correct the syntax at that line")


def test_config_with_unknown_keys(world: World) -> None:
    path = write_config(world, "typo.toml", {"[defaults]\n": "[defaults]\nworkerz = 3\n"})
    refused_and_unchanged(world, lambda: plan_cmd(world, config=path), 2,
                          "invalid config", "defaults.workerz")


def test_config_missing(world: World) -> None:
    refused_and_unchanged(world, lambda: plan_cmd(world, config=Path("no/such/orgmove.toml")), 2,
                          "config file no/such/orgmove.toml does not exist")


def test_dsn_in_a_file_readable_by_others_warns_and_runs(world: World) -> None:
    os.chmod(world.config_path, 0o644)
    before = Fingerprint.take(world)
    proc = plan_cmd(world, "--json")
    assert proc.returncode == 0, proc.stderr  # a warning, not a refusal
    assert "warning:" in proc.stderr and "readable by other users" in proc.stderr
    assert "chmod 600" in proc.stderr
    assert "readable by other users" not in proc.stdout and json.loads(proc.stdout)["ok"] is True
    before.assert_unchanged(world)  # planning writes nothing to either Cell
    os.chmod(world.config_path, 0o600)
    proc = plan_cmd(world, "--json")
    assert proc.returncode == 0 and "warning" not in proc.stderr


# --- the plan file ------------------------------------------------------------------------------


def test_plan_file_edited_by_hand(world: World) -> None:
    _, path = make_plan(world.cells)
    doc = json.loads(path.read_text())
    doc["steps"][0]["estimated_rows"] += 1
    path.write_text(json.dumps(doc, indent=2))
    for command in (("copy", str(path)), ("verify", str(path)), ("cutover", str(path), "--yes")):
        refused_and_unchanged(world, lambda command=command: cli(world, *command), 2,
                              "was changed after it was written", "regenerate it with `orgmove plan`")


def test_plan_file_that_is_not_json(world: World) -> None:
    path = world.config_path.parent / "junk.plan.json"
    path.write_text("{not json")
    refused_and_unchanged(world, lambda: cli(world, "copy", str(path)), 2,
                          "is not valid JSON", "regenerate it")


def test_plan_made_against_an_older_schema(world: World) -> None:
    _, path = make_plan(world.cells)
    _exec(world.dsn("cell-1"), "ALTER TABLE public.issues ADD COLUMN added_after_plan integer")
    refused_and_unchanged(world, lambda: cli(world, "copy", str(path)), 2,
                          "the schema of the planned tables changed on the source cell 'cell-1'",
                          "make a new plan")


def test_plan_made_against_an_older_target_schema(world: World) -> None:
    plan, path = _copied(world)
    _exec(world.dsn("cell-2"), "ALTER TABLE public.notes ADD COLUMN extra text")
    refused_and_unchanged(world, lambda: cli(world, "cutover", str(path), "--yes"), 2,
                          "changed on the target cell 'cell-2'", "make a new plan")


# --- move state ---------------------------------------------------------------------------------


def test_cutover_before_copy_finished(world: World) -> None:
    _, path = make_plan(world.cells)
    # A copy killed after its third chunk: the move exists, chunks are pending.
    proc = cli(world, "copy", str(path), "--chunk-rows", "20",
               env={"ORGMOVE_FAILPOINTS": "copy.after_commit=exit@3"})
    assert proc.returncode == 137, proc.stderr
    refused_and_unchanged(world, lambda: cli(world, "cutover", str(path), "--yes"), 2,
                          "the copy of move org-1-cell-1-cell-2 is not complete", "run `orgmove copy`")
    assert world.owner(1) == "cell-1" and can_write(world.dsn("cell-1"), 1)


def test_cutover_without_any_copy(world: World) -> None:
    _, path = make_plan(world.cells)
    refused_and_unchanged(world, lambda: cli(world, "cutover", str(path), "--yes"), 2,
                          "is not complete", "run `orgmove copy`")


def test_cleanup_before_commit(world: World) -> None:
    _, path = _copied(world)
    refused_and_unchanged(world, lambda: cli(world, "cleanup", str(path), "--yes"), 2,
                          "is not committed", "cleanup deletes the source rows only after the flip",
                          "`orgmove cutover` first")


def test_second_move_of_the_same_org_while_one_is_active(world: World) -> None:
    _, path = _copied(world)
    # Another mover holds a live lease on organization 1 in the Topology Service.
    other = world.client.begin_move(1, "cell-1", "cell-2", 600)
    text = refused_and_unchanged(world, lambda: cli(world, "cutover", str(path), "--yes"), 2,
                                 "another move of organization 1 holds the lease", "wait for it to finish")
    assert str(other.move_id) in text
    assert world.owner(1) == "cell-1" and can_write(world.dsn("cell-1"), 1)


def test_cutover_needs_confirmation_without_a_terminal(world: World) -> None:
    _, path = _copied(world)
    refused_and_unchanged(world, lambda: cli(world, "cutover", str(path)), 2,
                          "needs confirmation", "--yes")


# --- verification -------------------------------------------------------------------------------


def test_verification_mismatch_exits_3(world: World) -> None:
    plan, path = _copied(world)
    issue = _one(world.dsn("cell-2"),
                 "SELECT min(i.id) FROM issues i JOIN projects p ON p.id = i.project_id "
                 "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = 1")
    _exec(world.dsn("cell-2"), f"UPDATE issues SET title = 'tampered' WHERE id = {int(issue)}")
    source = org_checksums(world.dsn("cell-1"), plan)
    target = org_checksums(world.dsn("cell-2"), plan)
    topo = topology_fingerprint(world)
    proc = cli(world, "verify", str(path), "--json")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["equal"] is False
    tables = {t["table"]: t for t in doc["tables"]} if isinstance(doc["tables"], list) else doc["tables"]
    assert tables["public.issues"]["mismatched_chunks"] >= 1
    # verify records its results in the target's orgmove schema, and changes nothing else.
    assert org_checksums(world.dsn("cell-1"), plan) == source
    assert org_checksums(world.dsn("cell-2"), plan) == target
    assert topology_fingerprint(world) == topo


# --- --debug ------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(world: World) -> None:
    proc = cli(world, "--debug", "plan", "--org", "999", "--from", "cell-1", "--to", "cell-2",
               "--rules", RULES)
    assert proc.returncode == 2
    assert "organization 999 does not exist" in proc.stderr
    assert "Traceback" in proc.stderr


# --- SIGINT -------------------------------------------------------------------------------------


def _chunks_done(dsn: str, move_key: str) -> int:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('orgmove.chunk_log')").fetchone()[0] is None:  # type: ignore[index]
            return 0
        row = conn.execute("SELECT count(*) FROM orgmove.chunk_log WHERE move_key = %s",
                           (move_key,)).fetchone()
    return int(row[0]) if row else 0


def test_sigint_during_copy_stops_cleanly_and_rerun_resumes(world: World) -> None:
    plan, path = make_plan(world.cells)
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    source_before = cell_fingerprint(src)
    others_before = other_rows_checksums(dst, plan)
    topo_before = topology_fingerprint(world)
    proc = orgmove_popen("--config", str(world.config_path), "copy", str(path), "--chunk-rows", "10",
                         "--workers", "2", env={"ORGMOVE_FAILPOINTS": "copy.before_commit=sleep(0.5)"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _chunks_done(dst, plan.move_key) < 3:
        time.sleep(0.05)
    done_at_signal = _chunks_done(dst, plan.move_key)
    assert done_at_signal >= 3
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out == ""
    assert err.startswith("orgmove: error: interrupted by the operator"), err
    assert "Traceback" not in err and "rerun the same command to resume" in err
    with psycopg.connect(dst) as conn:
        pending = conn.execute("SELECT count(*) FROM orgmove.chunks WHERE move_key = %s AND "
                               "state <> 'done'", (plan.move_key,)).fetchone()[0]  # type: ignore[index]
        stuck = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                             "'orgmove/%' AND state <> 'idle'").fetchone()[0]  # type: ignore[index]
    assert pending > 0, "the copy finished before the signal; slow it down more"
    assert stuck == 0
    # The rerun resumes: it copies only what is missing, and no chunk is committed twice.
    proc2 = cli(world, "copy", str(path), "--chunk-rows", "10", "--json")
    assert proc2.returncode == 0, proc2.stderr
    doc = json.loads(proc2.stdout)
    assert doc["chunks"]["skipped"] >= done_at_signal and doc["chunks"]["copied"] > 0
    with psycopg.connect(dst) as conn:
        assert chunk_log_duplicates(conn, plan.move_key) == []
    assert org_checksums(dst, plan) == org_checksums(src, plan)
    assert other_rows_checksums(dst, plan) == others_before
    # The copy writes none of the source's rows; it only adds its own objects there (the write
    # gate and change capture, ADRs 0008 and 0009), so orgmove's schema and the catalog are left out.
    assert _rows_only(cell_fingerprint(src)) == _rows_only(source_before)
    assert topology_fingerprint(world) == topo_before


# SIGINT during cutover (abort, org writable on the source) is
# tests/integration/test_cutover.py::test_sigint_during_cutover_aborts_and_leaves_org_writable.


@pytest.mark.parametrize("command", ["copy", "verify", "cutover", "rollback", "cleanup", "status"])
def test_missing_plan_file(world: World, command: str) -> None:
    args = [command, "no/such.plan.json"] + (["--yes"] if command in ("cutover", "rollback", "cleanup") else [])
    refused_and_unchanged(world, lambda: cli(world, *args), 2,
                          "plan file no/such.plan.json does not exist", "orgmove plan")
