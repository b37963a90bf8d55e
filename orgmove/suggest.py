"""Suggested rules for tables the rules leave unclassified, inferred from column names and
observed polymorphic type values. Never applied by a plan: they feed ``plan --suggest-rules``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from orgmove.catalog import Catalog
from orgmove.graph import Graph
from orgmove.resolver import display
from orgmove.rules import Polymorphic, TableRule

ALIASES = {
    "project": "projects",
    "namespace": "namespaces",
    "group": "namespaces",
    "organization": "organizations",
    "org": "organizations",
}


def plural(word: str) -> str:
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def class_to_table(type_value: str) -> str:
    """``MergeRequest`` -> ``merge_requests``; ``Ci::Pipeline`` -> ``ci_pipelines``."""
    base = type_value.replace("::", "_")
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", base).lower()
    if snake in ALIASES:
        return ALIASES[snake]
    return plural(snake)


def _named_target(catalog: Catalog, column: str) -> str | None:
    if not column.endswith("_id"):
        return None
    base = column[:-3]
    names = []
    for alias, table in ALIASES.items():
        if base == alias or base.endswith("_" + alias):
            names.append(table)
    names += [plural(base), "p_" + plural(base)]
    for n in names:
        q = catalog.resolve(n)
        if q is not None:
            return catalog.top_parent(q)
    # pipeline_id -> ci_pipelines: a prefixed table of that name, when there is only one.
    suffix = "_" + plural(base)
    found = {catalog.top_parent(q) for q, t in catalog.tables.items() if t.name.endswith(suffix)}
    return found.pop() if len(found) == 1 else None


@dataclass
class Suggestion:
    table: str
    rule: TableRule | None = None
    list_kind: str | None = None
    text: str = ""


def suggest(
    catalog: Catalog,
    graph: Graph,
    table: str,
    type_values: dict[str, dict[str, list[str]]] | None = None,
) -> Suggestion:
    """A rule for an unclassified table, inferred from column names (never applied by a plan)."""
    t = catalog.tables[table]
    org = {q for q, n in graph.nodes.items() if n.classification in ("org", "root")}
    observed = (type_values or {}).get(table, {})
    # Polymorphic pairs X_type + X_id with observed types that map to org tables.
    for col in t.columns:
        if not col.name.endswith("_type"):
            continue
        id_col = col.name[: -len("_type")] + "_id"
        if t.column(id_col) is None:
            continue
        types: dict[str, str] = {}
        for value in observed.get(col.name, []):
            target = catalog.resolve(class_to_table(value))
            if target is not None and catalog.top_parent(target) in org:
                types[value] = display(catalog.top_parent(target))
        if types and len(types) == len(observed.get(col.name, [])):
            rule = TableRule(polymorphic=[Polymorphic(
                type_column=col.name, id_column=id_col, types=types
            )])
            pairs = ", ".join(f"{k} -> {v}" for k, v in types.items())
            return Suggestion(table, rule=rule, text=(
                f"polymorphic {col.name}/{id_col} ({pairs}), from the type values in the table"
            ))
    scored = []
    for col in t.columns:
        target = _named_target(catalog, col.name)
        if target is None or target == table or target not in org:
            continue
        depth = graph.nodes[target].depth
        scored.append((not col.not_null, depth, col.name, target))
    if scored:
        scored.sort()
        best = scored[0]
        picked = [best] if not best[0] else [s for s in scored if s[0]]
        key = {s[2]: display(s[3]) for s in picked}
        text = " or ".join(f"{c} -> {v}" for c, v in key.items())
        return Suggestion(table, rule=TableRule(sharding_key=key), text=(
            f"sharding_key {text} (inferred from the column name; check it)"
        ))
    referrers = sorted({
        q for q in org
        for fk in catalog.tables[q].foreign_keys
        if catalog.top_parent(fk.ref_table) == table
    })
    if referrers:
        return Suggestion(table, list_kind="cluster_wide", text=(
            f"cluster_wide: organization tables reference it ({', '.join(referrers)}); "
            "if every Cell holds the same rows"
        ))
    return Suggestion(table, text=(
        "no owner could be inferred: add a sharding_key, or list it under cluster_wide, "
        "ignored or cell_local"
    ))
