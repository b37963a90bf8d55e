"""Which streamed row changes belong to the organization being moved (ADR 0010).

The slot decodes every change to the published tables, every organization's. Each plan step's
filter is a set of join paths to the root (``organizations.id = <org>``). A path whose first hop
reaches the root directly (``namespaces.organization_id``) is decided from the row itself. A
longer path (``notes.project_id -> projects -> namespaces -> organizations``) is decided from a
*key set*: the referenced columns of the referenced table's org rows (``projects.id`` of the
org's projects). Key sets are loaded from the target's copied rows when the apply starts (the
target holds exactly the org's rows as of the applied position) and kept current from the stream
itself, in commit order: a project inserted into the org, or updated into it, adds its id before
the notes of the same or a later transaction are judged; one deleted or moved out removes it.

Pure apart from :meth:`OrgFilter.load` (one query per key set on the target).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from orgmove.pgoutput import UNCHANGED_TOAST, ColumnValue
from orgmove.plan import Hop, Plan, Step, filter_condition, table_ident

KeySetId = tuple[str, tuple[str, ...]]  # (referenced table, referenced columns)
Row = Mapping[str, ColumnValue]


@dataclass
class OrgFilter:
    plan: Plan
    steps: dict[str, Step] = field(init=False)
    sets: dict[KeySetId, set[tuple[str, ...]]] = field(init=False)
    # referenced table -> the key sets it feeds (a table may be referenced through several columns)
    _feeds: dict[str, list[KeySetId]] = field(init=False)

    def __post_init__(self) -> None:
        self.steps = {s.table: s for s in self.plan.steps}
        self.sets = {}
        self._feeds = {}
        for step in self.plan.steps:
            for path in step.filter:
                if path.hops and not self._direct(path.hops[0], len(path.hops)):
                    hop = path.hops[0]
                    ks: KeySetId = (hop.ref_table, tuple(hop.ref_columns))
                    if ks not in self.sets:
                        self.sets[ks] = set()
                        self._feeds.setdefault(hop.ref_table, []).append(ks)

    @property
    def org(self) -> str:
        return str(self.plan.org)

    def _direct(self, hop: Hop, hops: int) -> bool:
        root = self.plan.root
        return hops == 1 and hop.ref_table == root.table and hop.ref_columns == [root.key]

    def load(self, conn: psycopg.Connection[Any]) -> None:
        """Seed every key set from the org's rows on ``conn`` (the target)."""
        for (table, columns), keys in self.sets.items():
            keys.clear()
            step = self.steps.get(table)
            cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)
            if step is None:
                if table != self.plan.root.table:
                    continue  # not planned: nothing references it through the stream
                where: sql.Composable = sql.SQL("{}::text = {}").format(
                    sql.Identifier(self.plan.root.key), sql.Literal(self.org))
            else:
                where = filter_condition(step, self.plan.root, self.plan.org)
            query = sql.SQL("SELECT {} FROM {} WHERE {}").format(cols, table_ident(table), where)
            for row in conn.execute(query).fetchall():
                keys.add(tuple(str(v) for v in row))

    # --- deciding --------------------------------------------------------------------------

    def belongs(self, table: str, row: Row) -> bool | None:
        """Does the row belong to the org? None: the row does not carry what the filter needs
        (a column unchanged TOAST or absent, e.g. a key-only old tuple)."""
        step = self.steps.get(table)
        if step is None:
            return False
        unknown = False
        for path in step.filter:
            verdict = self._path(path.hops, row)
            if verdict is True:
                return True
            if verdict is None:
                unknown = True
        return None if unknown else False

    def _path(self, hops: list[Hop], row: Row) -> bool | None:
        if not hops:
            value = row.get(self.plan.root.key, UNCHANGED_TOAST)
            return None if value is UNCHANGED_TOAST else value == self.org
        hop = hops[0]
        if hop.type_column is not None:
            kind = row.get(hop.type_column, UNCHANGED_TOAST)
            if kind is UNCHANGED_TOAST:
                return None
            if kind != hop.type_value:
                return False
        values = [row.get(c, UNCHANGED_TOAST) for c in hop.columns]
        if any(v is UNCHANGED_TOAST for v in values):
            return None
        if any(v is None for v in values):
            return False
        if self._direct(hop, len(hops)):
            return values[0] == self.org
        keys = self.sets[(hop.ref_table, tuple(hop.ref_columns))]
        return tuple(str(v) for v in values) in keys

    # --- keeping key sets current ----------------------------------------------------------

    def feeds(self, table: str) -> bool:
        return table in self._feeds

    def observe(self, table: str, old: Row | None, new: Row | None, new_belongs: bool | None) -> None:
        """A change to ``table`` that was just decided: keep the key sets it feeds current."""
        for ks in self._feeds.get(table, ()):
            columns = ks[1]
            keys = self.sets[ks]
            if old is not None:
                old_key = _key(old, columns)
                if old_key is not None and (new is None or _key(new, columns) != old_key):
                    keys.discard(old_key)
            if new is not None:
                new_key = _key(new, columns)
                if new_key is None:
                    continue
                if new_belongs:
                    keys.add(new_key)
                elif new_belongs is False:
                    keys.discard(new_key)


def _key(row: Row, columns: tuple[str, ...]) -> tuple[str, ...] | None:
    values = [row.get(c, UNCHANGED_TOAST) for c in columns]
    if any(v is UNCHANGED_TOAST or v is None for v in values):
        return None
    return tuple(str(v) for v in values)
