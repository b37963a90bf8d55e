"""The GitLab-shaped fixture data: schema installation and a deterministic, set-based generator.

One schema (``orgmove/sandbox/sql/fixture_schema.sql``) and one generator with a scale knob, used by the
tests, the demo, the sandbox and the benchmarks (docs/architecture.md, "Development tools").

* :func:`install_schema` loads the schema into a Cell (idempotent) and moves every sequence of the
  fixture schema into the Cell's id range (cell N allocates from ``N * 10**12``).
* The organization layout (scales, shapes, row counts, home Cells) is :mod:`orgmove.sandbox.orglayout`.
* :func:`seed` writes the cluster-wide rows (``users``, ``lfs_objects``) identically into every
  Cell and each organization's rows into its home Cell (:func:`org_home`).

The generator is deterministic: every pseudo-random choice is a hash of (row ordinal, seed, org,
table) computed by ``hashint8extended`` on the server, ids are allocated in blocks from the Cell's
sequences in a fixed order, and no value depends on the clock. Rows are produced server-side by
``INSERT ... SELECT ... FROM generate_series(...)``: there is no Python loop per row. All Cells are
written in parallel (one thread and one transaction each) and committed together at the end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.numeric import Int8
from pydantic import BaseModel, Field

from orgmove.db import connect, translate
from orgmove.errors import BadInput, PreflightFailed
from orgmove.sandbox.orglayout import (
    ALL_TABLES,
    CELL_LOCAL_TABLES,
    CLUSTER_WIDE_TABLES,
    ORG_TABLES,
    SCALES,
    OrgCounts,
    Scale,
    cell_number,
    org_counts,
    org_home,
    org_shape,
    scale_named,
)

APP = "orgmove-seed"
ID_RANGE = 10**12
FIXTURE_SCHEMAS = ("public", "gitlab_partitions_dynamic")

_LOCK_KEY = "orgmove.fixture_schema"


# ------------------------------------------------------------------------------------------------
# Schema


def _sql(name: str) -> str:
    """A statement of the generator, from ``orgmove/sandbox/sql/`` (package data)."""
    return (resources.files("orgmove.sandbox") / "sql" / name).read_text(encoding="utf-8")


def schema_sql() -> str:
    return _sql("fixture_schema.sql")


def install_schema(dsn: str, cell_number: int, *, cell: str | None = None) -> None:
    """Load the fixture schema into the database at ``dsn`` unless it is there, and move every
    sequence of the fixture schema into the cell's id range. Idempotent."""
    if cell_number < 1:
        raise BadInput(f"cell number {cell_number} is not positive", fix="number cells from 1")
    name = cell or f"cell-{cell_number}"
    lo, hi = cell_number * ID_RANGE, (cell_number + 1) * ID_RANGE
    try:
        with connect(dsn, cell=name, application_name=APP, lock_timeout_s=60) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [_LOCK_KEY])
            row = conn.execute("SELECT to_regclass('public.organizations') IS NOT NULL").fetchone()
            if not (row and row[0]):
                conn.execute(schema_sql().encode())
            row = conn.execute(
                "SELECT (settings->>'cell_number')::bigint FROM public.application_settings"
                " ORDER BY id LIMIT 1"
            ).fetchone()
            if row is not None and row[0] != cell_number:
                raise PreflightFailed(
                    f"the fixture schema on cell {name!r} was installed for cell number {row[0]}, "
                    f"not {cell_number}",
                    fix="use a fresh database for this cell, or the cell name it was installed as",
                )
            beyond = conn.execute(
                "SELECT schemaname || '.' || sequencename FROM pg_sequences"
                " WHERE schemaname = ANY(%s) AND last_value >= %s ORDER BY 1",
                [list(FIXTURE_SCHEMAS), Int8(hi)],
            ).fetchall()
            if beyond:
                raise PreflightFailed(
                    f"sequences on cell {name!r} are beyond the cell's id range "
                    f"[{lo}, {hi}): {', '.join(r[0] for r in beyond)}",
                    fix="check the cell number; each cell must allocate ids from its own range",
                )
            conn.execute(
                "SELECT setval(format('%%I.%%I', schemaname, sequencename)::regclass, %s, false)"
                " FROM pg_sequences WHERE schemaname = ANY(%s) AND coalesce(last_value, 0) < %s",
                [Int8(lo), list(FIXTURE_SCHEMAS), Int8(lo)],
            )
            if row is None:
                conn.execute(
                    "INSERT INTO public.application_settings (settings)"
                    " VALUES (jsonb_build_object('cell_number', %s::bigint, 'id_range',"
                    " jsonb_build_array(%s::bigint, %s::bigint)))",
                    [Int8(cell_number), Int8(lo), Int8(hi)],
                )
    except psycopg.Error as exc:
        raise translate(exc, cell=name, dsn=dsn, what="install the fixture schema") from exc


