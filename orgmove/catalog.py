"""What a Cell's ``pg_catalog`` says about its tables, read in one round trip per kind of fact.

:func:`read_catalog` returns plain dataclasses (no connection inside), so the planner and the graph
work on them without a database. Tables are named ``schema.name`` everywhere (``public.projects``,
``gitlab_partitions_dynamic.ci_builds_100``).

:func:`schema_fingerprint` hashes the shape of a set of tables (columns, types, nullability,
generated columns, primary key). The plan records it for both Cells; ``copy``, ``verify`` and
``cutover`` recompute it to refuse a plan made for another schema.

Everything here only reads: it runs on the source Cell, which the planner never writes to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from orgmove.plan import split_table

# Schemas that never hold application tables. ``orgmove`` holds the mover's own state.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "orgmove")

INTEGER_TYPES = ("smallint", "integer", "bigint")


@dataclass
class Column:
    name: str
    type: str  # format_type()
    not_null: bool = False
    identity: str = ""  # "a" always, "d" by default, "" none
    generated: str = ""  # "s" stored generated column, "" none
    default: str | None = None
    attnum: int = 0


@dataclass
class ForeignKey:
    name: str
    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    deferrable: bool = False
    deferred: bool = False


@dataclass
class UniqueKey:
    name: str
    columns: list[str]
    primary: bool = False


@dataclass
class Table:
    schema: str
    name: str
    kind: str = "r"  # "r" table, "p" partitioned table
    columns: list[Column] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    unique_keys: list[UniqueKey] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    partition_of: str | None = None  # direct parent when this table is a partition
    partitions: list[str] = field(default_factory=list)  # leaf partitions (partitioned tables)
    est_rows: int = 0
    est_bytes: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_partitioned(self) -> bool:
        return self.kind == "p"

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    def chunk_key(self) -> list[str]:
        """The primary key; else the shortest unique key whose columns are all NOT NULL; else []."""
        if self.primary_key:
            return list(self.primary_key)
        candidates = []
        for uk in self.unique_keys:
            cols = [self.column(c) for c in uk.columns]
            if cols and all(c is not None and c.not_null for c in cols):
                candidates.append(uk)
        if not candidates:
            return []
        best = min(candidates, key=lambda u: (len(u.columns), u.name))
        return list(best.columns)


@dataclass
class Catalog:
    tables: dict[str, Table] = field(default_factory=dict)

    def get(self, qualified: str) -> Table | None:
        return self.tables.get(qualified)

    def resolve(self, name: str) -> str | None:
        """``schema.name`` as given, else ``public.name``, else the only table of that name."""
        if name in self.tables:
            return name
        if "." not in name:
            if f"public.{name}" in self.tables:
                return f"public.{name}"
            found = [q for q, t in self.tables.items() if t.name == name]
            if len(found) == 1:
                return found[0]
        return None

    def top_parent(self, qualified: str) -> str:
        """The outermost partitioned table above a partition (itself when not a partition)."""
        seen = set()
        current = qualified
        while True:
            t = self.tables.get(current)
            if t is None or t.partition_of is None or current in seen:
                return current
            seen.add(current)
            current = t.partition_of


# --- reading ----------------------------------------------------------------------------------

_TABLES_SQL = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind::text, c.relispartition,
       c.reltuples::float8, c.relpages::bigint,
       COALESCE(s.n_live_tup, 0)::bigint,
       pg_relation_size(c.oid)::bigint,
       pg_table_size(c.oid)::bigint,
       current_setting('block_size')::bigint
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'p')
  AND n.nspname <> ALL(%(skip)s::text[])
  AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast%%'
"""

_COLUMNS_SQL = """
SELECT a.attrelid::bigint, a.attnum::int, a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, a.attidentity::text, a.attgenerated::text,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname <> ALL(%(skip)s::text[])
ORDER BY a.attrelid, a.attnum
"""

# Unique indexes (with or without a constraint), full and on plain columns only.
_KEYS_SQL = """
SELECT i.indrelid::bigint, ic.relname, i.indisprimary, i.indkey::int2[]
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid
  AND c.relkind IN ('r', 'p') AND n.nspname <> ALL(%(skip)s::text[])
"""

# Foreign keys declared on a table (not the clones PostgreSQL makes for partitions).
_FKS_SQL = """
SELECT con.conrelid::bigint, con.conname, con.conkey::int2[], con.confrelid::bigint,
       con.confkey::int2[], con.condeferrable, con.condeferred
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE con.contype = 'f' AND con.conparentid = 0
  AND n.nspname <> ALL(%(skip)s::text[])
"""

_INHERITS_SQL = """
SELECT i.inhrelid::bigint, i.inhparent::bigint
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE c.relispartition
"""


