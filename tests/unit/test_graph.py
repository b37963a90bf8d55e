"""The pure planner (graph + planner) on synthetic catalogs: no database."""

from __future__ import annotations

import pytest

from orgmove.catalog import Catalog, Column, ForeignKey, Table, UniqueKey
from orgmove.errors import EXIT_BAD_INPUT, PlanError, RulesError, UnclassifiedTables
from orgmove.graph import analyze
from orgmove.plan import Plan, filter_condition
from orgmove.planner import build_plan, parse_org_key, suggest_rules_for
from orgmove.rules import Rules, parse_rules
from orgmove.suggest import class_to_table, plural

# --- a tiny catalog builder ---------------------------------------------------------------------


def T(
    name: str,
    *cols: str,
    pk: list[str] | None = None,
    fks: dict[str, str] | None = None,
    unique: list[list[str]] | None = None,
    rows: int = 10,
    kind: str = "r",
    partition_of: str | None = None,
) -> Table:
    """``T("projects", "id bigint!", "namespace_id bigint!", fks={"namespace_id": "namespaces"})``
    ``!`` marks NOT NULL, ``~`` a generated column; fks map column (``a,b`` for several) to
    ``table`` (its ``id``) or ``table(col,col)``."""
    schema, _, rel = name.rpartition(".")
    t = Table(schema=schema or "public", name=rel, kind=kind, est_rows=rows, est_bytes=rows * 100)
    for i, spec in enumerate(cols, 1):
        cname, _, typ = spec.partition(" ")
        not_null = typ.endswith("!")
        generated = typ.endswith("~")
        typ = typ.rstrip("!~") or "bigint"
        t.columns.append(Column(cname, typ, not_null=not_null, generated="s" if generated else "",
                                attnum=i))
    t.primary_key = ["id"] if pk is None and t.column("id") else list(pk or [])
    for c in t.primary_key:
        col = t.column(c)
        assert col is not None
        col.not_null = True
    if t.primary_key:
        t.unique_keys.append(UniqueKey(f"{rel}_pkey", list(t.primary_key), primary=True))
    for u in unique or []:
        t.unique_keys.append(UniqueKey(f"{rel}_{'_'.join(u)}_key", u))
    for cols_text, ref in (fks or {}).items():
        ref_name, _, ref_cols = ref.partition("(")
        ref_q = ref_name if "." in ref_name else f"public.{ref_name}"
        columns = cols_text.split(",")
        t.foreign_keys.append(ForeignKey(
            name=f"fk_{rel}_{'_'.join(columns)}", columns=columns, ref_table=ref_q,
            ref_columns=ref_cols.rstrip(")").split(",") if ref_cols else ["id"],
        ))
    t.partition_of = partition_of
    return t


def cat(*tables: Table) -> Catalog:
    c = Catalog(tables={t.qualified: t for t in tables})
    for t in tables:
        if t.partition_of:
            parent = c.tables[t.partition_of]
            parent.partitions.append(t.qualified)
            parent.est_rows += t.est_rows
    return c


ORGS = T("organizations", "id bigint!", "name text!", rows=3)
NAMESPACES = T("namespaces", "id bigint!", "organization_id bigint!", "parent_id bigint",
               "owner_id bigint", fks={"organization_id": "organizations",
                                       "parent_id": "namespaces", "owner_id": "users"})
PROJECTS = T("projects", "id bigint!", "namespace_id bigint!", "creator_id bigint",
             "path text!", "path_lower text~", fks={"namespace_id": "namespaces",
                                                    "creator_id": "users"}, rows=100)
USERS = T("users", "id bigint!", "username text!", rows=50)


def plan_of(catalog: Catalog, rules: str | Rules = "", org: str = "1") -> Plan:
    r = rules if isinstance(rules, Rules) else parse_rules(rules, source="test rules")
    return build_plan(catalog, r, org=org, from_cell="cell-1", to_cell="cell-2")