# ------------------------------------------------------------------------------------------------
# Report


class OrgSeed(BaseModel):
    id: int
    cell: str
    rows: int
    tables: dict[str, int] = Field(default_factory=dict)


class SeedReport(BaseModel):
    scale: str
    seed: int
    orgs: list[OrgSeed]
    rows: dict[str, dict[str, int]]  # cell -> table -> rows written
    total_rows: int
    seconds: float
    rows_per_s: float


# ------------------------------------------------------------------------------------------------
# Generator SQL. Helpers are session-local (pg_temp) SQL functions; the simple ones are inlined.

_HELPERS = _sql("generate/helpers.sql")

UNICODE = "Ünïcödé 日本語 🚀"

_USERS = _sql("generate/users.sql")

_LFS_OBJECTS = _sql("generate/lfs_objects.sql")

_ORGANIZATION = _sql("generate/organization.sql")

# Groups j in [0, G) are top-level, subgroups j in [G, G+S) hang below an earlier group, user
# namespaces j in [G+S, G+S+U) belong to users org, org+orgs, org+2*orgs, ...
_NAMESPACES = _sql("generate/namespaces.sql")

_NAMESPACE_ROUTES = _sql("generate/namespace_routes.sql")

# Projects j in [0, P) sit in namespaces (skewed to the first ones); j = P, when asked for, is the
# organization's fork of another organization's project %(upstream)s, or of its own first project
# when %(upstream)s is NULL.
_PROJECTS = _sql("generate/projects.sql")

_PROJECT_ROUTES = _sql("generate/project_routes.sql")

_PROJECT_STATISTICS = _sql("generate/project_statistics.sql")

# Project labels k in [0, NL) belong to project mod(k, P); group labels follow.
_LABELS = _sql("generate/labels.sql")

_MEMBERS = _sql("generate/members.sql")

_PROJECT_AUTHORIZATIONS = _sql("generate/project_authorizations.sql")

# The project of issue k is floor(P * u(k)^2): skewed, and recomputable by notes and label links.
_ISSUES = _sql("generate/issues.sql")

_MERGE_REQUESTS = _sql("generate/merge_requests.sql")

# Merge requests into the upstream project whose source project is this organization's fork.
_CROSS_ORG_MERGE_REQUESTS = _sql("generate/cross_org_merge_requests.sql")

_NOTES = _sql("generate/notes.sql")

_LABEL_LINKS = _sql("generate/label_links.sql")

_CI_PIPELINES = _sql("generate/ci_pipelines.sql")

# Build k runs in pipeline mod(k, NP); the first half of the pipelines is in partition 100.
_CI_BUILDS = _sql("generate/ci_builds.sql")

_CI_JOB_ARTIFACTS = _sql("generate/ci_job_artifacts.sql")

_LFS_OBJECTS_PROJECTS = _sql("generate/lfs_objects_projects.sql")

# Row k with mod(k, 10) = 1 repeats row k - 1 exactly: duplicates in a table without a key.
_WEB_HOOK_LOGS = _sql("generate/web_hook_logs.sql")

_TABLE_CODES = {name: 10 * (i + 1) for i, name in enumerate(ALL_TABLES)}


def _salt(seed: int, org: int, table: str) -> int:
    return seed * 1_000_003 + org * 10_007 + _TABLE_CODES[table]


@dataclass
class _OrgIds:
    ns_lo: int = 0
    p_lo: int = 0
    i_lo: int = 0
    m_lo: int = 0
    l_lo: int = 0
    pipe_lo: int = 0
    b_lo: int = 0
    fork_id: int | None = None


@dataclass
class _CellResult:
    tables: dict[str, int] = field(default_factory=dict)
    orgs: dict[int, dict[str, int]] = field(default_factory=dict)


