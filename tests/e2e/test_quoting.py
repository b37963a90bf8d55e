"""Issue 8: SQL is composed only with psycopg.sql, so names that need quoting move like any other.

Both Cells get the same three extra tables whose schema, table and column names need quoting
(spaces, mixed case, reserved words, quote characters), linked to the fixture by a foreign key and by
a sharding rule over quoted columns, with text keys holding quotes and backslashes (chunk bounds are
SQL literals). Organization 1 is planned, copied, verified and cut over through the CLI; its rows
must be equal on both Cells and nobody else's rows may change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orgmove.errors import PlanError
from orgmove.plan import RootSpec, Step, cast_type, read_plan, render_filter_for_review
from tests.helpers import RULES, cli_ok, org_checksums, other_rows_checksums
from tests.world import World, world

__all__ = ["world"]  # the `world` fixture, used by the tests below

DDL = r'''
CREATE TABLE public."Project Notes" (
    id              bigint PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES public.projects (id),
    "Order"         integer NOT NULL,
    "select"        text,
    "MixedCase"     text,
    "it's ""quoted""" text,
    "from"          timestamptz NOT NULL DEFAULT now()
);
CREATE SCHEMA "Mixed Schema";
CREATE TABLE "Mixed Schema"."Order" (
    "Slug"      text PRIMARY KEY,
    "Note Id"   bigint NOT NULL REFERENCES public."Project Notes" (id),
    "group"     text,
    "User"      jsonb
);
-- No foreign key: owned through a sharding rule over quoted columns.
CREATE TABLE public."Loose Links" (
    "Link Id"     bigint NOT NULL,
    "user"        text NOT NULL,
    "Project Id"  bigint NOT NULL,
    "Target Type" text,
    "Target Id"   bigint,
    PRIMARY KEY ("Link Id", "user")
);
'''

RULES_EXTRA = '''
  "Loose Links":
    sharding_key: {"Project Id": projects}
    polymorphic:
      - {type_column: "Target Type", id_column: "Target Id", types: {Issue: issues}}
