"""The fixture schema and the data generator (orgmove.sandbox.seed), against real PostgreSQL Cells."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orgmove.db import connect
from orgmove.errors import BadInput, PreflightFailed
from orgmove.sandbox.seed import (
    ALL_TABLES,
    CLUSTER_WIDE_TABLES,
    ID_RANGE,
    ORG_TABLES,
    SCALES,
    UNICODE,
    cell_number,
    install_schema,
    org_counts,
    org_home,
    seed,
)
from tests.conftest import CellDbs
from tests.orgcounts import org_row_counts
from tests.pgfixtures import CELL_NAMES, Servers

FINGERPRINT_SQL = """
SELECT n.nspname || '.' || c.relname || ' kind=' || c.relkind::text
       || coalesce(' bound=' || pg_get_expr(c.relpartbound, c.oid), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('public', 'gitlab_partitions_dynamic')
UNION ALL
SELECT n.nspname || '.' || c.relname || ' col ' || a.attnum || ' ' || a.attname || ' '
       || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
       || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
       || coalesce(' default=' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname IN ('public', 'gitlab_partitions_dynamic') AND a.attnum > 0
  AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
UNION ALL
SELECT n.nspname || '.' || c.relname || ' constraint ' || con.conname || ' '
       || pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('public', 'gitlab_partitions_dynamic')
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('public', 'gitlab_partitions_dynamic')
UNION ALL
SELECT 'sequence ' || schemaname || '.' || sequencename || ' ' || data_type::text
       || ' start=' || start_value || ' min=' || min_value || ' max=' || max_value
FROM pg_sequences WHERE schemaname IN ('public', 'gitlab_partitions_dynamic')
"""


def fingerprint(dsn: str) -> tuple[str, list[str]]:
    with connect(dsn, cell="test", application_name="test-seed") as conn:
        lines = sorted(str(r[0]) for r in conn.execute(FINGERPRINT_SQL))
        row = conn.execute("SELECT md5(%s)", ["\n".join(lines)]).fetchone()
    assert row is not None
    return str(row[0]), lines


def table_checksums(dsn: str, tables: tuple[str, ...] = ALL_TABLES) -> dict[str, str]:
    out: dict[str, str] = {}
    with connect(dsn, cell="test", application_name="test-seed") as conn:
        for table in tables:
            query = sql.SQL(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')"
                " FROM {} t"
            ).format(sql.Identifier("public", table))
            row = conn.execute(query).fetchone()
            assert row is not None
            out[table] = str(row[0])
    return out


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect(dsn, cell="test", application_name="test-seed") as conn:
        return conn.execute(text.encode(), params).fetchall()


def scalar(dsn: str, text: str, params: Any = None) -> Any:
    rows = query(dsn, text, params)
    return rows[0][0]


@pytest.fixture()
def fresh_pair(pg_servers: Servers) -> Iterator[dict[str, str]]:
    """Two empty databases (no schema): cell name -> DSN."""
    dbnames = {name: pg_servers.create_db(name, prefix="seedtest") for name in CELL_NAMES}
    try:
        yield {name: pg_servers.admin_dsn(name, db) for name, db in dbnames.items()}
    finally:
        for name, db in dbnames.items():
            pg_servers.drop_db(name, db)


# ---------------------------------------------------------------------------------------- pure


def test_org_home_round_robin() -> None:
    names = ["cell-2", "cell-1"]
    assert [org_home(o, names) for o in range(1, 6)] == [
        "cell-1", "cell-2", "cell-1", "cell-2", "cell-1"
    ]
    assert org_home(2, ["cell-1"]) == "cell-1"
    assert cell_number("cell-12") == 12
    with pytest.raises(BadInput):
        cell_number("primary")


def test_org_shapes_differ_and_org_1_is_biggest() -> None:
    for scale in SCALES:
        totals = {o: sum(org_counts(o, scale, 5).counts.values()) for o in range(1, 6)}
        assert totals[1] == max(totals.values()), scale
    small = {o: org_counts(o, "small", 3).counts for o in (1, 2, 3)}
    # org 2 is issue-heavy with little CI, org 3 CI-heavy with few issues
    assert small[2]["issues"] / small[2]["p_ci_builds"] > small[1]["issues"] / small[1]["p_ci_builds"]
    assert small[3]["p_ci_builds"] / small[3]["issues"] > small[1]["p_ci_builds"] / small[1]["issues"]


def test_unknown_scale_is_bad_input(fresh_pair: dict[str, str]) -> None:
    with pytest.raises(BadInput, match="unknown scale"):
        seed(fresh_pair, scale="huge")


# -------------------------------------------------------------------------------------- schema


def test_schema_identical_on_every_cell(fresh_pair: dict[str, str]) -> None:
    for name, dsn in fresh_pair.items():
        install_schema(dsn, cell_number(name), cell=name)
    (fp1, lines1), (fp2, lines2) = (fingerprint(dsn) for dsn in fresh_pair.values())
    assert lines1 == lines2
    assert fp1 == fp2
    assert len(lines1) > 200
    # Seeding changes no catalog row.
    seed(fresh_pair, orgs=2, scale="tiny")
    assert fingerprint(fresh_pair["cell-1"])[0] == fp1


def test_schema_has_the_hard_parts(empty_cells: CellDbs) -> None:
    dsn = empty_cells.dsn("cell-1")
    parts = query(
        dsn,
        "SELECT n.nspname || '.' || c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.inhparent = 'public.p_ci_builds'::regclass ORDER BY 1",
    )
    assert [p[0] for p in parts] == [
        "gitlab_partitions_dynamic.ci_builds_100", "gitlab_partitions_dynamic.ci_builds_101"
    ]
    assert scalar(dsn, "SELECT relkind FROM pg_class WHERE oid = 'public.p_ci_builds'::regclass") == "p"
    assert scalar(
        dsn, "SELECT attgenerated FROM pg_attribute"
        " WHERE attrelid = 'public.projects'::regclass AND attname = 'path_lower'"
    ) == "s"
    assert scalar(
        dsn, "SELECT attidentity FROM pg_attribute"
        " WHERE attrelid = 'public.project_statistics'::regclass AND attname = 'id'"
    ) == "a"
    assert scalar(
        dsn, "SELECT count(*) FROM pg_constraint"
        " WHERE conrelid = 'public.web_hook_logs_archive'::regclass AND contype IN ('p', 'u')"
    ) == 0
    assert scalar(
        dsn, "SELECT array_length(conkey, 1) FROM pg_constraint"
        " WHERE conrelid = 'public.project_authorizations'::regclass AND contype = 'p'"
    ) == 2
    # No FK on the columns linked only by a sharding rule.
    loose = query(
        dsn,
        "SELECT c.relname || '.' || a.attname FROM pg_constraint con"
        " JOIN pg_class c ON c.oid = con.conrelid"
        " JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY(con.conkey)"
        " WHERE con.contype = 'f'",
    )
    fk_columns = {r[0] for r in loose}
    for col in ("notes.project_id", "notes.noteable_id", "routes.source_id", "members.source_id",
                "ci_pipelines.project_id", "p_ci_builds.project_id", "ci_job_artifacts.project_id",
                "projects.forked_from_project_id",
                "label_links.target_id", "web_hook_logs_archive.project_id"):
        assert col not in fk_columns, col
    assert "namespaces.parent_id" in fk_columns
    assert "merge_requests.source_project_id" in fk_columns  # GitLab's FK
    assert "ci_job_artifacts.job_id" in fk_columns


def test_every_fk_and_sharding_column_is_indexed(empty_cells: CellDbs) -> None:
    dsn = empty_cells.dsn("cell-1")
    leading = {
        (r[0], r[1])
        for r in query(
            dsn,
            "SELECT c.relname, a.attname FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]",
        )
    }
    fks = query(
        dsn,
        "SELECT c.relname, a.attname FROM pg_constraint con"
        " JOIN pg_class c ON c.oid = con.conrelid"
        " JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]"
        " WHERE con.contype = 'f' AND c.relnamespace = 'public'::regnamespace",
    )
    sharding = [("notes", "project_id"), ("notes", "noteable_id"), ("routes", "source_id"),
                ("members", "source_id"), ("ci_pipelines", "project_id"),
                ("p_ci_builds", "project_id"), ("ci_job_artifacts", "project_id"),
                ("web_hook_logs_archive", "project_id"), ("label_links", "target_id")]
    missing = [f"{t}.{c}" for t, c in [*fks, *sharding] if (t, c) not in leading]
    assert missing == []


def test_install_schema_is_idempotent_and_sets_the_cell_range(fresh_pair: dict[str, str]) -> None:
    dsn = fresh_pair["cell-2"]
    install_schema(dsn, 2)
    install_schema(dsn, 2)
    with connect(dsn, cell="cell-2", application_name="test-seed") as conn:
        seqs = conn.execute(
            "SELECT schemaname, sequencename FROM pg_sequences"
            " WHERE schemaname IN ('public', 'gitlab_partitions_dynamic')"
        ).fetchall()
        assert len(seqs) == 16  # 15 id sequences and the issues_created_counter
        for schema, name in seqs:
            value = conn.execute(
                sql.SQL("SELECT nextval({})").format(sql.Literal(f"{schema}.{name}"))
            ).fetchone()
            assert value is not None
            assert 2 * ID_RANGE <= value[0] < 3 * ID_RANGE, name
        conn.rollback()
    assert scalar(dsn, "SELECT settings->>'cell_number' FROM application_settings") == "2"
    with pytest.raises(PreflightFailed, match="cell number 2"):
        install_schema(dsn, 1)


# ----------------------------------------------------------------------------------- generator


def test_seed_is_deterministic(cells: CellDbs, fresh_pair: dict[str, str]) -> None:
    # `cells` was seeded by the session fixture with the same arguments.
    report = seed(fresh_pair, orgs=3, scale="tiny", seed=42)
    assert report.total_rows > 0
    for name in CELL_NAMES:
        assert table_checksums(fresh_pair[name]) == table_checksums(cells.dsn(name)), name


def test_other_seed_gives_other_data(fresh_pair: dict[str, str], cells: CellDbs) -> None:
    seed(fresh_pair, orgs=3, scale="tiny", seed=7)
    a, b = table_checksums(fresh_pair["cell-1"]), table_checksums(cells.dsn("cell-1"))
    assert a["issues"] != b["issues"]
    assert a["schema_migrations"] == b["schema_migrations"]


def test_cluster_wide_rows_are_identical_in_every_cell(cells: CellDbs) -> None:
    sums = [table_checksums(cells.dsn(n), CLUSTER_WIDE_TABLES) for n in cells.names]
    assert sums[0] == sums[1]
    assert scalar(cells.dsn("cell-1"), "SELECT count(*) FROM users") == SCALES["tiny"].users


def test_ids_come_from_the_cells_range(cells: CellDbs) -> None:
    for name in cells.names:
        n = cell_number(name)
        for table in ORG_TABLES:
            if table in ("organizations", "project_authorizations", "web_hook_logs_archive"):
                continue
            lo, hi = query(
                cells.dsn(name),
                sql.SQL("SELECT min(id), max(id) FROM {}").format(sql.Identifier(table))
                .as_string(None),
            )[0]
            assert lo is not None, (name, table)
            assert n * ID_RANGE <= lo <= hi < (n + 1) * ID_RANGE, (name, table)
    assert [r[0] for r in query(cells.dsn("cell-1"), "SELECT id FROM organizations ORDER BY 1")] == [
        1, 3
    ]


def test_second_seed_refuses_clearly(cells: CellDbs) -> None:
    before = table_checksums(cells.dsn("cell-2"))
    with pytest.raises(PreflightFailed, match="already seeded") as info:
        seed(cells.dsns, orgs=3, scale="tiny")
    assert "fresh" in info.value.fix
    assert table_checksums(cells.dsn("cell-2")) == before


def test_foreign_keys_hold(cells: CellDbs) -> None:
    """Seeding may skip FK triggers (superuser); every FK must still hold."""
    for name in cells.names:
        dsn = cells.dsn(name)
        fks = query(
            dsn,
            "SELECT con.conname, con.conrelid::regclass::text, con.confrelid::regclass::text,"
            " array(SELECT attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)"
            "   JOIN pg_attribute ON attrelid = con.conrelid AND attnum = k.n ORDER BY o),"
            " array(SELECT attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)"
            "   JOIN pg_attribute ON attrelid = con.confrelid AND attnum = k.n ORDER BY o)"
            " FROM pg_constraint con WHERE con.contype = 'f'"
            " AND con.conrelid::regclass::text NOT LIKE 'gitlab_partitions_dynamic.%'"
            " AND con.connamespace = 'public'::regnamespace AND con.conparentid = 0",
        )
        assert len(fks) >= 20
        with connect(dsn, cell=name, application_name="test-seed") as conn:
            for conname, child, parent, cols, pcols in fks:
                cond = sql.SQL(" AND ").join(
                    sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
                    for cc, pc in zip(cols, pcols, strict=True)
                )
                notnull = sql.SQL(" AND ").join(
                    sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc in cols
                )
                orphans = conn.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS"
                        " (SELECT 1 FROM {} p WHERE {})"
                    ).format(sql.SQL(child), notnull, sql.SQL(parent), cond)
                ).fetchone()
                assert orphans is not None and orphans[0] == 0, (name, conname)


def test_sharding_rules_hold(cells: CellDbs) -> None:
    """Links without FKs point where the sharding rules say (same organization)."""
    dsn = cells.dsn("cell-1")
    checks = {
        "notes on issues": "SELECT count(*) FROM notes n JOIN issues i ON i.id = n.noteable_id"
        " WHERE n.noteable_type = 'Issue' AND i.project_id <> n.project_id",
        "notes on MRs": "SELECT count(*) FROM notes n JOIN merge_requests m ON m.id = n.noteable_id"
        " WHERE n.noteable_type = 'MergeRequest' AND m.target_project_id <> n.project_id",
        "dangling notes": "SELECT count(*) FROM notes n WHERE NOT EXISTS"
        " (SELECT 1 FROM issues i WHERE n.noteable_type = 'Issue' AND i.id = n.noteable_id)"
        " AND NOT EXISTS (SELECT 1 FROM merge_requests m WHERE n.noteable_type = 'MergeRequest'"
        " AND m.id = n.noteable_id)",
        "label links": "SELECT count(*) FROM label_links ll JOIN labels l ON l.id = ll.label_id"
        " LEFT JOIN issues i ON ll.target_type = 'Issue' AND i.id = ll.target_id"
        " LEFT JOIN merge_requests m ON ll.target_type = 'MergeRequest' AND m.id = ll.target_id"
        " WHERE coalesce(i.project_id, m.target_project_id) IS DISTINCT FROM l.project_id",
        "builds": "SELECT count(*) FROM p_ci_builds b JOIN ci_pipelines p ON p.id = b.commit_id"
        " WHERE p.project_id <> b.project_id",
        "artifacts": "SELECT count(*) FROM ci_job_artifacts a JOIN p_ci_builds b"
        " ON b.id = a.job_id AND b.partition_id = a.partition_id WHERE b.project_id <> a.project_id",
        "routes": "SELECT count(*) FROM routes r WHERE NOT EXISTS (SELECT 1 FROM namespaces n"
        " WHERE r.source_type = 'Namespace' AND n.id = r.source_id) AND NOT EXISTS"
        " (SELECT 1 FROM projects p WHERE r.source_type = 'Project' AND p.id = r.source_id)",
        "members": "SELECT count(*) FROM members m WHERE NOT EXISTS (SELECT 1 FROM namespaces n"
        " WHERE m.source_type = 'Namespace' AND n.id = m.source_id) AND NOT EXISTS"
        " (SELECT 1 FROM projects p WHERE m.source_type = 'Project' AND p.id = m.source_id)",
        "traversal_ids": "SELECT count(*) FROM namespaces c LEFT JOIN namespaces p"
        " ON p.id = c.parent_id WHERE c.traversal_ids[array_length(c.traversal_ids, 1)] <> c.id"
        " OR c.traversal_ids[1:array_length(c.traversal_ids, 1) - 1]"
        "    IS DISTINCT FROM coalesce(p.traversal_ids, '{}')",
        "routes for namespaces": "SELECT count(*) FROM namespaces n WHERE NOT EXISTS"
        " (SELECT 1 FROM routes r WHERE r.source_type = 'Namespace' AND r.source_id = n.id)",
        "routes for projects": "SELECT count(*) FROM projects p WHERE NOT EXISTS"
        " (SELECT 1 FROM routes r WHERE r.source_type = 'Project' AND r.source_id = p.id)",
    }
    bad = {name: scalar(dsn, q) for name, q in checks.items()}
    assert bad == dict.fromkeys(checks, 0)


def test_data_has_the_hard_values(cells: CellDbs) -> None:
    dsn = cells.dsn("cell-1")
    assert scalar(dsn, "SELECT count(*) FROM projects WHERE length(description) > 8192") >= 1
    assert scalar(dsn, "SELECT count(*) FROM projects WHERE description IS NULL") >= 0
    assert scalar(dsn, "SELECT count(*) FROM issues WHERE description IS NULL") >= 1
    assert scalar(dsn, "SELECT count(*) FROM ci_job_artifacts WHERE length(file) > 8192") >= 1
    assert scalar(dsn, "SELECT count(*) FROM ci_job_artifacts WHERE file IS NULL") >= 1
    assert scalar(dsn, "SELECT count(*) FROM issues WHERE title LIKE %s", [f"{UNICODE}%"]) >= 1
    assert scalar(dsn, "SELECT count(*) FROM users WHERE name LIKE %s", [f"{UNICODE}%"]) >= 1
    assert scalar(dsn, "SELECT count(*) FROM issues WHERE weight <> trunc(weight)") >= 1
    assert scalar(dsn, "SELECT count(*) FROM issues WHERE extract(microseconds FROM created_at)"
                       " :: bigint % 1000 <> 0") >= 1
    for table, col, kinds in (("notes", "noteable_type", {"Issue", "MergeRequest"}),
                              ("label_links", "target_type", {"Issue", "MergeRequest"}),
                              ("members", "source_type", {"Namespace", "Project"}),
                              ("routes", "source_type", {"Namespace", "Project"})):
        found = query(dsn, sql.SQL("SELECT DISTINCT {} FROM {}").format(
            sql.Identifier(col), sql.Identifier(table)).as_string(None))
        assert {r[0] for r in found} == kinds, table
    for partition in ("ci_builds_100", "ci_builds_101"):
        assert scalar(dsn, f"SELECT count(*) FROM gitlab_partitions_dynamic.{partition}") > 0
    assert scalar(dsn, "SELECT count(*) FROM labels WHERE group_id IS NOT NULL") >= 1
    assert scalar(dsn, "SELECT count(*) FROM namespaces WHERE parent_id IS NOT NULL") >= 1
    assert scalar(dsn, "SELECT count(*) FROM namespaces WHERE type = 'User'") >= 1
    dupes = scalar(
        dsn, "SELECT count(*) FROM (SELECT project_id FROM web_hook_logs_archive"
        " GROUP BY project_id, url, response_status, payload, created_at HAVING count(*) > 1) d"
    )
    assert dupes >= 1


_FORK_MRS = (
    "SELECT tn.organization_id, sn.organization_id, sp.forked_from_project_id = tp.id"
    " FROM merge_requests m"
    " JOIN projects tp ON tp.id = m.target_project_id JOIN namespaces tn ON tn.id = tp.namespace_id"
    " JOIN projects sp ON sp.id = m.source_project_id JOIN namespaces sn ON sn.id = sp.namespace_id"
    " WHERE m.source_project_id <> m.target_project_id"
)


def test_org_3_forks_within_itself_by_default(cells: CellDbs) -> None:
    # A fork in another organization would dangle on the target of a move (the FK check refuses
    # it), so by default an organization forks one of its own projects.
    rows = query(cells.dsn("cell-1"), _FORK_MRS)
    assert len(rows) >= 3
    assert set(rows) == {(3, 3, True)}


def test_org_3_forks_into_org_1_on_request(fresh_pair: dict[str, str]) -> None:
    seed(fresh_pair, orgs=3, scale="tiny", cross_org_forks=True, analyze=False)
    rows = query(fresh_pair["cell-1"], _FORK_MRS)
    assert len(rows) >= 3
    assert set(rows) == {(1, 3, True)}


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_sizes_and_org_row_counts(scale: str, fresh_pair: dict[str, str]) -> None:
    report = seed(fresh_pair, orgs=3, scale=scale)
    assert [o.cell for o in report.orgs] == ["cell-1", "cell-2", "cell-1"]
    by_org = {o.id: o for o in report.orgs}
    if scale == "tiny":
        assert all(100 <= o.rows <= 1_000 for o in report.orgs), by_org
    else:
        assert 10_000 <= by_org[1].rows <= 13_000
    assert by_org[1].rows == max(o.rows for o in report.orgs)
    assert report.total_rows == sum(sum(t.values()) for t in report.rows.values())
    assert report.rows_per_s > 0
    for org in report.orgs:
        counts = org_row_counts(fresh_pair[org.cell], org.id)
        assert set(counts) == set(ORG_TABLES)
        assert counts == {t: org.tables.get(t, 0) for t in ORG_TABLES}, org.id
        assert sum(counts.values()) == org.rows
    # Each cell's table totals = its organizations' rows + the cluster-wide rows.
    for name, tables in report.rows.items():
        assert tables["users"] == SCALES[scale].users
        org_rows = sum(o.rows for o in report.orgs if o.cell == name)
        assert sum(tables.values()) == org_rows + SCALES[scale].users + SCALES[scale].lfs_objects


def test_cells_fixture_config(cells: CellDbs) -> None:
    mode = stat.S_IMODE(os.stat(cells.config_path).st_mode)
    assert mode == 0o600
    from orgmove.config import load_config

    config = load_config(cells.config_path)
    assert sorted(config.cells) == ["cell-1", "cell-2"]
    assert config.cell_dsn("cell-2") == cells.dsn("cell-2")
    with psycopg.connect(cells.dsn("cell-2")) as conn:
        row = conn.execute("SELECT id FROM organizations").fetchall()
    assert row == [(2,)]