def hops(plan: Plan, table: str) -> list[list[str]]:
    """Each filter path as ``col->table`` strings."""
    return [
        [f"{','.join(h.columns)}->{h.ref_table.removeprefix('public.')}"
         + (f"[{h.type_value}]" if h.type_value else "") for h in p.hops]
        for p in plan.step(table).filter
    ]


def position(plan: Plan) -> dict[str, int]:
    return {s.table: i for i, s in enumerate(plan.steps)}


def assert_parents_first(plan: Plan) -> None:
    pos = position(plan)
    for s in plan.steps:
        for d in s.depends_on:
            assert pos[d] < pos[s.table], f"{d} must come before {s.table}"


BASE_RULES = "cluster_wide: [users]\n"


# --- classification, paths and order ------------------------------------------------------------


def test_basic_chain_filters_order_and_cluster_refs() -> None:
    issues = T("issues", "id bigint!", "project_id bigint!", "author_id bigint",
               fks={"project_id": "projects", "author_id": "users"})
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, issues), BASE_RULES)
    assert [s.table for s in plan.steps] == [
        "public.organizations", "public.namespaces", "public.projects", "public.issues"
    ]
    assert hops(plan, "public.organizations") == [[]]
    assert hops(plan, "public.namespaces") == [["organization_id->organizations"]]
    assert hops(plan, "public.issues") == [
        ["project_id->projects", "namespace_id->namespaces", "organization_id->organizations"]
    ]
    issues_step = plan.step("public.issues")
    assert issues_step.key == ["id"] and issues_step.key_types == ["bigint"]
    assert issues_step.filter_sql == (
        "project_id IN (SELECT id FROM public.projects WHERE namespace_id IN "
        "(SELECT id FROM public.namespaces WHERE organization_id = :org))"
    )
    # Generated columns are not copied; column order is explicit.
    proj = plan.step("public.projects")
    assert proj.columns == ["id", "namespace_id", "creator_id", "path"]
    assert proj.generated_columns == ["path_lower"]
    assert proj.column_types == ["bigint", "bigint", "bigint", "text"]
    # References to the cluster-wide users table become ClusterWideRefs.
    refs = {(r.table, tuple(r.columns), r.ref_table) for r in plan.cluster_wide_refs}
    assert refs == {
        ("public.namespaces", ("owner_id",), "public.users"),
        ("public.projects", ("creator_id",), "public.users"),
        ("public.issues", ("author_id",), "public.users"),
    }
    assert {(s.table, s.classification) for s in plan.skipped} == {("public.users", "cluster_wide")}
    assert plan.org == 1 and plan.root.key_type == "bigint"
    assert_parents_first(plan)


def test_self_reference_is_not_a_dependency_or_a_path() -> None:
    plan = plan_of(cat(ORGS, NAMESPACES, USERS), BASE_RULES)
    ns = plan.step("public.namespaces")
    assert ns.self_referencing is True
    assert ns.depends_on == ["public.organizations"]
    assert hops(plan, "public.namespaces") == [["organization_id->organizations"]]


def test_diamond_picks_one_cheapest_owner_and_orders_after_both() -> None:
    groups = T("groups", "id bigint!", "organization_id bigint!", fks={"organization_id": "organizations"})
    teams = T("teams", "id bigint!", "organization_id bigint!", fks={"organization_id": "organizations"},
              rows=1000)
    group_teams = T("group_teams", "id bigint!", "group_id bigint!", "team_id bigint!",
                    fks={"group_id": "groups", "team_id": "teams"})
    plan = plan_of(cat(ORGS, groups, teams, group_teams))
    # Both paths have two hops; the one through fewer rows (groups) wins.
    assert hops(plan, "public.group_teams") == [["group_id->groups", "organization_id->organizations"]]
    assert plan.step("public.group_teams").depends_on == ["public.groups", "public.teams"]
    assert_parents_first(plan)