'''

TRICKY = ["O'Brien", "back\\slash", 'dq"uote', "semi;colon -- x", "Ünïcödé", "$$dollar$$",
          "e'\\x41'", "new\nline", "tab\tbed", "%(name)s %s {}", "a", "B", "ä", "z"]

TABLES = {"public.Project Notes", "Mixed Schema.Order", "public.Loose Links"}


def _add_rows(dsn: str, org: int, id_base: int) -> int:
    """Give ``org``'s projects rows in the quoted tables; returns the rows added."""
    added = 0
    with psycopg.connect(dsn) as conn:
        projects = [r[0] for r in conn.execute(
            "SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
            "WHERE n.organization_id = %s ORDER BY p.id", (org,)).fetchall()]
        issues = [r[0] for r in conn.execute(
            "SELECT i.id FROM issues i WHERE i.project_id = ANY(%s) ORDER BY i.id", (projects,)).fetchall()]
        assert projects and issues
        for i in range(40):
            note = id_base + i
            conn.execute(
                'INSERT INTO public."Project Notes" (id, project_id, "Order", "select", "MixedCase", '
                '"it\'s ""quoted""") VALUES (%s, %s, %s, %s, %s, %s)',
                (note, projects[i % len(projects)], i, TRICKY[i % len(TRICKY)], f"Mc{i}",
                 None if i % 5 == 0 else f"q'{i}\""))
            slug = f"{org}:{TRICKY[i % len(TRICKY)]}:{i}"
            conn.execute('INSERT INTO "Mixed Schema"."Order" ("Slug", "Note Id", "group", "User") '
                         "VALUES (%s, %s, %s, %s)",
                         (slug, note, "grp", json.dumps({"k": TRICKY[i % len(TRICKY)]})))
            conn.execute('INSERT INTO public."Loose Links" ("Link Id", "user", "Project Id", '
                         '"Target Type", "Target Id") VALUES (%s, %s, %s, %s, %s)',
                         (id_base + i // 2, TRICKY[i % len(TRICKY)], projects[i % len(projects)],
                          "Issue" if i % 3 else None, issues[i % len(issues)] if i % 3 else None))
            added += 3
        conn.commit()
    return added


def _cli(world: World, *args: str, code: int = 0) -> Any:
    return cli_ok(world.config_path, *args, code=code)


def test_move_of_tables_whose_names_need_quoting(world: World) -> None:
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    for dsn in (src, dst):
        with psycopg.connect(dsn) as conn:
            conn.execute(DDL)  # type: ignore[arg-type]
    _add_rows(src, 1, 1_000_000)
    _add_rows(src, 3, 3_000_000)  # another org on the source: must stay put
    _add_rows(dst, 2, 2_000_000)  # the target's own org: must stay untouched
    rules = world.config_path.parent / "quoting.rules.yaml"
    rules.write_text(Path(RULES).read_text().replace("tables:\n", "tables:\n" + RULES_EXTRA.lstrip("\n"), 1))
    plan_path = world.config_path.parent / "quoting.plan.json"

    doc = _cli(world, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", str(rules),
               "--out", str(plan_path), "--json")
    steps = {s["table"]: s for s in doc["plan"]["steps"]}
    assert TABLES <= set(steps)
    assert steps["public.Project Notes"]["columns"][:6] == [
        "id", "project_id", "Order", "select", "MixedCase", 'it\'s "quoted"']
    assert steps["Mixed Schema.Order"]["key"] == ["Slug"]
    assert steps["public.Loose Links"]["key"] == ["Link Id", "user"]
    assert steps["public.Loose Links"]["filter_sql"].startswith(
        '"Project Id" IN (SELECT id FROM public.projects WHERE')
    assert "public.issues" in steps["public.Loose Links"]["depends_on"]  # the polymorphic link
    assert steps["Mixed Schema.Order"]["filter_sql"].startswith(
        '"Note Id" IN (SELECT id FROM public."Project Notes" WHERE project_id IN')

    plan = read_plan(plan_path)
    src_others = other_rows_checksums(src, plan)
    dst_others = other_rows_checksums(dst, plan)
    copied = _cli(world, "copy", str(plan_path), "--chunk-rows", "7", "--json")
    per_table = {t["table"]: t for t in copied["tables"]}
    for t in TABLES:
        assert per_table[t]["rows"] > 0, t
    assert per_table["Mixed Schema.Order"]["chunks"] > 1  # text bounds with quotes, as literals
    assert _cli(world, "verify", str(plan_path), "--json")["equal"] is True

    # Writes after the copy, to quoted tables: cutover's sync (MERGE, temp table) re-copies them.
    with psycopg.connect(src) as conn:
        conn.execute('UPDATE public."Project Notes" SET "select" = %s WHERE id = 1000003', ("it's new",))
        conn.execute('DELETE FROM "Mixed Schema"."Order" WHERE "Slug" = %s', (f"1:{TRICKY[5]}:5",))
        conn.execute('INSERT INTO public."Loose Links" ("Link Id", "user", "Project Id") '
                     'SELECT 1999999, %s, project_id FROM public."Project Notes" WHERE id = 1000000',
                     ("late'r\\",))
    cut = _cli(world, "cutover", str(plan_path), "--yes", "--json")
    assert cut["committed"] is True
    # The stream applied the writes to the oddly named tables; the final check compared them.
    [final] = [s for s in cut["steps"] if s["step"] == "final check"]
    assert int(final["detail"].split()[0]) >= 2, cut["steps"]

    source, target = org_checksums(src, plan), org_checksums(dst, plan)
    assert target == source
    for t in TABLES:
        assert source[t][0] > 0, t
    assert other_rows_checksums(src, plan) == src_others
    assert other_rows_checksums(dst, plan) == dst_others
    with psycopg.connect(dst) as conn:
        row = conn.execute('SELECT "select" FROM public."Project Notes" WHERE id = 1000003').fetchone()
    assert row is not None and row[0] == "it's new"

    # Cleanup composes its batched deletes from the same names.
    cleaned = _cli(world, "cleanup", str(plan_path), "--yes", "--json")
    assert cleaned["tables"]["public.Project Notes"] == source["public.Project Notes"][0]
    assert other_rows_checksums(src, plan) == src_others


def test_review_rendering_quotes_names() -> None:
    step = Step(table="Mixed Schema.Order", schema_name="Mixed Schema", name="Order",
                columns=["Slug"], column_types=["text"], key=["Slug"], key_types=["text"],
                filter=[{"hops": [{"columns": ["Note Id"], "ref_table": "public.Project Notes",  # type: ignore[list-item]
                                   "ref_columns": ["id"]},
                                  {"columns": ["project_id"], "ref_table": "public.projects", "ref_columns": ["id"]},
                                  {"columns": ["namespace_id"], "ref_table": "public.namespaces",
                                   "ref_columns": ["id"]},
                                  {"columns": ["organization_id"], "ref_table": "public.organizations",
                                   "ref_columns": ["id"], "type_column": "Kind", "type_value": "it's"}]}])
    text = render_filter_for_review(step, RootSpec())
    assert '"Note Id" IN (SELECT id FROM public."Project Notes" WHERE' in text
    assert "(\"Kind\" = 'it''s' AND organization_id = :org)" in text


@pytest.mark.parametrize("bad", ["bigint) OR (true", "text) or (1", "int; drop table x", "bigint --",
                                 "text collate \"C\") or (true", ""])
def test_type_names_from_a_plan_cannot_change_the_sql(bad: str) -> None:
    with pytest.raises(PlanError):
        cast_type(bad)


@pytest.mark.parametrize("good", ["bigint", "character varying(200)", "numeric(10,2)", "integer[]",
                                  "timestamp(3) with time zone", "double precision", '"char"', "uuid"])
def test_type_names_from_the_catalog_pass(good: str) -> None:
    assert isinstance(cast_type(good), sql.Composable)
