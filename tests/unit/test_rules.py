"""Sharding rules: the YAML format, the shipped GitLab rules and GitLab's db/docs dictionary."""

from __future__ import annotations

from pathlib import Path

import pytest

from orgmove.errors import EXIT_BAD_INPUT, RulesError
from orgmove.graph import analyze
from orgmove.rules import Rules, dump_rules, load_dictionary, load_rules, parse_ref, parse_rules
from tests.unit.test_graph import NAMESPACES, ORGS, PROJECTS, USERS, T, cat, hops, plan_of

REPO = Path(__file__).resolve().parents[2]
DOCS = Path(__file__).resolve().parents[1] / "data" / "gitlab_db_docs"


def test_example_format_from_the_issue() -> None:
    rules = parse_rules("""
root: {table: organizations, key: id}
tables:
  notes:
    sharding_key: {project_id: projects}
    polymorphic: [{type_column: noteable_type, id_column: noteable_id,
                   types: {Issue: issues, MergeRequest: merge_requests}}]
  merge_requests: {sharding_key: {target_project_id: projects}}
cluster_wide: [users, lfs_objects]
ignored: [application_settings, schema_migrations]
""")
    assert rules.root.table == "organizations" and rules.root.key == "id"
    assert rules.tables["notes"].polymorphic[0].types["MergeRequest"] == "merge_requests"
    assert rules.cluster_wide == ["users", "lfs_objects"]


def test_empty_and_default_rules() -> None:
    assert parse_rules("").root.table == "organizations"
    assert load_rules(None).tables == {}
    assert parse_rules("tables:\n  notes:\n").tables["notes"].is_empty()


def test_dump_round_trips() -> None:
    rules = parse_rules((REPO / "plans" / "gitlab.rules.yaml").read_text())
    again = parse_rules(dump_rules(rules, header="a header\n\nline"))
    assert again.model_dump() == rules.model_dump()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("tables: [1, 2", "line"),  # YAML syntax: the line is named
        ("- a\n- b\n", "mapping"),
        ("tables:\n  notes: {sharding_keys: {project_id: projects}}\n", "sharding_keys"),
        ("tables:\n  notes: {sharding_key: {project_id: 'projects id'}}\n", "projects id"),
        ("tables:\n  n: {polymorphic: [{type_column: t, id_column: i, types: {}}]}\n", "type"),
        ("cluster_wide: [users]\ncell_local: [users]\n", "users"),
        ("cluster_wide: [notes]\ntables:\n  notes: {sharding_key: {project_id: projects}}\n",
         "notes"),
    ],
)
def test_invalid_rules_are_rejected_with_a_clear_message(text: str, needle: str) -> None:
    with pytest.raises(RulesError) as exc:
        parse_rules(text, source="my.rules.yaml")
    assert needle in str(exc.value)
    assert "my.rules.yaml" in str(exc.value)
    assert exc.value.exit_code == EXIT_BAD_INPUT and exc.value.fix


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path / "nope.yaml")
    assert "does not exist" in str(exc.value)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(RulesError):
        load_rules(empty)


def test_parse_ref() -> None:
    assert parse_ref("projects") == ("projects", None)
    assert parse_ref("public.projects(id)") == ("public.projects", "id")
    with pytest.raises(RulesError):
        parse_ref("projects(")


def test_schema_qualified_names_in_rules() -> None:
    ci = T("ci.pipelines", "id bigint!", "project_id bigint!")
    rules = "cluster_wide: [public.users]\ntables:\n  ci.pipelines: {sharding_key: {project_id: public.projects}}\n"
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, ci), rules)
    assert hops(plan, "ci.pipelines")[0][0] == "project_id->projects"


def test_shipped_gitlab_rules_cover_the_fixture_tables() -> None:
    rules = load_rules(REPO / "plans" / "gitlab.rules.yaml")
    assert set(rules.cluster_wide) == {"users", "lfs_objects"}
    assert set(rules.cell_local) == {"application_settings", "schema_migrations"}
    assert rules.tables["notes"].sharding_key == {"project_id": "projects"}
    assert rules.tables["merge_requests"].sharding_key == {"target_project_id": "projects"}


# --- GitLab's table dictionary ------------------------------------------------------------------


def test_dictionary_directory_is_read_as_rules() -> None:
    rules = load_rules(DOCS)
    assert isinstance(rules, Rules)
    assert rules.root.table == "organizations" and rules.root.key == "id"
    assert "organizations" not in rules.cluster_wide  # the root, whatever its gitlab_schema
    assert set(rules.cluster_wide) == {"users", "user_preferences"}
    assert set(rules.cell_local) == {"application_settings", "web_hook_logs_daily",
                                     "schema_migrations"}
    # sharding_key alternatives
    assert rules.tables["labels"].sharding_key == {"project_id": "projects", "group_id": "namespaces"}
    # desired_sharding_key: owned through the backfill parent
    assert rules.tables["notes"].sharding_key == {"issue_id": "issues(id)"}
    assert rules.tables["ci_build_trace_metadata"].sharding_key == {"build_id": "p_ci_builds(id)"}
    # no sharding key: no rule (foreign keys decide)
    assert "issue_assignees" not in rules.tables
    assert rules.tables["p_ci_builds"].sharding_key == {"project_id": "projects"}


def test_dictionary_in_a_checkout_layout(tmp_path: Path) -> None:
    docs = tmp_path / "gitlab" / "db" / "docs"
    docs.mkdir(parents=True)
    for f in DOCS.glob("*.yml"):
        (docs / f.name).write_text(f.read_text())
    (docs / "some_view.yml").write_text("view_name: some_view\ngitlab_schema: gitlab_main\n")
    assert load_dictionary(tmp_path / "gitlab").tables.keys() == load_rules(DOCS).tables.keys()


def test_dictionary_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("table_name: a\nsharding_key: [project_id]\n")
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path)
    assert "a.yml" in str(exc.value)
    (tmp_path / "a.yml").write_text(
        "table_name: a\ndesired_sharding_key:\n  project_id:\n    references: projects\n"
    )
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path)
    assert "backfill_via" in str(exc.value)
    (tmp_path / "a.yml").write_text("table_name: a\nsharding_key:\n  id: a\n")
    (tmp_path / "b.yml").write_text("table_name: b\nsharding_key:\n  id: b\n")
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path)
    assert "sharding root" in str(exc.value)


def test_dictionary_rules_on_a_synthetic_catalog() -> None:
    issues = T("issues", "id bigint!", "namespace_id bigint!", "project_id bigint!",
               fks={"project_id": "projects"})
    assignees = T("issue_assignees", "user_id bigint!", "issue_id bigint!", pk=["user_id", "issue_id"],
                  fks={"issue_id": "issues", "user_id": "users"})
    notes = T("notes", "id bigint!", "issue_id bigint", "note text")
    graph = analyze(cat(ORGS, NAMESPACES, PROJECTS, USERS, issues, assignees, notes), load_rules(DOCS))
    assert graph.unclassified == []
    assert graph.nodes["public.issues"].ownership[0].columns == ("namespace_id",)
    assert graph.nodes["public.issues"].ownership[0].source == "dictionary"
    assert graph.nodes["public.issue_assignees"].ownership[0].source == "fk"
    assert graph.nodes["public.notes"].ownership[0].ref_table == "public.issues"