class _Writer:
    """Writes one cell's rows inside one open transaction."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int, scale: Scale, orgs: int) -> None:
        self.conn = conn
        self.seed = seed
        self.scale = scale
        self.orgs = orgs
        self.result = _CellResult()
        self.ids: dict[int, _OrgIds] = {}

    def _run(self, query: str, owner: int | None, table: str, **params: Any) -> int:
        values: dict[str, Any] = {"uni": UNICODE}
        for key, value in params.items():
            is_int = isinstance(value, int) and not isinstance(value, bool)
            values[key] = Int8(value) if is_int else value
        cur = self.conn.execute(query.encode(), values)
        rows = max(cur.rowcount, 0)
        self.result.tables[table] = self.result.tables.get(table, 0) + rows
        if owner is not None:
            per = self.result.orgs.setdefault(owner, {})
            per[table] = per.get(table, 0) + rows
        return rows

    def _reserve(self, table: str, n: int) -> int:
        """Allocate ``n`` consecutive ids from the table's sequence; returns the first."""
        row = self.conn.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [f"public.{table}"]
        ).fetchone()
        assert row is not None
        lo = int(row[0])
        if n > 1:
            self.conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                [f"public.{table}", Int8(lo + n - 1)],
            )
        return lo

    def prepare(self) -> None:
        self.conn.execute(_HELPERS.encode())

    def cluster_wide(self) -> None:
        s = self.seed
        self._run(_USERS, None, "users", n=self.scale.users, s=_salt(s, 0, "users"))
        self._run(_LFS_OBJECTS, None, "lfs_objects", n=self.scale.lfs_objects,
                  s=_salt(s, 0, "lfs_objects"))

    def organization(self, org: int, upstream: _OrgIds | None, fork: bool = False) -> None:
        """``fork``: the organization forks a project: ``upstream``'s (another organization's), or
        its own first project when ``upstream`` is None."""
        c = org_counts(org, self.scale.name, self.orgs).counts
        seed, users = self.seed, self.scale.users
        ids = _OrgIds()
        self.ids[org] = ids

        def salt(table: str) -> int:
            return _salt(seed, org, table)

        def run(query: str, table: str, n: int, **params: Any) -> None:
            if n <= 0:
                return
            lo = self._reserve(table, n) if table not in _NO_SEQUENCE else 0
            self._run(query, org, table, lo=lo, n=n, org=org, s=salt(table), users=users,
                      **params)
            first[table] = lo

        first: dict[str, int] = {}
        self._run(_ORGANIZATION, org, "organizations", org=org, s=salt("organizations"))

        g, sg, un = c["groups"], c["subgroups"], c["user_namespaces"]
        ns = g + sg + un
        run(_NAMESPACES, "namespaces", ns, g=g, sg=sg, un=un, orgs=self.orgs,
            deep=org_shape(org).deep_groups)
        ids.ns_lo = first["namespaces"]
        run(_NAMESPACE_ROUTES, "routes", ns)

        p = c["projects"]
        fork = fork or upstream is not None
        pt = p + (1 if fork else 0)
        run(_PROJECTS, "projects", pt, p=p, ns=ns, ns_lo=ids.ns_lo,
            upstream=upstream.p_lo if upstream else None)
        ids.p_lo = first["projects"]
        if fork:
            ids.fork_id = ids.p_lo + p
        common = {"p": p, "p_lo": ids.p_lo, "ns_lo": ids.ns_lo, "groups": g + sg}
        run(_PROJECT_ROUTES, "routes", pt, pt=pt, p_lo=ids.p_lo)
        run(_PROJECT_STATISTICS, "project_statistics", pt, pt=pt, p_lo=ids.p_lo)

        nl = c["project_labels"]
        run(_LABELS, "labels", nl + c["group_labels"], nl=nl, **common)
        ids.l_lo = first["labels"]
        run(_MEMBERS, "members", c["members"], **common)
        per = c["project_authorizations"] // p
        run(_PROJECT_AUTHORIZATIONS, "project_authorizations", per * p, per=per, **common)

        n_i, n_m = c["issues"], c["merge_requests"]
        run(_ISSUES, "issues", n_i, **common)
        ids.i_lo = first["issues"]
        run(_MERGE_REQUESTS, "merge_requests", n_m, **common)
        ids.m_lo = first["merge_requests"]
        work = dict(common, i=n_i, m=n_m, i_lo=ids.i_lo, m_lo=ids.m_lo,
                    s_issue=salt("issues"), s_mr=salt("merge_requests"))
        run(_NOTES, "notes", c["notes"], **work)
        run(_LABEL_LINKS, "label_links", c["label_links"], nl=nl, l_lo=ids.l_lo, **work)

        n_pipe = c["ci_pipelines"]
        run(_CI_PIPELINES, "ci_pipelines", n_pipe, **common)
        ids.pipe_lo = first["ci_pipelines"]
        ci = dict(common, np=n_pipe, pipe_lo=ids.pipe_lo, s_pipe=salt("ci_pipelines"))
        run(_CI_BUILDS, "p_ci_builds", c["p_ci_builds"], **ci)
        ids.b_lo = first["p_ci_builds"]
        run(_CI_JOB_ARTIFACTS, "ci_job_artifacts", c["ci_job_artifacts"], nb=c["p_ci_builds"],
            b_lo=ids.b_lo, **ci)
        run(_LFS_OBJECTS_PROJECTS, "lfs_objects_projects", c["lfs_objects_projects"],
            lfs=self.scale.lfs_objects, **common)
        run(_WEB_HOOK_LOGS, "web_hook_logs_archive", c["web_hook_logs_archive"], **common)

        if ids.fork_id is not None:
            # These merge requests belong to the upstream project's organization (their target).
            n = c["cross_org_merge_requests"]
            lo = self._reserve("merge_requests", n)
            owner, upstream_id = (1, upstream.p_lo) if upstream is not None else (org, ids.p_lo)
            self._run(_CROSS_ORG_MERGE_REQUESTS, owner, "merge_requests", lo=lo, n=n, org=org,
                      s=salt("merge_requests") + 100, users=users, upstream=upstream_id,
                      fork=ids.fork_id)


