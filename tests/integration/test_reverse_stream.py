"""Rollback after the flip loses nothing (issue 14, item 8): ``cutover --reverse-stream`` streams
the target's writes back to the source from the flip, and ``orgmove rollback`` after the flip
returns the organization to its source with every write it received on the target."""

from __future__ import annotations

import psycopg
import pytest

from orgmove.copy import CopyOptions, run_copy
from orgmove.cutover import CutoverOptions, run_cutover
from tests.helpers import cli_ok, make_plan, org_checksums, other_rows_checksums
from tests.integration.test_no_debris import NOTHING, debris_on
from tests.orgcounts import org_row_counts
from tests.world import World

pytestmark = pytest.mark.slow


def _target_writes(dsn: str) -> dict[str, int]:
    """Plain writes of org 1 on its new owner, and one of org 2 (which lives there) that must
    stay there."""
    with psycopg.connect(dsn) as conn:
        project, user = conn.execute(
            "SELECT p.id, p.creator_id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
            "WHERE n.organization_id = 1 AND p.creator_id IS NOT NULL ORDER BY p.id LIMIT 1").fetchone()  # type: ignore[misc]
        namespace = conn.execute("SELECT namespace_id FROM projects WHERE id = %s", (project,)).fetchone()[0]  # type: ignore[index]
        existing = conn.execute("SELECT id FROM issues WHERE project_id = %s ORDER BY id LIMIT 1",
                                (project,)).fetchone()[0]  # type: ignore[index]
        inserted = conn.execute(
            "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
            "VALUES (%s, %s, 9200001, 'written on the target', 1, now()) RETURNING id",
            (project, user)).fetchone()[0]  # type: ignore[index]
        doomed = conn.execute(
            "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
            "VALUES (%s, %s, 9200002, 'inserted then deleted', 1, now()) RETURNING id",
            (project, user)).fetchone()[0]  # type: ignore[index]
        conn.commit()
        conn.execute("UPDATE issues SET title = 'updated on the target' WHERE id = %s", (existing,))
        conn.execute("DELETE FROM issues WHERE id = %s", (doomed,))
        conn.commit()
        # A new parent and its child in one transaction: the child's org is decided through it.
        new_project = conn.execute(
            "INSERT INTO projects (namespace_id, creator_id, name, path, created_at) "
            "VALUES (%s, %s, 'after the flip', 'after-the-flip', now()) RETURNING id", (namespace, user)).fetchone()[0]  # type: ignore[index]
        child = conn.execute(
            "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
            "VALUES (%s, %s, 1, 'in the new project', 1, now()) RETURNING id", (new_project, user)).fetchone()[0]  # type: ignore[index]
        conn.commit()
        org2_project = conn.execute(
            "SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
            "WHERE n.organization_id = 2 ORDER BY p.id LIMIT 1").fetchone()[0]  # type: ignore[index]
        org2_issue = conn.execute(
            "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
            "VALUES (%s, NULL, 9200003, 'org 2 stays on cell-2', 1, now()) RETURNING id",
            (org2_project,)).fetchone()[0]  # type: ignore[index]
        conn.commit()
    return {"inserted": inserted, "existing": existing, "doomed": doomed, "new_project": new_project,
            "child": child, "org2_issue": org2_issue}


def test_rollback_after_the_flip_brings_the_targets_writes_back(world: World) -> None:
    plan, path = make_plan(world.cells)
    run_copy(plan, world.config, CopyOptions(workers=2))
    report = run_cutover(plan, world.config, CutoverOptions(max_freeze_s=60, reverse_stream=True))
    assert report.committed and world.owner(1) == "cell-2"
    source, target = world.dsn("cell-1"), world.dsn("cell-2")
    source_others = other_rows_checksums(source, plan)

    ids = _target_writes(target)
    on_target = org_checksums(target, plan)
    assert on_target != org_checksums(source, plan)

    doc = cli_ok(world.config_path, "rollback", str(path), "--yes", "--json")
    assert doc["owner"] == "cell-1" and doc["rows_applied_back"] >= 6

    assert world.owner(1) == "cell-1"
    assert org_checksums(source, plan) == on_target, "the source has exactly the target's org rows"
    assert other_rows_checksums(source, plan) == source_others, "no other org's row came along"
    with psycopg.connect(source) as conn:
        titles = dict(conn.execute("SELECT id, title FROM issues WHERE id = ANY(%s)", (list(ids.values()),)).fetchall())
        # Writable again for every writer.
        conn.execute("UPDATE issues SET title = 'writable' WHERE id = %s", (ids["inserted"],))
        conn.commit()
    assert titles == {ids["inserted"]: "written on the target", ids["existing"]: "updated on the target",
                      ids["child"]: "in the new project"}
    assert sum(org_row_counts(target, 1).values()) == 0
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT title FROM issues WHERE id = %s", (ids["org2_issue"],)).fetchone() == (
            "org 2 stays on cell-2",)
    assert debris_on(source) == NOTHING
    assert debris_on(target) == NOTHING


def test_rollback_after_a_flip_without_reverse_stream_is_refused(world: World) -> None:
    plan, path = make_plan(world.cells)
    run_copy(plan, world.config, CopyOptions(workers=2))
    run_cutover(plan, world.config, CutoverOptions(max_freeze_s=60))
    proc = cli_ok(world.config_path, "rollback", str(path), "--yes", code=2)
    assert "--reverse-stream" in proc.stderr
