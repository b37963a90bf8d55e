"""References that leave the organization: the pre-flight check of :attr:`Plan.org_references`.

A link between two organization tables that is not a row's ownership (GitLab's
``merge_requests.source_project_id`` when the source project is a fork in another organization)
can point at a row that is not moved. Copied as is, such a row breaks the target's foreign key
(or leaves a dangling reference). Before anything is written, every such row is found on the
source, in one anti-join per link:

* policy ``fail`` (the default): :class:`~orgmove.errors.OutsideReferences` (exit 2) naming the
  table, the constraint, the count and up to ten keys, and what to do;
* policy ``nullify``: the plan records every such row's key (``nullified_keys``, shown by the
  plan and the move report); the copy writes NULL there (:func:`orgmove.plan.column_exprs`).

Only reads; runs in the planner's read-only transaction on the source.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from orgmove.db import wrap_errors
from orgmove.errors import OutsideReferences
from orgmove.plan import OrgReference, Plan, Step, filter_condition, table_ident

MAX_KEYS = 10


def outside_rows_query(plan: Plan, step: Step, ref: OrgReference, ref_step: Step) -> sql.Composed:
    """(row key as text, referenced key as text) of the org's rows in ``step`` whose reference
    leads to a row of ``ref.ref_table`` that is not the organization's, in key order."""
    x, r = sql.Identifier("orgmove_x"), sql.Identifier("orgmove_r")
    key_cols = step.key or ref.columns
    row_key = sql.SQL(" || ', ' || ").join(
        sql.SQL("{} || '=' || {}.{}::text").format(sql.Literal(c), x, sql.Identifier(c))
        for c in key_cols)
    ref_key = sql.SQL(" || ', ' || ").join(
        sql.SQL("{}.{}::text").format(x, sql.Identifier(c)) for c in ref.columns)
    not_null = sql.SQL(" AND ").join(
        sql.SQL("{}.{} IS NOT NULL").format(x, sql.Identifier(c)) for c in ref.columns)
    match = sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(r, sql.Identifier(rc), x, sql.Identifier(c))
        for c, rc in zip(ref.columns, ref.ref_columns, strict=True))
    order = sql.SQL(", ").join(sql.SQL("{}.{}").format(x, sql.Identifier(c)) for c in key_cols)
    # Unqualified filter columns resolve to the innermost table: the step's filter to orgmove_x,
    # the referenced table's filter (inside NOT EXISTS) to orgmove_r.
    return sql.SQL(
        "SELECT {row_key}, {ref_key} FROM {t} AS {x} WHERE {filter} AND {not_null} "
        "AND NOT EXISTS (SELECT 1 FROM {rt} AS {r} WHERE {match} AND {ref_filter}) ORDER BY {order}"
    ).format(row_key=row_key, ref_key=ref_key, t=table_ident(step.table), x=x,
             filter=filter_condition(step, plan.root, plan.org), not_null=not_null,
             rt=table_ident(ref.ref_table), r=r, match=match,
             ref_filter=filter_condition(ref_step, plan.root, plan.org), order=order)


def describe(ref: OrgReference) -> str:
    return (f"{ref.table} constraint {ref.constraint} ({', '.join(ref.columns)}) -> "
            f"{ref.ref_table}({', '.join(ref.ref_columns)})")


def check_outside_references(
    src: psycopg.Connection[Any], plan: Plan, skip: set[str] | None = None
) -> None:
    """Fill ``outside_rows`` (and ``nullified_keys`` for ``nullify``) of every org reference;
    raise :class:`OutsideReferences` for those with the policy ``fail``. ``skip``: tables where
    the organization has no rows."""
    steps = {s.table: s for s in plan.steps}
    failing: list[tuple[OrgReference, list[str]]] = []
    for ref in plan.org_references:
        if ref.table in (skip or set()):
            continue
        query = outside_rows_query(plan, steps[ref.table], ref, steps[ref.ref_table])
        with wrap_errors(plan.from_cell, f"checking references of {describe(ref)}"):
            rows = src.execute(query).fetchall()
        ref.outside_rows = len(rows)
        keys = [f"{k} -> {v}" for k, v in rows]
        if ref.policy == "nullify":
            ref.nullified_keys = [str(k) for k, _ in rows]
            if rows:
                plan.warnings.append(
                    f"{describe(ref)}: policy nullify: {len(rows)} row(s) reference outside the "
                    f"organization and get NULL in {', '.join(ref.columns)} on {plan.to_cell!r}: "
                    + ", ".join(keys))
        elif rows:
            failing.append((ref, keys[:MAX_KEYS]))
    if not failing:
        return
    listed = "; ".join(
        f"{describe(ref)}: {ref.outside_rows} row(s), first keys {', '.join(keys)}"
        for ref, keys in failing)
    names = ", ".join(sorted({f"{ref.table.removeprefix('public.')}: "
                              f"{{outside_references: {{{ref.constraint}: nullify}}}}"
                              for ref, _ in failing if not ref.constraint.startswith("references ")}
                             | {f"{ref.table.removeprefix('public.')}: "
                                f"{{outside_references: {{{ref.columns[0]}: nullify}}}}"
                                for ref, _ in failing if ref.constraint.startswith("references ")}))
    raise OutsideReferences(
        f"rows of organization {plan.org} reference rows of another organization, which the move "
        f"would leave behind on {plan.from_cell!r} (nothing was written): {listed}",
        fix="change those rows on the source so they no longer point outside the organization, "
        f"or let the move write NULL there: in the rules, {names} (nullable columns only; the "
        "plan and the move report list every nulled key), then plan again",
        details={"outside_references": [
            {**ref.model_dump(mode="json", exclude={"nullified_keys"}), "keys": keys}
            for ref, keys in failing
        ]},
    )