_NO_SEQUENCE = {"project_statistics", "project_authorizations", "web_hook_logs_archive",
                "organizations"}


_FIXTURE_TRIGGERS = (("p_ci_builds", "assign_p_ci_builds_id_value"),
                     ("issues", "bump_issues_created_counter"))


def _fast_load_if_allowed(conn: psycopg.Connection[Any], cell: str) -> list[str]:
    """When we are superuser and the cell is empty: skip foreign-key triggers for the seeding
    transaction (the data is consistent by construction; tests check every FK afterwards) and
    drop the plain secondary indexes, to be rebuilt by :func:`_rebuild_indexes` after the load
    (a sorted build is much cheaper than row-by-row maintenance). Returns the index definitions
    to rebuild; when not allowed, every row is checked and indexed as usual and only the
    fixture's triggers are switched off (the statements returned switch them back on)."""
    try:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            # The fixture's triggers would rewrite the seeded ids (assign_p_ci_builds_id_value)
            # and count the seeded issues: off for this transaction (the seeding role owns the
            # schema it installed), back on before the commit.
            for table, trigger in _FIXTURE_TRIGGERS:
                conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                    sql.Identifier("public", table), sql.Identifier(trigger)))
            return [sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(
                sql.Identifier("public", table), sql.Identifier(trigger)).as_string(conn)
                for table, trigger in _FIXTURE_TRIGGERS]
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("SET LOCAL maintenance_work_mem = '128MB'")
        indexes = conn.execute(
            "SELECT ic.relname, pg_get_indexdef(i.indexrelid), c.relkind = 'p'"
            " FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indrelid"
            " JOIN pg_class ic ON ic.oid = i.indexrelid"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
            " AND c.relname = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid)"
            " ORDER BY ic.relname",
            [list(ORG_TABLES)],
        ).fetchall()
        definitions = []
        for name, definition, partitioned in indexes:
            if partitioned:  # recreate on the parent *and* its partitions
                definition = definition.replace(" ON ONLY ", " ON ", 1)
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("public", name)))
            definitions.append(str(definition))
        return definitions
    except psycopg.Error as exc:
        raise translate(exc, cell=cell, what="prepare the seeding transaction") from exc


def _rebuild_indexes(conn: psycopg.Connection[Any], definitions: list[str]) -> None:
    for definition in definitions:
        # Definitions come from pg_get_indexdef() of the same database.
        conn.execute(sql.SQL(definition))


def _seed_cell(
    conn: psycopg.Connection[Any], cell: str, org_ids: list[int], seed: int, scale: Scale,
    orgs: int, rebuild: list[str], cross_org_forks: bool = False,
) -> _CellResult:
    writer = _Writer(conn, seed, scale, orgs)
    try:
        writer.prepare()
        writer.cluster_wide()
        for org in org_ids:
            # Every other organization of org 1's cell forks a project: by default its own (a fork
            # in another organization leaves merge_requests.source_project_id dangling on the
            # target of a move, which the FK check refuses); org 1's with cross_org_forks.
            forks = org != 1 and org >= 3
            upstream = writer.ids.get(1) if forks and cross_org_forks else None
            writer.organization(org, upstream, fork=forks)
        _rebuild_indexes(conn, rebuild)
    except psycopg.Error as exc:
        raise translate(exc, cell=cell, what="seed fixture data") from exc
    return writer.result


