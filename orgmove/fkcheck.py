"""The set-based foreign-key check on the target, after the copy and before the flip.

Writing as a replica (:mod:`orgmove.triggers`) skips the per-row FK triggers on the target, so
the target's foreign keys are checked here instead: for every foreign key declared on a planned
table (to a planned table, a cluster-wide one or any other), ONE anti-join over the org's rows on
the target finds references whose referenced row is missing there. A reference to a row that was
neither moved nor already present on the target (a fork in another organization, a cluster-wide
row that has not reached the Cell) is a dangling reference: exit 3, and the cutover does not flip.

A foreign key that is the step's only ownership path (its filter's single path starts with that
very hop, e.g. ``issues.project_id -> projects``) is not queried: the org's rows on the target are
found THROUGH the referenced table, so every row the check would look at has its referenced row,
and a row whose parent is missing is not found as the org's at all, which the verify (same
filter, both Cells: the counts differ) reports. The cutover checks foreign keys only after its
final verify is clean.

Keys are compared with MATCH SIMPLE semantics (PostgreSQL's default): a reference with a NULL in
any of its columns is not checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from orgmove.catalog import ForeignKey, read_catalog
from orgmove.db import wrap_errors
from orgmove.errors import DanglingReferences
from orgmove.plan import OrgKey, Plan, RootSpec, Step, filter_condition, table_ident

MAX_KEYS = 10


@dataclass
class Dangling:
    table: str
    constraint: str
    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    keys: list[str]  # up to MAX_KEYS missing referenced keys, as "col=value"

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "constraint": self.constraint, "columns": self.columns,
                "ref_table": self.ref_table, "ref_columns": self.ref_columns, "keys": self.keys}


@dataclass
class FkReport:
    checked: int = 0
    implied: int = 0  # ownership FKs that hold by the filter (see the module docstring)
    seconds: float = 0.0
    dangling: list[Dangling] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.dangling

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "implied": self.implied, "seconds": round(self.seconds, 3),
                "clean": self.clean, "dangling": [d.to_json() for d in self.dangling]}


# --- pure ---------------------------------------------------------------------------------------


def anti_join(step: Step, fk: ForeignKey, root: RootSpec, org: OrgKey, limit: int = MAX_KEYS) -> sql.Composed:
    """The distinct referenced keys of the org's rows in ``step`` that ``fk.ref_table`` lacks."""
    x, r = sql.Identifier("orgmove_x"), sql.Identifier("orgmove_r")
    keys = sql.SQL(", ").join(sql.SQL("{}.{}::text").format(x, sql.Identifier(c)) for c in fk.columns)
    not_null = sql.SQL(" AND ").join(
        sql.SQL("{}.{} IS NOT NULL").format(x, sql.Identifier(c)) for c in fk.columns)
    match = sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(r, sql.Identifier(rc), x, sql.Identifier(c))
        for c, rc in zip(fk.columns, fk.ref_columns, strict=True))
    # The filter's columns are unqualified: they resolve to the outer table (orgmove_x).
    return sql.SQL(
        "SELECT DISTINCT {keys} FROM {t} AS {x} WHERE {filter} AND {not_null} "
        "AND NOT EXISTS (SELECT 1 FROM {rt} AS {r} WHERE {match}) LIMIT {limit}"
    ).format(keys=keys, t=table_ident(step.table), x=x, filter=filter_condition(step, root, org),
             not_null=not_null, rt=table_ident(fk.ref_table), r=r, match=match,
             limit=sql.Literal(limit))


def implied_by_filter(step: Step, fk: ForeignKey) -> bool:
    """The step's rows are selected through this very FK (its only filter path starts with it)."""
    if len(step.filter) != 1 or not step.filter[0].hops:
        return False
    hop = step.filter[0].hops[0]
    return (hop.type_column is None and hop.columns == list(fk.columns)
            and hop.ref_table == fk.ref_table and hop.ref_columns == list(fk.ref_columns))


def key_text(columns: list[str], values: tuple[Any, ...]) -> str:
    if len(columns) == 1:
        return f"{columns[0]}={values[0]}"
    return "(" + ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True)) + ")"


def raise_if_dangling(report: FkReport, plan: Plan) -> None:
    if report.clean:
        return
    listed = "; ".join(
        f"{d.table} constraint {d.constraint} ({', '.join(d.columns)}) -> {d.ref_table}: "
        f"{', '.join(d.keys)}" for d in report.dangling)
    raise DanglingReferences(
        f"organization {plan.org}'s rows on cell {plan.to_cell!r} reference rows that are "
        f"neither moved nor present there (dangling foreign keys, first keys): {listed}",
        fix=f"bring the referenced rows to {plan.to_cell!r} (cluster-wide data) or fix the "
        f"references on {plan.from_cell!r} (e.g. a fork in another organization), re-copy, then "
        "cut over; the organization stays on the source, writable",
        details={"dangling": [d.to_json() for d in report.dangling]},
    )


# --- database -----------------------------------------------------------------------------------


def check_foreign_keys(conn: psycopg.Connection[Any], plan: Plan) -> FkReport:
    """One anti-join per foreign key of every planned table, on the target."""
    started = time.monotonic()
    report = FkReport()
    with wrap_errors(plan.to_cell, "reading foreign keys"):
        catalog = read_catalog(conn)
    for step in plan.steps:
        table = catalog.get(step.table)
        if table is None:
            continue
        for fk in table.foreign_keys:
            if catalog.get(fk.ref_table) is None:
                continue
            if implied_by_filter(step, fk):
                report.implied += 1
                continue
            report.checked += 1
            with wrap_errors(plan.to_cell, f"checking foreign key {fk.name} of {step.table}"):
                rows = conn.execute(anti_join(step, fk, plan.root, plan.org)).fetchall()
            if rows:
                report.dangling.append(Dangling(
                    step.table, fk.name, list(fk.columns), fk.ref_table, list(fk.ref_columns),
                    [key_text(fk.ref_columns, tuple(r)) for r in rows]))
    report.seconds = time.monotonic() - started
    return report
