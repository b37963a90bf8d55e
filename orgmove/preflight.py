"""Pre-flight checks: everything that must hold before a move writes anything.

Each check raises the matching :class:`~orgmove.errors.OrgmoveError` (exit code 2) naming the
tables and rows concerned and what to do. They only read: the planner's connections run in
read-only transactions.

* the two Cells are configured, distinct (and reachable: :func:`orgmove.db.connect`);
* the organization exists on the source (:class:`UnknownOrganization`) and, when the Topology
  Service is asked, is owned by the source Cell (:class:`OwnershipError`);
* every planned table exists on the target with compatible columns (:class:`SchemaDrift`);
* no target row has the key of one of the organization's rows (:class:`TargetConflict`);
* every cluster-wide row the organization references exists on the target
  (:class:`PreflightFailed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from orgmove.catalog import Catalog, Table
from orgmove.config import Config
from orgmove.db import wrap_errors
from orgmove.errors import (
    OwnershipError,
    PlanError,
    PreflightFailed,
    SchemaDrift,
    TargetConflict,
    UnknownOrganization,
)
from orgmove.plan import OrgKey, Plan, Step, cast_type, filter_condition, table_ident

BATCH = 10_000
FIRST_OFFENDERS = 5
RANGE_CHECK_TYPES = ("smallint", "integer", "bigint", "uuid", "numeric")


def check_cells(config: Config, from_cell: str, to_cell: str) -> None:
    if from_cell == to_cell:
        raise PlanError(
            f"--from and --to are the same cell ({from_cell!r})",
            fix="move the organization to another cell",
        )
    config.cell_dsn(from_cell)
    config.cell_dsn(to_cell)


def check_org_exists(conn: psycopg.Connection[Any], plan: Plan, cell: str) -> None:
    query = sql.SQL("SELECT 1 FROM {} WHERE {} = {}::{}").format(
        table_ident(plan.root.table), sql.Identifier(plan.root.key), sql.Literal(plan.org),
        cast_type(plan.root.key_type),
    )
    with conn.cursor() as cur:
        cur.execute(query)
        found = cur.fetchone() is not None
    if not found:
        raise UnknownOrganization(
            f"organization {plan.org} does not exist on cell {cell!r} "
            f"(no row in {plan.root.table} with {plan.root.key} = {plan.org})",
            fix="check the organization id and the --from cell (the Topology Service knows "
            "which cell holds it)",
        )


def check_owner(owner_of: Callable[[OrgKey], str | None] | None, plan: Plan) -> None:
    if owner_of is None:
        return
    owner = owner_of(plan.org)
    if owner is not None and owner != plan.from_cell:
        raise OwnershipError(
            f"the Topology Service says organization {plan.org} is owned by cell {owner!r}, "
            f"not {plan.from_cell!r}",
            fix=f"plan the move from {owner!r} (--from {owner}), or finish the move in progress",
        )


# --- target schema ------------------------------------------------------------------------------


def schema_differences(step: Step, source: Table, target: Table | None) -> list[str]:
    """What makes the target table unable to receive the step's rows as copied."""
    q = step.table
    if target is None:
        return [f"{q} is missing on the target"]
    out: list[str] = []
    for name, typ in zip(step.columns, step.column_types, strict=True):
        col = target.column(name)
        if col is None:
            out.append(f"{q}.{name} is missing on the target")
            continue
        if col.type != typ:
            out.append(f"{q}.{name} is {typ} on the source but {col.type} on the target")
        if col.generated:
            out.append(f"{q}.{name} is a generated column on the target but not on the source")
        src_col = source.column(name)
        if col.not_null and src_col is not None and not src_col.not_null:
            out.append(f"{q}.{name} is NOT NULL on the target but nullable on the source")
    for name in step.generated_columns:
        col = target.column(name)
        if col is None:
            out.append(f"{q}.{name} (generated) is missing on the target")
        elif not col.generated:
            out.append(f"{q}.{name} is generated on the source but a plain column on the target")
    copied = set(step.columns) | set(step.generated_columns)
    for col in target.columns:
        if col.name in copied:
            continue
        if col.not_null and col.default is None and not col.identity and not col.generated:
            out.append(
                f"{q}.{col.name} exists only on the target and is NOT NULL without a default"
            )
    if step.key and target.primary_key and target.primary_key != step.key:
        out.append(
            f"{q} has primary key ({', '.join(step.key)}) on the source but "
            f"({', '.join(target.primary_key)}) on the target"
        )
    return out