def seed(
    cell_dsns: Mapping[str, str], *, orgs: int = 3, scale: str = "small", seed: int = 42,
    analyze: bool = True, cross_org_forks: bool = False,
) -> SeedReport:
    """Seed fixture data: cluster-wide rows into every cell, each organization into its home cell.
    ``cross_org_forks``: organizations 3+ fork a project of organization 1 (merge requests across
    organizations) instead of one of their own.

    Refuses (``PreflightFailed``) when a cell already holds organizations or users. All cells are
    written in parallel and committed together once every cell succeeded.
    """
    sc = scale_named(scale)
    if orgs < 1:
        raise BadInput(f"--orgs {orgs} is not positive", fix="seed at least one organization")
    if not cell_dsns:
        raise BadInput("no cells to seed", fix="configure at least one cell")
    names = sorted(cell_dsns, key=lambda n: (cell_number(n), n))
    homes = {org: org_home(org, names) for org in range(1, orgs + 1)}
    started = time.perf_counter()

    for name in names:
        install_schema(cell_dsns[name], cell_number(name), cell=name)

    conns: dict[str, psycopg.Connection[Any]] = {}
    rebuild: dict[str, list[str]] = {}
    try:
        for name in names:
            conn = connect(cell_dsns[name], cell=name, application_name=APP, lock_timeout_s=30)
            conns[name] = conn
            try:
                conn.execute(
                    "LOCK TABLE public.organizations, public.users IN SHARE ROW EXCLUSIVE MODE"
                )
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM public.organizations),"
                    " (SELECT count(*) FROM public.users)"
                ).fetchone()
            except psycopg.Error as exc:
                raise translate(exc, cell=name, what="check the cell is empty") from exc
            if row and not (row[0] or row[1]):
                rebuild[name] = _fast_load_if_allowed(conn, name)
            if row and (row[0] or row[1]):
                raise PreflightFailed(
                    f"cell {name!r} is already seeded ({row[0]} organizations, {row[1]} users)",
                    fix="seed into fresh databases: recreate the sandbox (`orgmove sandbox down`"
                    " then `orgmove sandbox up`) or drop and recreate the cell's database",
                )
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="seed") as pool:
            futures = {
                name: pool.submit(
                    _seed_cell, conns[name], name,
                    [o for o in range(1, orgs + 1) if homes[o] == name], seed, sc, orgs,
                    rebuild.get(name, []), cross_org_forks,
                )
                for name in names
            }
            results = {name: fut.result() for name, fut in futures.items()}
        for name in names:
            try:
                conns[name].commit()
            except psycopg.Error as exc:
                raise translate(exc, cell=name, what="commit the seed") from exc
    finally:
        for conn in conns.values():
            conn.close()

    if analyze:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(lambda n: _analyze(cell_dsns[n], n), names))

    seconds = time.perf_counter() - started
    org_reports = []
    for org in range(1, orgs + 1):
        tables = dict(sorted(results[homes[org]].orgs.get(org, {}).items()))
        org_reports.append(OrgSeed(id=org, cell=homes[org], rows=sum(tables.values()),
                                   tables=tables))
    rows = {name: dict(sorted(results[name].tables.items())) for name in names}
    total = sum(sum(t.values()) for t in rows.values())
    return SeedReport(
        scale=scale, seed=seed, orgs=org_reports, rows=rows, total_rows=total,
        seconds=round(seconds, 3), rows_per_s=round(total / seconds, 1) if seconds > 0 else 0.0,
    )


def _analyze(dsn: str, cell: str) -> None:
    try:
        with connect(dsn, cell=cell, application_name=APP, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ANALYZE {}").format(
                    sql.SQL(", ").join(sql.Identifier("public", t) for t in ALL_TABLES)
                )
            )
    except psycopg.Error as exc:
        raise translate(exc, cell=cell, what="analyze the fixture tables") from exc


__all__ = [
    "ALL_TABLES",
    "ID_RANGE",
    "UNICODE",
    "OrgCounts",
    "CELL_LOCAL_TABLES",
    "CLUSTER_WIDE_TABLES",
    "ORG_TABLES",
    "SCALES",
    "OrgSeed",
    "SeedReport",
    "cell_number",
    "install_schema",
    "org_counts",
    "org_home",
    "seed",
]