def test_direct_organization_id_preferred_over_longer_path() -> None:
    issues = T("issues", "id bigint!", "project_id bigint!", "organization_id bigint!",
               fks={"project_id": "projects", "organization_id": "organizations"})
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, issues), BASE_RULES)
    assert hops(plan, "public.issues") == [["organization_id->organizations"]]
    assert plan.step("public.issues").filter_sql == "organization_id = :org"
    # projects is still a dependency (copy order), not a path.
    assert "public.projects" in plan.step("public.issues").depends_on
    assert_parents_first(plan)


def test_nullable_shortcut_is_not_trusted_over_not_null_path() -> None:
    issues = T("issues", "id bigint!", "project_id bigint!", "organization_id bigint",
               fks={"project_id": "projects", "organization_id": "organizations"})
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, issues), BASE_RULES)
    assert hops(plan, "public.issues")[0][0] == "project_id->projects"


def test_all_nullable_foreign_keys_are_alternatives() -> None:
    labels = T("labels", "id bigint!", "project_id bigint", "group_id bigint",
               fks={"project_id": "projects", "group_id": "namespaces"})
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, labels), BASE_RULES)
    assert hops(plan, "public.labels") == [
        ["group_id->namespaces", "organization_id->organizations"],
        ["project_id->projects", "namespace_id->namespaces", "organization_id->organizations"],
    ]
    assert plan.step("public.labels").filter_sql.startswith("(group_id IN (SELECT")
    assert " OR project_id IN (SELECT" in plan.step("public.labels").filter_sql


def test_cycle_reported_with_tables_and_fixed_by_ignore_fks() -> None:
    a = T("a", "id bigint!", "organization_id bigint!", "b_id bigint!",
          fks={"organization_id": "organizations", "b_id": "b"})
    b = T("b", "id bigint!", "organization_id bigint!", "a_id bigint",
          fks={"organization_id": "organizations", "a_id": "a"})
    c = cat(ORGS, a, b)
    with pytest.raises(PlanError) as exc:
        plan_of(c)
    assert "public.a" in str(exc.value) and "public.b" in str(exc.value)
    assert "cycle" in str(exc.value) and "ignore_fks" in str(exc.value)
    assert exc.value.exit_code == EXIT_BAD_INPUT
    plan = plan_of(c, "tables:\n  b: {ignore_fks: [a_id]}\n")
    pos = position(plan)
    assert pos["public.b"] < pos["public.a"]


def test_sharding_key_cycle_is_reported() -> None:
    x = T("x", "id bigint!", "y_id bigint!")
    y = T("y", "id bigint!", "x_id bigint!")
    rules = "tables:\n  x: {sharding_key: {y_id: y}}\n  y: {sharding_key: {x_id: x}}\n"
    graph = analyze(cat(ORGS, x, y), parse_rules(rules))
    assert graph.unclassified == ["public.x", "public.y"]
    assert graph.cycles == [["public.x", "public.y"]]
    with pytest.raises(UnclassifiedTables) as exc:
        plan_of(cat(ORGS, x, y), rules)
    assert "public.x" in str(exc.value) and "public.y" in str(exc.value)


def test_sharding_key_without_fk_and_ownership_precedence() -> None:
    mrs = T("merge_requests", "id bigint!", "target_project_id bigint!", "source_project_id bigint",
            fks={"target_project_id": "projects"})
    pipelines = T("ci_pipelines", "id bigint!", "project_id bigint!", "merge_request_id bigint",
                  fks={"merge_request_id": "merge_requests"})
    rules = BASE_RULES + (
        "tables:\n"
        "  merge_requests: {sharding_key: {target_project_id: projects}}\n"
        "  ci_pipelines: {sharding_key: {project_id: projects}}\n"
    )
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, mrs, pipelines), rules)
    # The declared key is the ownership; the FK to merge_requests only orders the copy.
    assert hops(plan, "public.ci_pipelines")[0][0] == "project_id->projects"
    assert plan.step("public.ci_pipelines").filter[0].source == "sharding_key"
    assert "public.merge_requests" in plan.step("public.ci_pipelines").depends_on
    assert_parents_first(plan)


