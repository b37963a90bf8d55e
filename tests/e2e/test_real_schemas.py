"""Issue 15, items 4 and 5: real open-source multi-tenant schemas (tests/fixtures/schemas/).

For each schema: ``plan --suggest-rules`` on the bare schema completes and classifies every base
table (decided or ``# review:``); the reviewed rules file committed beside the schema plans with
no unclassified table; then, with rows from the generic filler (tests/fixtures/filler.py, three
organizations, two on the source Cell), one organization moves: plan, copy, verify 0, cutover
(the Topology Service routes the organization, whether its key is an integer or a uuid, to the
target) and cleanup, the other organizations' rows untouched on both Cells."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from orgmove import state
from orgmove.plan import read_plan
from orgmove.rules import parse_rules
from orgmove.topology.client import TopologyClient
from orgmove.topology.models import Bucket, ClaimIn, Source, Subject
from orgmove.topology.server import run_in_thread
from tests.fixtures.filler import fill
from tests.helpers import cli_ok, org_checksums, orgmove_cli, other_rows_checksums
from tests.pgfixtures import Servers
from tests.realschemas import SCHEMAS, load_schema

TOKEN = "test-topology-token-real-schemas"


@dataclass(frozen=True)
class RealSchema:
    name: str
    root: str  # the draft's starting rules: the tenant root only
    orgs: dict[str, list[Any]]  # cell -> organizations' root keys
    moved: Any


def _uuid(n: int) -> str:
    return f"0b6f3f3e-1111-4222-8333-9444455556{n:02d}"


REAL = {
    "coder": RealSchema("coder", "root: {table: organizations, key: id}\n",
                        {"cell-1": [_uuid(1), _uuid(3)], "cell-2": [_uuid(2)]}, _uuid(1)),
    "openreplay": RealSchema("openreplay", "root: {table: projects, key: project_id}\n",
                             {"cell-1": [1, 3], "cell-2": [2]}, 1),
}


@dataclass
class Cells:
    real: RealSchema
    dsns: dict[str, str]
    config_path: Path


@pytest.fixture()
def schema_cells(request: pytest.FixtureRequest, pg_servers: Servers, tmp_path: Path) -> Iterator[Cells]:
    real: RealSchema = request.param
    dbs = {cell: pg_servers.create_db(cell, prefix=f"rs_{real.name}") for cell in ("cell-1", "cell-2")}
    try:
        dsns = {cell: pg_servers.admin_dsn(cell, db) for cell, db in dbs.items()}
        for dsn in dsns.values():
            load_schema(dsn, real.name)
        config = tmp_path / "orgmove.toml"
        lines = [f'[cells."{c}"]\ndsn = "{d}"\n' for c, d in dsns.items()]
        lines.append(f'[defaults]\nplans_dir = "{tmp_path / "plans"}"\nlock_timeout_s = 5\n')
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
        yield Cells(real, dsns, config)
    finally:
        for cell, db in dbs.items():
            pg_servers.drop_db(cell, db)


def _draft(cells: Cells, real: RealSchema, tmp_path: Path) -> str:
    start = tmp_path / "root.rules.yaml"
    start.write_text(real.root)
    proc = cli_ok(cells.config_path, "plan", "--org", str(real.moved), "--from", "cell-1", "--to",
                  "cell-2", "--rules", str(start), "--suggest-rules")
    return str(proc.stdout)


def _base_tables(dsn: str) -> set[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'orgmove')").fetchall()}


def _listed(rules_text: str, tables: set[str]) -> dict[str, str]:
    """Where each base table is classified: by a rule entry, a list, or (absent) the graph."""
    doc = yaml.safe_load(rules_text)
    out: dict[str, str] = {}
    for kind in ("cluster_wide", "cell_local", "ignored"):
        for name in doc.get(kind) or []:
            out[name if "." in name else f"public.{name}"] = kind
    for name in doc.get("tables") or {}:
        out.setdefault(name if "." in name else f"public.{name}", "rule")
    return {t: k for t, k in out.items() if t in tables}


@pytest.mark.parametrize("schema_cells", list(REAL.values()), ids=list(REAL), indirect=True)
def test_suggest_rules_classifies_every_base_table(schema_cells: Cells, tmp_path: Path) -> None:
    real = schema_cells.real
    tables = _base_tables(schema_cells.dsns["cell-1"])
    draft = _draft(schema_cells, real, tmp_path)
    decided_line = next(line for line in draft.splitlines() if "tables decided," in line)
    decided, review = (int(w) for w in decided_line.replace(",", " ").split() if w.isdigit())
    assert decided + review == len(tables), decided_line
    comments = [line for line in draft.splitlines() if line.lstrip().startswith("# review:")]
    assert review > 0 and len(comments) == review
    # Every base table is classified: planning the draft as it is finds none unclassified.
    path = tmp_path / "draft.rules.yaml"
    path.write_text(draft)
    import psycopg

    from orgmove.catalog import read_catalog
    from orgmove.graph import analyze

    with psycopg.connect(schema_cells.dsns["cell-1"]) as conn:
        catalog = read_catalog(conn)
    graph = analyze(catalog, parse_rules(draft))
    assert graph.unclassified == [] and graph.cycles == []
    classified = {q for q, n in graph.nodes.items() if n.classification != "partition"}
    assert classified == tables
    # The reviewed file beside the schema classifies the same tables, with no review left.
    reviewed = (SCHEMAS / f"{real.name}.rules.yaml").read_text()
    assert "# review:" not in reviewed
    assert analyze(catalog, parse_rules(reviewed)).unclassified == []


def _topology(pg_servers: Servers, cells: Cells, real: RealSchema) -> Iterator[TopologyClient]:
    dbname = pg_servers.create_db("topology", prefix="topo")
    try:
        with run_in_thread(pg_servers.admin_dsn("topology", dbname), TOKEN) as url:
            client = TopologyClient(url, TOKEN, retry_deadline_s=5.0)
            for i, name in enumerate(cells.dsns, 1):
                client.register_cell(name, f"cell{i}.example:5432")
            # The organization key is the root key as text (a uuid for coder); the Rails
            # subject and source ids are integers, so a uuid organization gets a made-up one.
            subject_ids = iter(range(1, 1000))
            for cell, orgs in real.orgs.items():
                client.create_claims(cell, [ClaimIn(
                    bucket=Bucket(type="organization_id", value=str(o)),
                    subject=Subject(type="organization", id=(n := o if isinstance(o, int) else next(subject_ids))),
                    source=Source(type="organizations", rails_primary_key=n),
                    organization_id=str(o)) for o in orgs])
            text = cells.config_path.read_text()
            cells.config_path.write_text(text + f'\n[topology]\nurl = "{url}"\ntoken = "{TOKEN}"\n')
            try:
                yield client
            finally:
                client.close()
    finally:
        pg_servers.drop_db("topology", dbname)


def _unlogged_tables(dsn: str, tables: set[str]) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace WHERE c.relpersistence = 'u' AND c.relkind = 'r'").fetchall()
    return sorted(r[0] for r in rows if r[0] in tables)


@pytest.mark.parametrize("schema_cells", list(REAL.values()), ids=list(REAL), indirect=True)
def test_move_of_one_organization_with_generated_rows(
    schema_cells: Cells, pg_servers: Servers, tmp_path: Path
) -> None:
    real = schema_cells.real
    rules_path = SCHEMAS / f"{real.name}.rules.yaml"
    filled = fill(schema_cells.dsns, parse_rules(rules_path.read_text()), real.orgs)
    src, dst = schema_cells.dsns["cell-1"], schema_cells.dsns["cell-2"]
    topo = _topology(pg_servers, schema_cells, real)
    client = next(topo)
    try:
        for dsn in schema_cells.dsns.values():
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                state.install_cell_schema(conn)
        plan_path = tmp_path / "real.plan.json"
        doc = cli_ok(schema_cells.config_path, "plan", "--org", str(real.moved), "--from", "cell-1",
                     "--to", "cell-2", "--rules", str(rules_path), "--out", str(plan_path), "--json")
        plan = read_plan(plan_path)
        moved_tables = {s.table for s in plan.steps}
        with_rows = {t for t, by_org in filled.org_rows.items() if by_org.get(real.moved)}
        assert len(with_rows) >= 10 and with_rows <= moved_tables, with_rows - moved_tables
        assert len(doc["plan"]["steps"]) == len(plan.steps)
        source = org_checksums(src, plan)
        assert sum(n for n, _ in source.values()) >= 40
        src_others, dst_others = other_rows_checksums(src, plan), other_rows_checksums(dst, plan)
        assert sum(n for n, _ in src_others.values()) > 0  # organization 3 stays on the source

        copy_args = ["copy", str(plan_path), "--chunk-rows", "3", "--json"]
        unlogged = _unlogged_tables(src, moved_tables)
        if unlogged:
            # coder's workspace_agent_logs is UNLOGGED: change capture cannot stream it. The
            # pre-flight says so (exit 2, nothing written), and the copy goes without capture.
            refused = orgmove_cli("--config", str(schema_cells.config_path), *copy_args)
            assert refused.returncode == 2 and "unlogged" in refused.stdout + refused.stderr, refused.stderr
            assert all(n == 0 for n, _ in org_checksums(dst, plan).values())  # nothing written
            copy_args.append("--no-capture")
        cli_ok(schema_cells.config_path, *copy_args)
        verified = cli_ok(schema_cells.config_path, "verify", str(plan_path), "--json")
        assert verified["equal"] is True
        assert org_checksums(dst, plan) == source
        assert other_rows_checksums(dst, plan) == dst_others
        assert client.owner_of_org(real.moved) == "cell-1"
        cut = cli_ok(schema_cells.config_path, "cutover", str(plan_path), "--yes", "--json")
        assert cut["committed"] is True and client.owner_of_org(real.moved) == "cell-2"
        routed = client.classify("organization_id", str(real.moved))
        assert (routed.cell, routed.org_id) == ("cell-2", str(real.moved))
        assert {c.cell_id for c in client.iter_claims(organization_id=real.moved)} == {"cell-2"}
        # The other organizations stay where they were.
        for cell, orgs in real.orgs.items():
            for o in orgs:
                if o != real.moved:
                    assert client.owner_of_org(o) == cell, o
        assert org_checksums(dst, plan) == source
        cli_ok(schema_cells.config_path, "cleanup", str(plan_path), "--yes", "--json")
        assert all(n == 0 for n, _ in org_checksums(src, plan).values())
        assert other_rows_checksums(src, plan) == src_others
        assert other_rows_checksums(dst, plan) == dst_others
    finally:
        topo.close()
