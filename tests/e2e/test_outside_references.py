"""Issue 15, item 2: references that leave the organization. Organization 1's merge requests whose
source project is a fork in organization 3 (``merge_requests.source_project_id -> projects``):
the pre-flight refuses with exit 2 before anything is written, naming the table, the constraint,
the count and the keys; with ``outside_references: {source_project_id: nullify}`` the move
completes, verify finds 0 differences, the target holds NULL there and the report lists every
nulled key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from orgmove.plan import read_plan
from tests.helpers import RULES, cli_ok, other_rows_checksums, table_counts
from tests.world import World, world

__all__ = ["world"]


def _fork_across_orgs(dsn: str, n: int = 3) -> list[int]:
    """Point ``n`` of organization 1's merge requests at a project of organization 3."""
    with psycopg.connect(dsn) as conn:
        fork = conn.execute(
            "SELECT p.id FROM projects p JOIN namespaces ns ON ns.id = p.namespace_id "
            "WHERE ns.organization_id = 3 ORDER BY p.id LIMIT 1").fetchone()
        assert fork is not None
        ids = [r[0] for r in conn.execute(
            "SELECT mr.id FROM merge_requests mr JOIN projects p ON p.id = mr.target_project_id "
            "JOIN namespaces ns ON ns.id = p.namespace_id WHERE ns.organization_id = 1 "
            "ORDER BY mr.id LIMIT %s", (n,)).fetchall()]
        assert len(ids) == n
        conn.execute("UPDATE merge_requests SET source_project_id = %s WHERE id = ANY(%s)",
                     (fork[0], ids))
    return ids


def _all_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT schemaname || '.' || relname FROM pg_stat_user_tables "
            "WHERE schemaname = 'public' ORDER BY 1").fetchall()]
    return table_counts(dsn, tables)


def _plan(world: World, rules: Path, out: Path, code: int = 0) -> Any:
    return cli_ok(world.config_path, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2",
                  "--rules", str(rules), "--out", str(out), "--json", code=code)


def test_outside_reference_fails_the_preflight_then_nullify_moves(world: World) -> None:
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    forked = _fork_across_orgs(src)
    before = {src: _all_counts(src), dst: _all_counts(dst)}
    rules = world.config_path.parent / "forks.rules.yaml"
    rules.write_text(Path(RULES).read_text())
    plan_path = world.config_path.parent / "forks.plan.json"

    refused = _plan(world, rules, plan_path, code=2)
    assert refused["error"]["code"] == "outside_references"
    message = refused["error"]["message"]
    assert "public.merge_requests" in message and "source_project_id" in message
    assert "3 row(s)" in message
    for mr in forked:
        assert f"id={mr}" in message
    assert "nullify" in refused["error"]["fix"]
    (found,) = refused["error"]["details"]["outside_references"]
    assert found["constraint"] == "merge_requests_source_project_id_fkey"
    assert found["outside_rows"] == 3 and len(found["keys"]) == 3
    assert not plan_path.exists()
    assert {src: _all_counts(src), dst: _all_counts(dst)} == before

    text = rules.read_text().replace(
        "    sharding_key: {target_project_id: projects}\n",
        "    sharding_key: {target_project_id: projects}\n"
        "    outside_references: {source_project_id: nullify}\n", 1)
    assert text != rules.read_text()
    rules.write_text(text)
    doc = _plan(world, rules, plan_path)
    refs = {(r["table"], r["constraint"]): r for r in doc["plan"]["org_references"]}
    ref = refs[("public.merge_requests", "merge_requests_source_project_id_fkey")]
    assert ref["policy"] == "nullify" and ref["nullified_keys"] == [f"id={i}" for i in forked]
    assert any("policy nullify" in w for w in doc["plan"]["warnings"])

    plan = read_plan(plan_path)
    src_others, dst_others = other_rows_checksums(src, plan), other_rows_checksums(dst, plan)
    copied = cli_ok(world.config_path, "copy", str(plan_path), "--chunk-rows", "7", "--json")
    assert copied["nullified"] == [{
        "table": "public.merge_requests", "constraint": "merge_requests_source_project_id_fkey",
        "columns": ["source_project_id"], "keys": [f"id={i}" for i in forked]}]
    assert cli_ok(world.config_path, "verify", str(plan_path), "--json")["equal"] is True
    cut = cli_ok(world.config_path, "cutover", str(plan_path), "--yes", "--json")
    assert cut["committed"] is True
    assert world.owner(1) == "cell-2"

    with psycopg.connect(dst) as conn:
        rows = dict(conn.execute("SELECT id, source_project_id FROM merge_requests "
                                 "WHERE id = ANY(%s)", (forked,)).fetchall())
        kept = conn.execute(
            "SELECT count(*) FROM merge_requests mr JOIN projects p ON p.id = mr.target_project_id "
            "JOIN namespaces ns ON ns.id = p.namespace_id WHERE ns.organization_id = 1 "
            "AND mr.source_project_id IS NOT NULL").fetchone()
    assert rows == {i: None for i in forked}
    assert kept is not None and kept[0] > 0  # references inside the org keep their value
    with psycopg.connect(src) as conn:
        still = conn.execute("SELECT count(*) FROM merge_requests WHERE id = ANY(%s) "
                             "AND source_project_id IS NOT NULL", (forked,)).fetchone()
    assert still == (3,)  # the source is not changed by the move
    assert other_rows_checksums(dst, plan) == dst_others
    assert other_rows_checksums(src, plan) == src_others


def test_seed_with_cross_org_forks_is_refused_for_org_1_and_moves_org_3(pg_servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The seed's cross_org_forks: organization 3's forks send merge requests to organization 1's
    project. Org 1's plan is refused naming every such merge request; org 3's plan is clean (its
    fork projects move with it, nothing of it points outside)."""
    from orgmove.config import load_config
    from orgmove.errors import OutsideReferences
    from orgmove.planner import make_plan
    from orgmove.sandbox.seed import seed
    from tests.pgfixtures import CELL_NAMES

    dbs = {name: pg_servers.create_db(name, prefix="forks") for name in CELL_NAMES}
    try:
        dsns = {name: pg_servers.admin_dsn(name, db) for name, db in dbs.items()}
        seed(dsns, orgs=3, scale="tiny", cross_org_forks=True)
        config = tmp_path / "orgmove.toml"
        config.write_text("".join(f'[cells."{n}"]\ndsn = "{d}"\n\n' for n, d in dsns.items()))
        config.chmod(0o600)
        with psycopg.connect(dsns["cell-1"]) as conn:
            forked = [r[0] for r in conn.execute(
                "SELECT mr.id FROM merge_requests mr JOIN projects t ON t.id = mr.target_project_id "
                "JOIN namespaces tn ON tn.id = t.namespace_id JOIN projects s ON s.id = mr.source_project_id "
                "JOIN namespaces sn ON sn.id = s.namespace_id "
                "WHERE tn.organization_id = 1 AND sn.organization_id <> 1 ORDER BY mr.id").fetchall()]
        assert len(forked) >= 3
        with pytest.raises(OutsideReferences) as exc:
            make_plan(load_config(config), "1", "cell-1", "cell-2", RULES)
        assert exc.value.exit_code == 2
        (found,) = exc.value.details["outside_references"]
        assert found["outside_rows"] == len(forked)
        assert [k.split(" ")[0] for k in found["keys"]] == [f"id={i}" for i in forked][:10]
        plan = make_plan(load_config(config), "3", "cell-1", "cell-2", RULES)
        assert all(r.outside_rows == 0 for r in plan.org_references)
    finally:
        for name, db in dbs.items():
            pg_servers.drop_db(name, db)
