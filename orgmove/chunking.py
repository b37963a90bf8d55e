"""Chunks: key ranges within one table's rows of the organization. Pure SQL composition, no I/O.

A chunk is ``lo <= key < hi`` (``None`` = unbounded) over the step's key columns, compared as a row
value. Boundaries are stored as the keys' text forms and cast back to the key types, so any
orderable key type works (bigint, uuid, text, composite). Text keys are ordered and compared under
``COLLATE "C"`` on both Cells: a chunk must hold the same rows on the source and on the target even
when the two databases have different default collations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from orgmove.plan import RootSpec, Step, cast_type, column_exprs, filter_condition, table_ident

TEXT_TYPES = ("text", "character varying", "varchar", "character", "char", "citext", "name")

KeyValues = tuple[str, ...]


@dataclass(frozen=True)
class KeyRange:
    lo: KeyValues | None  # inclusive
    hi: KeyValues | None  # exclusive

    def to_json(self) -> dict[str, Any]:
        return {"lo": list(self.lo) if self.lo is not None else None,
                "hi": list(self.hi) if self.hi is not None else None}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> KeyRange:
        lo = doc.get("lo")
        hi = doc.get("hi")
        return cls(tuple(lo) if lo is not None else None, tuple(hi) if hi is not None else None)


WHOLE = KeyRange(None, None)


def ranges_from_boundaries(boundaries: Sequence[KeyValues]) -> list[KeyRange]:
    """``[b1, b2, ...]`` -> ``(-inf, b1), [b1, b2), ..., [bn, +inf)``."""
    edges: list[KeyValues | None] = [None, *boundaries, None]
    return [KeyRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def split_range(r: KeyRange, middle: KeyValues) -> tuple[KeyRange, KeyRange]:
    return KeyRange(r.lo, middle), KeyRange(middle, r.hi)


def _is_text(type_name: str) -> bool:
    base = type_name.split("(")[0].strip().lower()
    return base in TEXT_TYPES


def _ordered_row(step: Step, exprs: list[sql.Composable]) -> sql.Composable:
    """One expression per key column, text ones under COLLATE "C"; a row value when composite."""
    parts = [
        sql.SQL('{} COLLATE "C"').format(e) if _is_text(t) else e
        for e, t in zip(exprs, step.key_types, strict=True)
    ]
    return parts[0] if len(parts) == 1 else sql.SQL("ROW({})").format(sql.SQL(", ").join(parts))


def key_expr(step: Step) -> sql.Composable:
    """The step's key as an orderable expression."""
    return _ordered_row(step, [sql.Identifier(c) for c in step.key])


def _bound_expr(step: Step, values: KeyValues) -> sql.Composable:
    return _ordered_row(step, [sql.SQL("{}::{}").format(sql.Literal(v), cast_type(t))
                               for v, t in zip(values, step.key_types, strict=True)])


def range_condition(step: Step, r: KeyRange) -> sql.Composable:
    if not step.key or (r.lo is None and r.hi is None):
        return sql.SQL("TRUE")
    conds: list[sql.Composable] = []
    k = key_expr(step)
    if r.lo is not None:
        conds.append(sql.SQL("{} >= {}").format(k, _bound_expr(step, r.lo)))
    if r.hi is not None:
        conds.append(sql.SQL("{} < {}").format(k, _bound_expr(step, r.hi)))
    return sql.SQL(" AND ").join(conds)


def org_rows_where(step: Step, root: RootSpec, org: Any, r: KeyRange = WHOLE) -> sql.Composable:
    return sql.SQL("{} AND {}").format(filter_condition(step, root, org), range_condition(step, r))


def columns_list(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def select_chunk(step: Step, root: RootSpec, org: Any, r: KeyRange) -> sql.Composable:
    """The chunk's rows, in the step's explicit column order."""
    return sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(column_exprs(step, root, org)), table_ident(step.table),
        org_rows_where(step, root, org, r),
    )


def boundaries_query(step: Step, root: RootSpec, org: Any, chunk_rows: int) -> sql.Composed:
    """Every ``chunk_rows``-th key of the org's rows, in key order, as text."""
    key_cols = sql.SQL(", ").join(sql.Identifier(c) for c in step.key)
    key_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in step.key)
    order = key_expr(step)
    return sql.SQL(
        "SELECT {key_text} FROM (SELECT {key_cols}, row_number() OVER (ORDER BY {order}) AS rn "
        "FROM {table} WHERE {where}) AS numbered "
        "WHERE rn > 1 AND (rn - 1) % {n} = 0 ORDER BY rn"
    ).format(
        key_text=key_text,
        key_cols=key_cols,
        order=order,
        table=table_ident(step.table),
        where=filter_condition(step, root, org),
        n=sql.Literal(chunk_rows),
    )


def single_chunk_only(step: Step) -> bool:
    """Tables whose rows reference each other (self-referencing FKs) are copied in one statement:
    PostgreSQL checks non-deferred foreign keys at the end of each statement, so the order of
    parents and children within one COPY does not matter, but across chunks it would."""
    return not step.key or step.self_referencing or step.table in step.depends_on