def test_polymorphic_links() -> None:
    issues = T("issues", "id bigint!", "project_id bigint!", fks={"project_id": "projects"})
    mrs = T("merge_requests", "id bigint!", "target_project_id bigint!",
            fks={"target_project_id": "projects"})
    notes = T("notes", "id bigint!", "noteable_type text!", "noteable_id bigint!", "project_id bigint")
    label_links = T("label_links", "id bigint!", "target_type text!", "target_id bigint!",
                    "label_id bigint!", fks={"label_id": "labels"})
    labels = T("labels", "id bigint!", "project_id bigint", "group_id bigint",
               fks={"project_id": "projects", "group_id": "namespaces"})
    rules = BASE_RULES + """
tables:
  notes:
    sharding_key: {project_id: projects}
    polymorphic:
      - {type_column: noteable_type, id_column: noteable_id,
         types: {Issue: issues, MergeRequest: merge_requests}}
  label_links:
    polymorphic:
      - {type_column: target_type, id_column: target_id,
         types: {Issue: issues, MergeRequest: merge_requests}}
"""
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, issues, mrs, notes, label_links, labels),
                   rules)
    # notes: owned through its sharding key; the polymorphic links order it after both targets.
    assert [p[0] for p in hops(plan, "public.notes")] == ["project_id->projects"]
    assert set(plan.step("public.notes").depends_on) == {
        "public.projects", "public.issues", "public.merge_requests"
    }
    # label_links: owned through the polymorphic link, one path per type.
    assert [p[0] for p in hops(plan, "public.label_links")] == [
        "target_id->issues[Issue]", "target_id->merge_requests[MergeRequest]"
    ]
    sql_text = plan.step("public.label_links").filter_sql
    assert "(target_type = 'Issue' AND target_id IN (SELECT id FROM public.issues" in sql_text
    assert "public.labels" in plan.step("public.label_links").depends_on
    assert_parents_first(plan)


def test_composite_and_missing_keys() -> None:
    auth = T("project_authorizations", "user_id bigint!", "project_id bigint!", "access_level int!",
             pk=["user_id", "project_id"], fks={"project_id": "projects", "user_id": "users"})
    logs = T("web_hook_logs", "project_id bigint!", "body text", pk=[],
             fks={"project_id": "projects"})
    uniq = T("project_settings", "project_id bigint!", "code text!", "other text", pk=[],
             unique=[["other"], ["code"]], fks={"project_id": "projects"})
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, auth, logs, uniq), BASE_RULES)
    assert plan.step("public.project_authorizations").key == ["user_id", "project_id"]
    assert plan.step("public.project_authorizations").key_types == ["bigint", "bigint"]
    assert plan.step("public.web_hook_logs").key == []
    # No PK: a unique key whose columns are all NOT NULL ("other" is nullable).
    assert plan.step("public.project_settings").key == ["code"]


def test_uuid_and_text_root_keys() -> None:
    orgs = T("organizations", "id uuid!", rows=2)
    groups = T("groups", "id text!", "organization_id uuid!", fks={"organization_id": "organizations"})
    c = cat(orgs, groups)
    u = "0B6F3F3E-1111-4222-8333-944445555666"
    plan = plan_of(c, org=u)
    assert plan.org == u.lower() and plan.root.key_type == "uuid"
    assert plan.step("public.groups").key_types == ["text"]
    with pytest.raises(PlanError) as exc:
        plan_of(c, org="42")
    assert "not a UUID" in str(exc.value) and exc.value.exit_code == EXIT_BAD_INPUT


