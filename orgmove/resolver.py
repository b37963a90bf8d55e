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
        if len(t.primary_key) == 1:
            return ref, (t.primary_key[0],)
        target = self.referenced_column(owner, column, t)
        if target is None:
            pk = ", ".join(t.primary_key) or "none"
            raise RulesError(
                f"{self.where}: {what} {display(owner)}.{column} points at {ref}, whose primary "
                f"key ({pk}) does not say which column {column} holds",
                fix=f"name the referenced column: `{display(ref)}(column)`",
            )
        return ref, (target,)

    def referenced_column(self, owner: str, column: str, ref: Table) -> str | None:
        """The column of ``ref`` that ``owner.column`` holds when ``ref`` has no single-column
        primary key (a composite key, or a partitioned table whose key includes the partition
        key): the column a foreign key maps it to; else a key column of the same name; else the only
        key column that is not a partition column (``notes(id, partition_id)``: ``id``); else
        ``id``.
        A semi-join on that one column is a correct row filter even where it is not unique."""
        t = self.catalog.tables.get(owner)
        for fk in t.foreign_keys if t is not None else []:
            if column in fk.columns and self.catalog.top_parent(fk.ref_table) == ref.qualified:
                return fk.ref_columns[fk.columns.index(column)]
        keys = list(ref.primary_key) or next(
            (list(u.columns) for u in ref.unique_keys if len(u.columns) >= 1), []
        )
        if ref.column(column) is not None and column in keys:
            return column
        own = [c for c in keys if "partition" not in c]
        if len(own) == 1:
            return own[0]
        if ref.column("id") is not None and ("id" in keys or not keys):
            return "id"
        return None

    def column(self, owner: Table, column: str, what: str) -> None:
        if owner.column(column) is None:
            raise RulesError(
                f"{self.where}: {what} names column {column} of {owner.qualified}, which has no "
                "such column",
                fix=f"correct the column name in the rule of {display(owner.qualified)}",
            )

