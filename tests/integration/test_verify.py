"""verify: finds exactly the injected difference (key and kind), exit 3; equal copies exit 0."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
import pytest

from orgmove.config import load_config
from orgmove.copy import CopyOptions, run_copy
from orgmove.verify import VerifyOptions, run_verify
from tests.helpers import make_plan, orgmove_cli


def _copied(cells):
    plan, path = make_plan(cells)
    config = load_config(cells.config_path)
    run_copy(plan, config, CopyOptions(workers=2, chunk_rows=25))
    return plan, path, config


def _one(dsn: str, query: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _exec(dsn: str, query: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(query)


def test_untouched_copy_is_equal(cells) -> None:
    plan, path, config = _copied(cells)
    report = run_verify(plan, config, VerifyOptions(workers=2))
    assert report.equal
    assert report.source_rows == report.target_rows > 0
    proc = orgmove_cli("--config", str(cells.config_path), "verify", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["equal"] is True and doc["mismatched_chunks"] == 0


# Each case: (table, how to pick a key on the target, the change, expected kind)
ORG1_ISSUE = ("SELECT min(i.id) FROM issues i JOIN projects p ON p.id = i.project_id "
              "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = 1")
CASES: dict[str, tuple[str, str, Callable[[int], str], str]] = {
    "row deleted": ("public.issues", ORG1_ISSUE,
                    lambda k: f"DELETE FROM notes WHERE noteable_type = 'Issue' AND noteable_id = {k}; "
                              f"DELETE FROM label_links WHERE target_type = 'Issue' AND target_id = {k}; "
                              f"DELETE FROM issues WHERE id = {k}", "missing_on_target"),
    "row added": ("public.issues", ORG1_ISSUE,
                  lambda k: "INSERT INTO issues (id, project_id, author_id, iid, title, state, created_at) "
                            f"SELECT 999999999, project_id, author_id, 99999, 'extra', 1, now() "
                            f"FROM issues WHERE id = {k}", "extra_on_target"),
    "weight last digit": ("public.issues", ORG1_ISSUE + " AND i.weight IS NOT NULL",
                          lambda k: f"UPDATE issues SET weight = weight * (1 + 1e-15) WHERE id = {k}", "differs"),
    "timestamp +1us": ("public.issues", ORG1_ISSUE,
                       lambda k: f"UPDATE issues SET created_at = created_at + interval '1 microsecond' "
                                 f"WHERE id = {k}", "differs"),
    "NULL to empty string": ("public.issues", ORG1_ISSUE + " AND i.description IS NULL",
                             lambda k: f"UPDATE issues SET description = '' WHERE id = {k}", "differs"),
    "TOAST text one char": ("public.projects",
                            "SELECT min(p.id) FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
                            "WHERE n.organization_id = 1 AND length(p.description) > 8192",
                            lambda k: "UPDATE projects SET description = overlay(description placing 'Z' "
                                      f"from 5000 for 1) WHERE id = {k}", "differs"),
    "bytea byte flipped": ("public.ci_job_artifacts",
                           "SELECT min(a.id) FROM ci_job_artifacts a JOIN projects p ON p.id = a.project_id "
                           "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = 1 "
                           "AND length(a.file) > 10",
                           lambda k: "UPDATE ci_job_artifacts SET file = set_byte(file, 3, "
                                     f"(get_byte(file, 3) + 1) % 256) WHERE id = {k}", "differs"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_finds_the_injected_difference(cells, case: str) -> None:
    table, key_query, change, kind = CASES[case]
    plan, path, config = _copied(cells)
    key = _one(cells.dsn("cell-2"), key_query)
    assert key is not None, f"fixture has no row for {case}"
    _exec(cells.dsn("cell-2"), change(int(key)))  # type: ignore[call-overload]
    proc = orgmove_cli("--config", str(cells.config_path), "verify", str(path), "--json")
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["equal"] is False
    bad = [t for t in doc["tables"] if t["mismatched_chunks"]]
    assert [t["table"] for t in bad] == [table]
    examples = bad[0]["examples"]
    expected_key = "999999999" if kind == "extra_on_target" else str(key)
    assert examples == [{"kind": kind, "key": {"id": expected_key}}]


def test_other_orgs_on_target_never_mismatch(cells) -> None:
    plan, path, config = _copied(cells)
    # Change every row of org 2 (lives on cell-2): verify of org 1 must not notice.
    _exec(cells.dsn("cell-2"), "UPDATE issues SET title = title || '!' WHERE project_id IN "
          "(SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = 2)")
    report = run_verify(plan, config, VerifyOptions(workers=2))
    assert report.equal


def test_bisects_a_large_chunk_down_to_the_row(cells) -> None:
    plan, path, config = _copied(cells)
    key = _one(cells.dsn("cell-2"), "SELECT max(id) FROM notes WHERE id < 2000000000000")
    _exec(cells.dsn("cell-2"), f"UPDATE notes SET note = note || 'x' WHERE id = {key}")
    report = run_verify(plan, config, VerifyOptions(workers=2, row_compare_threshold=4))
    notes = report.tables["public.notes"]
    assert notes.mismatched_chunks == 1
    assert [(e.kind, e.key) for e in notes.examples] == [("differs", {"id": str(key)})]