def test_org_id_parsing() -> None:
    assert parse_org_key("42", "bigint") == 42
    assert parse_org_key(" 7 ", "integer") == 7
    assert parse_org_key("acme", "text") == "acme"
    for bad, typ in [("abc", "bigint"), ("1.5", "integer"), ("", "bigint"), ("99999999999", "integer")]:
        with pytest.raises(PlanError) as exc:
            parse_org_key(bad, typ)
        assert exc.value.exit_code == EXIT_BAD_INPUT


def test_partitioned_table_copied_once_through_parent() -> None:
    builds = T("p_ci_builds", "id bigint!", "partition_id bigint!", "project_id bigint!",
               pk=["id", "partition_id"], kind="p", rows=0)
    leaves = [
        T(f"gitlab_partitions_dynamic.ci_builds_{n}", "id bigint!", "partition_id bigint!",
          "project_id bigint!", pk=["id", "partition_id"], partition_of="public.p_ci_builds",
          rows=100 * n)
        for n in (100, 101)
    ]
    artifacts = T("ci_job_artifacts", "id bigint!", "job_id bigint!", "partition_id bigint!",
                  "project_id bigint!",
                  fks={"job_id,partition_id": "gitlab_partitions_dynamic.ci_builds_100(id,partition_id)"})
    rules = "tables:\n  p_ci_builds: {sharding_key: {project_id: projects}}\n" \
            "  ci_job_artifacts: {sharding_key: {project_id: projects}}\n" + BASE_RULES
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS, builds, *leaves, artifacts), rules)
    tables = [s.table for s in plan.steps]
    assert "public.p_ci_builds" in tables
    assert not any(t.startswith("gitlab_partitions_dynamic.") for t in tables)
    step = plan.step("public.p_ci_builds")
    assert step.partitions == [
        "gitlab_partitions_dynamic.ci_builds_100", "gitlab_partitions_dynamic.ci_builds_101"
    ]
    assert step.key == ["id", "partition_id"]
    assert {s.table for s in plan.skipped if s.classification == "partition"} == set(step.partitions)
    # An FK to a leaf orders the referencing table after the parent's step.
    assert "public.p_ci_builds" in plan.step("public.ci_job_artifacts").depends_on
    assert_parents_first(plan)


# --- unclassified tables and suggestions --------------------------------------------------------


def test_unclassified_tables_listed_with_suggestions_and_draft_loads() -> None:
    issues = T("issues", "id bigint!", "project_id bigint!", fks={"project_id": "projects"})
    pipelines = T("ci_pipelines", "id bigint!", "project_id bigint!")  # no FK
    stages = T("ci_stages", "id bigint!", "pipeline_id bigint!")  # no FK: via ci_pipelines
    lfs = T("lfs_objects", "id bigint!", "oid text!")
    lfs_projects = T("lfs_objects_projects", "id bigint!", "lfs_object_id bigint!",
                     "project_id bigint!", fks={"lfs_object_id": "lfs_objects",
                                                "project_id": "projects"})
    mystery = T("mystery", "id bigint!", "payload text")
    c = cat(ORGS, NAMESPACES, PROJECTS, USERS, issues, pipelines, stages, lfs, lfs_projects, mystery)
    with pytest.raises(UnclassifiedTables) as exc:
        plan_of(c, BASE_RULES)
    err = exc.value
    assert err.exit_code == EXIT_BAD_INPUT
    text = str(err)
    for t in ("public.ci_pipelines", "public.ci_stages", "public.lfs_objects", "public.mystery"):
        assert t in text
    assert "project_id -> projects" in err.details["tables"]["public.ci_pipelines"]
    assert "cluster_wide" in err.details["tables"]["public.lfs_objects"]
    assert "no owner could be inferred" in err.details["tables"]["public.mystery"]
    # The draft rules: existing rules kept, suggestions applied round after round.
    draft = suggest_rules_for(c, parse_rules(BASE_RULES, source="base"))
    assert draft.startswith("# orgmove sharding rules: draft")
    rules = parse_rules(draft)
    assert rules.tables["ci_pipelines"].sharding_key == {"project_id": "projects"}
    assert rules.tables["ci_stages"].sharding_key == {"pipeline_id": "ci_pipelines"}
    assert set(rules.cluster_wide) == {"users", "lfs_objects"}
    assert "mystery" in draft  # named in the comments, left for a human
    graph = analyze(c, rules)
    assert graph.unclassified == ["public.mystery"]
    # With the draft plus a decision on the last table, the plan is complete.
    rules.ignored.append("mystery")
    plan = plan_of(c, rules)
    assert "public.ci_stages" in position(plan)


