"""Issue 15, item 1: tables keyed by uuid, by text and by a composite (uuid, integer) key move end to
end through the CLI: plan, copy in several chunks, verify 0, cutover (its sync re-copies late writes)
and cleanup. The pre-flight's key-range check once asked for min(uuid), which PostgreSQL lacks."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg

from orgmove.plan import read_plan
from tests.helpers import RULES, cli_ok, org_checksums, other_rows_checksums
from tests.world import World, world

__all__ = ["world"]  # the `world` fixture, used by the test below

DDL = """
CREATE TABLE public.uuid_keyed (
    id          uuid PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES public.projects (id),
    body        text
);
CREATE TABLE public.text_keyed (
    slug        text PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES public.projects (id),
    body        text
);
CREATE TABLE public.composite_keyed (
    owner_id    uuid NOT NULL REFERENCES public.uuid_keyed (id),
    position    integer NOT NULL,
    body        text,
    PRIMARY KEY (owner_id, position)
);
"""

TABLES = {"public.uuid_keyed", "public.text_keyed", "public.composite_keyed"}


def _add_rows(dsn: str, org: int) -> None:
    with psycopg.connect(dsn) as conn:
        projects = [r[0] for r in conn.execute(
            "SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
            "WHERE n.organization_id = %s ORDER BY p.id", (org,)).fetchall()]
        assert projects
        for i in range(30):
            key = uuid.uuid5(uuid.NAMESPACE_URL, f"org-{org}-{i}")
            project = projects[i % len(projects)]
            conn.execute("INSERT INTO public.uuid_keyed VALUES (%s, %s, %s)", (key, project, f"u{i}"))
            conn.execute("INSERT INTO public.text_keyed VALUES (%s, %s, %s)",
                         (f"org{org}-{i:03d}-Ü", project, f"t{i}"))
            for position in range(3):
                conn.execute("INSERT INTO public.composite_keyed VALUES (%s, %s, %s)",
                             (key, position, f"c{i}.{position}"))
        conn.commit()


def _cli(world: World, *args: str, code: int = 0) -> Any:
    return cli_ok(world.config_path, *args, code=code)


def test_move_of_uuid_text_and_composite_keys(world: World) -> None:
    src, dst = world.dsn("cell-1"), world.dsn("cell-2")
    for dsn in (src, dst):
        with psycopg.connect(dsn) as conn:
            conn.execute(DDL)  # type: ignore[arg-type]
    _add_rows(src, 1)
    _add_rows(src, 3)  # another organization on the source: must stay put
    _add_rows(dst, 2)  # the target's own organization: must stay untouched
    rules = world.config_path.parent / "keys.rules.yaml"
    rules.write_text(Path(RULES).read_text())
    plan_path = world.config_path.parent / "keys.plan.json"

    doc = _cli(world, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--rules", str(rules),
               "--out", str(plan_path), "--json")
    steps = {s["table"]: s for s in doc["plan"]["steps"]}
    assert TABLES <= set(steps)
    assert steps["public.uuid_keyed"]["key_types"] == ["uuid"]
    assert steps["public.composite_keyed"]["key"] == ["owner_id", "position"]

    plan = read_plan(plan_path)
    src_others, dst_others = other_rows_checksums(src, plan), other_rows_checksums(dst, plan)
    copied = _cli(world, "copy", str(plan_path), "--chunk-rows", "7", "--json")
    per_table = {t["table"]: t for t in copied["tables"]}
    for t in TABLES:
        assert per_table[t]["rows"] > 0 and per_table[t]["chunks"] > 1, t
    assert _cli(world, "verify", str(plan_path), "--json")["equal"] is True

    with psycopg.connect(src) as conn:
        key = uuid.uuid5(uuid.NAMESPACE_URL, "org-1-4")
        conn.execute("UPDATE public.composite_keyed SET body = 'late' WHERE owner_id = %s AND position = 1",
                     (key,))
        conn.execute("DELETE FROM public.text_keyed WHERE slug = 'org1-005-Ü'")
    cut = _cli(world, "cutover", str(plan_path), "--yes", "--json")
    assert cut["committed"] is True
    # The stream applied both writes (uuid, text and composite keys); the final check compared the
    # touched rows: the updated one (the deleted one is absent on both Cells).
    [final] = [s for s in cut["steps"] if s["step"] == "final check"]
    assert int(final["detail"].split()[0]) >= 1, cut["steps"]

    source, target = org_checksums(src, plan), org_checksums(dst, plan)
    assert target == source
    for t in TABLES:
        assert source[t][0] > 0, t
    assert other_rows_checksums(src, plan) == src_others
    assert other_rows_checksums(dst, plan) == dst_others

    cleaned = _cli(world, "cleanup", str(plan_path), "--yes", "--json")
    assert cleaned["tables"]["public.composite_keyed"] == source["public.composite_keyed"][0]
    assert other_rows_checksums(src, plan) == src_others