def check_target_schema(plan: Plan, source: Catalog, target: Catalog) -> None:
    problems: list[str] = []
    for step in plan.steps:
        problems += schema_differences(step, source.tables[step.table], target.get(step.table))
    for ref in plan.cluster_wide_refs:
        t = target.get(ref.ref_table)
        if t is None:
            problems.append(f"{ref.ref_table} (referenced by {ref.table}) is missing on the target")
            continue
        problems += [
            f"{ref.ref_table}.{c} (referenced by {ref.table}) is missing on the target"
            for c in ref.ref_columns if t.column(c) is None
        ]
    if problems:
        shown = problems[:20]
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise SchemaDrift(
            f"the schema of cell {plan.to_cell!r} differs from {plan.from_cell!r} for the planned "
            f"tables: {'; '.join(shown)}{more}",
            fix=f"run the same migrations on both cells (bring {plan.to_cell!r} to the schema "
            f"version of {plan.from_cell!r}), then plan again",
            details={"differences": problems},
        )


# --- key conflicts ------------------------------------------------------------------------------


def _batches(
    conn: psycopg.Connection[Any], query: sql.Composed, size: int = BATCH
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``query`` in batches, through a server-side cursor."""
    with conn.cursor(name="orgmove_preflight") as cur:
        cur.itersize = size
        cur.execute(query)
        while True:
            rows = cur.fetchmany(size)
            if not rows:
                return
            yield rows


def _text_cols(columns: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)


def _unnest(n: int) -> tuple[sql.Composable, sql.Composable]:
    """``unnest(%s::text[], ...) AS u(c0, ...)`` for ``n`` columns of text values."""
    args = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in range(n))
    names = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(n))
    return sql.SQL("unnest({}) AS u({})").format(args, names), names


def _match(columns: list[str], types: list[str], alias: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = u.{}::{}").format(
            sql.Identifier(alias), sql.Identifier(c), sql.Identifier(f"c{i}"), cast_type(t)
        )
        for i, (c, t) in enumerate(zip(columns, types, strict=True))
    )


def _columns_of(rows: list[tuple[Any, ...]], n: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(n)]


def _key_range_clear(
    src: psycopg.Connection[Any], dst: psycopg.Connection[Any], plan: Plan, step: Step
) -> bool:
    """True when no target key lies within the org's key range (so there is no conflict)."""
    if len(step.key) != 1 or step.key_types[0] not in RANGE_CHECK_TYPES:
        return False
    key, typ = step.key[0], step.key_types[0]
    cond = filter_condition(step, plan.root, plan.org)
    with src.cursor() as cur:
        # Order-based bounds, not min()/max(): uuid and other ordered types have no such aggregate.
        cur.execute(sql.SQL(
            "SELECT (SELECT {k}::text FROM {t} WHERE {c} ORDER BY {k} LIMIT 1),"
            " (SELECT {k}::text FROM {t} WHERE {c} ORDER BY {k} DESC LIMIT 1)"
        ).format(k=sql.Identifier(key), t=table_ident(step.table), c=cond))
        row = cur.fetchone()
    if row is None or row[0] is None:
        return True  # the organization has no rows here
    with dst.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT 1 FROM {t} WHERE {k} BETWEEN %s::{ty} AND %s::{ty} LIMIT 1").format(
                t=table_ident(step.table), k=sql.Identifier(key), ty=cast_type(typ)
            ),
            (row[0], row[1]),
        )
        return cur.fetchone() is None


def find_conflicts(
    src: psycopg.Connection[Any], dst: psycopg.Connection[Any], plan: Plan, step: Step,
    limit: int = FIRST_OFFENDERS,
) -> list[str]:
    """Up to ``limit`` keys of the org's rows in ``step`` that the target already holds."""
    cond = filter_condition(step, plan.root, plan.org)
    if not step.key:
        # No key to compare: the target must not hold rows of this organization already.
        with dst.cursor() as cur:
            cur.execute(sql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 1").format(
                table_ident(step.table), cond
            ))
            return ["(rows of this organization; the table has no key)"] if cur.fetchone() else []
    if _key_range_clear(src, dst, plan, step):
        return []
    n = len(step.key)
    unnest, names = _unnest(n)
    probe = sql.SQL("SELECT {names} FROM {unnest} WHERE EXISTS "
                    "(SELECT 1 FROM {t} AS x WHERE {match}) LIMIT {lim}").format(
        names=names, unnest=unnest, t=table_ident(step.table),
        match=_match(step.key, step.key_types, "x"), lim=sql.Literal(limit),
    )
    keys = sql.SQL("SELECT {} FROM {} WHERE {}").format(
        _text_cols(step.key), table_ident(step.table), cond
    )
    found: list[str] = []
    for rows in _batches(src, keys):
        with dst.cursor() as cur:
            cur.execute(probe, _columns_of(rows, n))
            for hit in cur.fetchall():
                found.append(_key_text(step.key, hit))
        if len(found) >= limit:
            break
    return found[:limit]


def _key_text(columns: list[str], values: tuple[Any, ...]) -> str:
    if len(columns) == 1:
        return f"{columns[0]}={values[0]}"
    return "(" + ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True)) + ")"