def test_polymorphic_suggestion_uses_observed_type_values() -> None:
    issues = T("issues", "id bigint!", "project_id bigint!", fks={"project_id": "projects"})
    events = T("events", "id bigint!", "target_type text!", "target_id bigint!")
    c = cat(ORGS, NAMESPACES, PROJECTS, USERS, issues, events)
    draft = suggest_rules_for(c, parse_rules(BASE_RULES),
                              {"public.events": {"target_type": ["Issue", "Project"]}})
    rules = parse_rules(draft)
    poly = rules.tables["events"].polymorphic[0]
    assert poly.types == {"Issue": "issues", "Project": "projects"}
    plan = plan_of(c, rules)
    assert len(plan.step("public.events").filter) == 2


def test_naming_helpers() -> None:
    assert plural("policy") == "policies" and plural("key") == "keys" and plural("box") == "boxes"
    assert class_to_table("MergeRequest") == "merge_requests"
    assert class_to_table("Ci::Pipeline") == "ci_pipelines"
    assert class_to_table("Group") == "namespaces"


def test_rules_errors() -> None:
    c = cat(ORGS, NAMESPACES, PROJECTS, USERS)
    with pytest.raises(RulesError) as exc:
        plan_of(c, BASE_RULES + "tables:\n  projects: {sharding_key: {nope_id: namespaces}}\n")
    assert "nope_id" in str(exc.value) and exc.value.exit_code == EXIT_BAD_INPUT
    with pytest.raises(RulesError) as exc:
        plan_of(c, BASE_RULES + "tables:\n  projects: {sharding_key: {namespace_id: nowhere}}\n")
    assert "nowhere" in str(exc.value)
    with pytest.raises(RulesError) as exc:
        plan_of(c, BASE_RULES + "tables:\n  projects: {sharding_key: {creator_id: users}}\n")
    assert "cluster_wide" in str(exc.value)
    with pytest.raises(RulesError):
        plan_of(c, "root: {table: orgs, key: id}\n")
    with pytest.raises(RulesError):
        plan_of(c, "cluster_wide: [users]\nignored: [users]\n")


def test_filter_condition_renders_with_literals() -> None:
    plan = plan_of(cat(ORGS, NAMESPACES, PROJECTS, USERS), BASE_RULES, org="5")
    cond = filter_condition(plan.step("public.projects"), plan.root, plan.org)
    assert "namespace_id" in repr(cond)


def test_nullable_foreign_keys_in_a_cycle_still_resolve() -> None:
    a = T("a", "id bigint!", "organization_id bigint", "b_id bigint",
          fks={"organization_id": "organizations", "b_id": "b"})
    b = T("b", "id bigint!", "organization_id bigint", "a_id bigint",
          fks={"organization_id": "organizations", "a_id": "a"})
    graph = analyze(cat(ORGS, a, b), parse_rules(""))
    assert graph.unclassified == []
    assert {graph.classification("public.a"), graph.classification("public.b")} == {"org"}
    assert "close a cycle" in graph.nodes["public.a"].reason + graph.nodes["public.b"].reason
    assert graph.cycles == [["public.a", "public.b"]]
    plan = plan_of(cat(ORGS, a, b), "tables:\n  a: {ignore_fks: [b_id]}\n")
    assert [s.name for s in plan.steps] == ["organizations", "a", "b"]
