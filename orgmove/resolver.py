"""Resolution of the names a rules file uses (tables, ``table(column)`` references) against the
source catalog. Pure, no database."""

from __future__ import annotations

from orgmove.catalog import Catalog, Table
from orgmove.errors import RulesError
from orgmove.rules import Rules, parse_ref


def display(table: str) -> str:
    """Rules-file name of a table: bare for ``public``, qualified otherwise."""
    return table[len("public."):] if table.startswith("public.") else table


class Resolver:
    """Rule names to catalog tables and columns; raises :class:`RulesError` naming the rule."""

    def __init__(self, catalog: Catalog, rules: Rules):
        self.catalog = catalog
        self.rules = rules
        self.where = rules.source or "rules"

    def table(self, name: str) -> str | None:
        q = self.catalog.resolve(name)
        return None if q is None else self.catalog.top_parent(q)

    def ref(self, owner: str, column: str, ref_text: str, what: str) -> tuple[str, tuple[str, ...]]:
        ref_name, ref_col = parse_ref(ref_text)
        ref = self.table(ref_name)
        if ref is None:
            raise RulesError(
                f"{self.where}: {what} {display(owner)}.{column} points at table {ref_name}, "
                "which does not exist in the source database",
                fix=f"correct the table name of {display(owner)}.{column} in the rules",
            )
        t = self.catalog.tables[ref]
        if ref_col is not None:
            if t.column(ref_col) is None:
                raise RulesError(
                    f"{self.where}: {what} {display(owner)}.{column} points at column "
                    f"{ref_col} of {ref}, which has no such column",
                    fix="correct the column name",
                )
            return ref, (ref_col,)
        if len(t.primary_key) != 1:
            raise RulesError(
                f"{self.where}: {what} {display(owner)}.{column} points at {ref}, which has "
                f"no single-column primary key",
                fix=f"name the referenced column: `{display(ref)}(column)`",
            )
        return ref, (t.primary_key[0],)

    def column(self, owner: Table, column: str, what: str) -> None:
        if owner.column(column) is None:
            raise RulesError(
                f"{self.where}: {what} names column {column} of {owner.qualified}, which has no "
                "such column",
                fix=f"correct the column name in the rule of {display(owner.qualified)}",
            )