def check_target_conflicts(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    plan: Plan,
    target: Catalog,
    skip: set[str] | None = None,
) -> None:
    """``skip``: tables where the organization has no rows (known from exact counts)."""
    conflicts: dict[str, list[str]] = {}
    for step in plan.steps:
        t = target.get(step.table)
        if (t is not None and t.est_bytes == 0) or step.table in (skip or set()):
            continue  # the target table is empty, or the organization has no rows there
        with wrap_errors(plan.to_cell, f"checking keys of {step.table}"):
            hits = find_conflicts(src, dst, plan, step)
        if hits:
            conflicts[step.table] = hits
    if conflicts:
        listed = "; ".join(f"{t}: {', '.join(k)}" for t, k in conflicts.items())
        raise TargetConflict(
            f"cell {plan.to_cell!r} already holds rows with the keys of organization "
            f"{plan.org}'s rows (first offenders) in {len(conflicts)} table(s): {listed}",
            fix=f"find out why (a previous move not cleaned up? id ranges of the cells "
            f"overlapping?); remove those rows from {plan.to_cell!r} (e.g. `orgmove rollback` "
            "of an aborted move) before moving",
            details={"conflicts": conflicts},
        )


# --- cluster-wide references --------------------------------------------------------------------


def check_cluster_wide_refs(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    plan: Plan,
    target: Catalog,
    skip: set[str] | None = None,
) -> None:
    """``skip``: tables where the organization has no rows (known from exact counts)."""
    steps = {s.table: s for s in plan.steps}
    missing: dict[str, list[str]] = {}
    for ref in plan.cluster_wide_refs:
        step = steps[ref.table]
        if step.table in (skip or set()):
            continue
        ref_table = target.tables[ref.ref_table]
        types = []
        for c in ref.ref_columns:
            col = ref_table.column(c)
            assert col is not None  # checked by check_target_schema
            types.append(col.type)
        n = len(ref.columns)
        not_null = sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in ref.columns
        )
        values = sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} AND {}").format(
            _text_cols(ref.columns), table_ident(ref.table), not_null,
            filter_condition(step, plan.root, plan.org),
        )
        unnest, names = _unnest(n)
        probe = sql.SQL("SELECT {names} FROM {unnest} WHERE NOT EXISTS "
                        "(SELECT 1 FROM {t} AS x WHERE {match}) LIMIT {lim}").format(
            names=names, unnest=unnest, t=table_ident(ref.ref_table),
            match=_match(ref.ref_columns, types, "x"), lim=sql.Literal(FIRST_OFFENDERS),
        )
        label = f"{ref.ref_table} (referenced by {ref.table}.{','.join(ref.columns)})"
        found: list[str] = []
        with wrap_errors(plan.to_cell, f"checking {label}"):
            for rows in _batches(src, values):
                with dst.cursor() as cur:
                    cur.execute(probe, _columns_of(rows, n))
                    found += [_key_text(ref.ref_columns, hit) for hit in cur.fetchall()]
                if len(found) >= FIRST_OFFENDERS:
                    break
        if found:
            missing[label] = found[:FIRST_OFFENDERS]
    if missing:
        listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in missing.items())
        raise PreflightFailed(
            f"rows of cluster-wide tables that organization {plan.org} references are missing on "
            f"cell {plan.to_cell!r} (first missing): {listed}",
            fix=f"let cluster-wide data (e.g. users) reach {plan.to_cell!r} first (replication "
            "of cluster-wide tables), then plan again",
            details={"missing": missing},
        )


# --- polymorphic type values the rules do not map -----------------------------------------------


def unmapped_type_values(src: psycopg.Connection[Any], plan: Plan, limit: int = 20) -> list[str]:
    """For tables owned only through polymorphic links (e.g. routes.source_type), the type values
    present on the source that no rule maps: such rows belong to no organization by the rules, so
    they would neither move nor be cleaned up. Returned as warnings for the plan's reviewer."""
    warnings: list[str] = []
    for step in plan.steps:
        firsts = [p.hops[0] for p in step.filter if p.hops]
        if not firsts or any(h.type_column is None for h in firsts):
            continue
        by_column: dict[str, set[str]] = {}
        for hop in firsts:
            assert hop.type_column is not None
            by_column.setdefault(hop.type_column, set()).add(str(hop.type_value))
        for column, known in sorted(by_column.items()):
            query = sql.SQL(
                "SELECT {c}::text, count(*) FROM {t} WHERE {c} IS NOT NULL AND NOT ({c}::text = ANY({k})) "
                "GROUP BY 1 ORDER BY 2 DESC LIMIT {n}"
            ).format(c=sql.Identifier(column), t=table_ident(step.table), k=sql.Literal(sorted(known)),
                     n=sql.Literal(limit))
            with wrap_errors(plan.from_cell, f"checking {step.table}.{column}"):
                rows = src.execute(query).fetchall()
            if rows:
                found = ", ".join(f"{v!r} ({n} rows)" for v, n in rows)
                warnings.append(
                    f"{step.table}.{column} has values the rules do not map: {found}; those rows belong to "
                    f"no organization by the rules, so they will not move (map them in the rules' "
                    f"polymorphic types if they do belong to one)")
    return warnings