def read_catalog(conn: psycopg.Connection[Any], *, skip_schemas: Iterable[str] = ()) -> Catalog:
    """Read every table of the database (five queries, whatever the number of tables)."""
    skip = list(SYSTEM_SCHEMAS) + list(skip_schemas)
    params = {"skip": skip}
    by_oid: dict[int, Table] = {}
    raw_stats: dict[int, tuple[float, int, int, int, int, int]] = {}
    with conn.cursor() as cur:
        cur.execute(_TABLES_SQL, params)
        for oid, schema, name, kind, _part, reltuples, pages, live, heap, size, bs in cur.fetchall():
            by_oid[oid] = Table(schema=schema, name=name, kind=kind)
            raw_stats[oid] = (reltuples, pages, live, heap, size, bs)

        attnames: dict[int, dict[int, str]] = {}
        cur.execute(_COLUMNS_SQL, params)
        for relid, attnum, attname, typ, notnull, ident, gen, default in cur.fetchall():
            t = by_oid.get(relid)
            if t is None:
                continue
            t.columns.append(
                Column(
                    name=attname, type=typ, not_null=notnull, identity=ident or "",
                    generated=gen or "", default=default, attnum=attnum,
                )
            )
            attnames.setdefault(relid, {})[attnum] = attname

        cur.execute(_KEYS_SQL, params)
        for relid, idxname, primary, indkey in cur.fetchall():
            t = by_oid.get(relid)
            if t is None or any(k == 0 for k in indkey):
                continue
            cols = [attnames[relid][k] for k in indkey]
            if primary:
                t.primary_key = cols
            t.unique_keys.append(UniqueKey(name=idxname, columns=cols, primary=primary))

        cur.execute(_FKS_SQL, params)
        for relid, conname, conkey, confrelid, confkey, deferrable, deferred in cur.fetchall():
            t = by_oid.get(relid)
            ref = by_oid.get(confrelid)
            if t is None or ref is None:
                continue
            t.foreign_keys.append(
                ForeignKey(
                    name=conname,
                    columns=[attnames[relid][k] for k in conkey],
                    ref_table=ref.qualified,
                    ref_columns=[attnames[confrelid][k] for k in confkey],
                    deferrable=deferrable,
                    deferred=deferred,
                )
            )

        cur.execute(_INHERITS_SQL)
        for child, parent in cur.fetchall():
            if child in by_oid and parent in by_oid:
                by_oid[child].partition_of = by_oid[parent].qualified

    for oid, t in by_oid.items():
        t.unique_keys.sort(key=lambda u: (not u.primary, u.name))
        t.foreign_keys.sort(key=lambda f: f.name)
        if t.kind == "r":
            t.est_rows, t.est_bytes = _estimate(*raw_stats[oid])

    ordered = sorted(by_oid.values(), key=lambda t: t.qualified)
    catalog = Catalog(tables={t.qualified: t for t in ordered})
    # Leaves of each partitioned table (through any number of levels); sizes summed over them.
    for t in catalog.tables.values():
        if t.kind == "r" and t.partition_of is not None:
            above: str | None = t.partition_of
            seen: set[str] = set()
            while above is not None and above not in seen:
                seen.add(above)
                p = catalog.tables[above]
                p.partitions.append(t.qualified)
                p.est_rows += t.est_rows
                p.est_bytes += t.est_bytes
                above = p.partition_of
    for t in catalog.tables.values():
        t.partitions.sort()
    return catalog


def _estimate(
    reltuples: float, relpages: int, live: int, heap: int, size: int, block_size: int
) -> tuple[int, int]:
    """Rows and bytes of one heap table from the statistics, without touching its data.

    ``reltuples`` is -1 for a table never vacuumed or analyzed (PostgreSQL 14+); then the
    statistics collector's live-tuple count is used, and failing that the size on disk at an
    assumed 100 bytes a row. ANALYZE is never run: the source Cell is read-only to the planner.
    An empty main fork (``heap``) means an empty table, whatever its TOAST index weighs.
    """
    if heap <= 0:
        return 0, 0
    if reltuples >= 0 and relpages > 0:
        # Scale the sampled density to the current size, as the PostgreSQL planner does.
        pages_now = max(1, heap // block_size)
        rows = int(reltuples / relpages * pages_now)
    elif reltuples >= 0:
        rows = int(reltuples)
    elif live > 0:
        rows = live
    else:
        rows = max(1, heap // 100)
    return rows, size


# --- fingerprints -----------------------------------------------------------------------------

_FINGERPRINT_SQL = """
SELECT q.schema_name || '.' || q.table_name, a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, a.attgenerated::text, a.attidentity::text,
       COALESCE(a.attnum = ANY(pk.conkey), false)
FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS q(schema_name, table_name)
JOIN pg_namespace n ON n.nspname = q.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = q.table_name
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
"""


def schema_fingerprint(conn: psycopg.Connection[Any], tables: Iterable[str]) -> str:
    """sha256 over the shape of ``tables`` (``schema.name``): every column's name, type,
    nullability, generated and identity kind, primary-key membership. A missing table counts
    too. Column order on disk does not matter (copies name their columns), so it is not hashed.
    """
    names = sorted(set(tables))
    schemas, rels = [], []
    for q in names:
        schema, rel = split_table(q)
        schemas.append(schema)
        rels.append(rel)
    shape: dict[str, list[list[Any]]] = {q: [] for q in names}
    with conn.cursor() as cur:
        cur.execute(_FINGERPRINT_SQL, {"schemas": schemas, "names": rels})
        for qualified, col, typ, notnull, gen, ident, in_pk in cur.fetchall():
            row = [col, typ, notnull, gen or "", ident or "", in_pk]
            shape.setdefault(qualified, []).append(row)
    doc = {q: sorted(cols) if cols else "missing" for q, cols in sorted(shape.items())}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
