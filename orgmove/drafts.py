"""Complete rule drafts (``orgmove plan --suggest-rules``): every base table of the source
classified, each uncertain choice under a ``# review:`` comment saying why. Pure: catalog, rules
and observed polymorphic type values in, YAML out. A plan never applies a draft by itself.

In order:

1. framework bookkeeping tables (``schema_migrations``, ``ar_internal_metadata``,
   ``django_migrations``, ``_prisma_migrations``, ``goose_db_version``, ...): ``cell_local``
   (every Cell runs its own migrations); decided;
2. suggestions from names and observed type values (:func:`orgmove.suggest.suggest`), round after
   round, each one tried before it is kept: a sharding key from a column name, a polymorphic pair
   from its observed types; review;
3. reverse-owned tables: no link of their own, but exactly one organization table points at them
   with an optional or unique column (``projects.avatar_id -> files``; a NOT NULL column that
   many rows share, as in a join table, means a shared row): owned through that foreign key, which then orders the copy
   the other way (``ignore_fks`` on the referrer); review;
4. what is left: ``cluster_wide`` when organization tables reference it or its foreign keys lead
   only to cluster-wide tables, else ``cell_local``; review, with polymorphic pairs whose types
   could not be mapped named.

Tables classified by the graph from foreign keys and the given rules are decided and not written.
Empty tables (nothing to learn from) are flagged in the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orgmove.catalog import Catalog
from orgmove.errors import OrgmoveError
from orgmove.graph import Graph, analyze
from orgmove.resolver import display
from orgmove.rules import Rules, TableRule, dump_rules
from orgmove.suggest import suggest

# Tables that migration frameworks keep: per Cell, never an organization's.
BOOKKEEPING = frozenset({
    "schema_migrations", "ar_internal_metadata", "django_migrations", "_prisma_migrations",
    "goose_db_version", "flyway_schema_history", "databasechangelog", "databasechangeloglock",
    "knex_migrations", "knex_migrations_lock", "alembic_version", "__efmigrationshistory",
    "typeorm_metadata", "gorp_migrations", "_sqlx_migrations", "schema_version",
    "migrations", "sequelizemeta", "doctrine_migration_versions", "act_ge_property",
    "flw_ev_databasechangelog", "flw_ev_databasechangeloglock",
})
ROUNDS = 20

TypeValues = dict[str, dict[str, list[str]]]


@dataclass
class Draft:
    rules: Rules
    base: str
    decided: int = 0
    review: dict[str, str] = field(default_factory=dict)  # rules-file name -> why
    notes: dict[str, str] = field(default_factory=dict)  # decided by the draft -> why
    empty: list[str] = field(default_factory=list)

    def text(self) -> str:
        header = [
            "orgmove sharding rules: draft from `orgmove plan --suggest-rules` (review before use).",
            f"Based on {self.base}.",
            f"{self.decided} tables decided, {len(self.review)} to review "
            "(each marked `# review:` below; resolve it, then delete the comment).",
        ]
        if self.notes:
            header.append("Decided by the draft:")
            header += [f"  {name}: {why}" for name, why in sorted(self.notes.items())]
        if self.empty:
            header.append("Empty tables (classified from the schema alone; check them): "
                          + ", ".join(self.empty))
        return dump_rules(self.rules, header="\n".join(header), comments={
            name: f"review: {why}" for name, why in self.review.items()})


def draft_rules(catalog: Catalog, rules: Rules, type_values: TypeValues | None = None) -> str:
    return build_draft(catalog, rules, type_values).text()


def build_draft(catalog: Catalog, rules: Rules, type_values: TypeValues | None = None) -> Draft:
    merged = rules.model_copy(deep=True)
    draft = Draft(merged, rules.source or "the default rules")
    graph = analyze(catalog, merged)
    for q in graph.unclassified:
        if catalog.tables[q].name.lower() in BOOKKEEPING:
            merged.cell_local.append(display(q))
            draft.notes[display(q)] = "cell_local: framework bookkeeping (migrations), per Cell"
    for _ in range(ROUNDS):
        graph = analyze(catalog, merged)
        if not graph.unclassified:
            break
        if not (_apply_suggestions(catalog, graph, draft, type_values)
                or _apply_reverse_owned(catalog, graph, draft)):
            break
    graph = analyze(catalog, merged)
    left = list(graph.unclassified)
    while left:
        # Referenced tables first, then tables whose links lead into what is cluster-wide by
        # now (users, then user_links -> users), then the rest.
        placed = [q for q in left if _place_leftover(catalog, graph, draft, q, final=False)]
        if not placed:
            for q in left:
                _place_leftover(catalog, graph, draft, q, final=True)
            break
        left = [q for q in left if q not in placed]
    graph = analyze(catalog, merged)
    for cycle, links in zip(graph.cycles, graph.cycle_links, strict=True):
        for q in cycle:
            draft.review.setdefault(display(q), "in a dependency cycle ("
                                    + "; ".join(links or cycle) + "): list one optional foreign "
                                    "key under ignore_fks")
    base_tables = [q for q, t in catalog.tables.items() if t.partition_of is None]
    draft.decided = sum(1 for q in base_tables if display(q) not in draft.review)
    draft.empty = sorted(display(q) for q in base_tables
                         if catalog.tables[q].est_bytes == 0 and catalog.tables[q].est_rows <= 0)
    return draft


def _fits(catalog: Catalog, rules: Rules) -> str:
    """'' when the rules fit the schema, else why not."""
    try:
        analyze(catalog, rules)
    except OrgmoveError as exc:
        return exc.message
    return ""


def _apply_suggestions(
    catalog: Catalog, graph: Graph, draft: Draft, type_values: TypeValues | None
) -> bool:
    changed = False
    merged = draft.rules
    for q in graph.unclassified:
        s = suggest(catalog, graph, q, type_values)
        name = display(q)
        if s.rule is None:
            continue
        trial = merged.model_copy(deep=True)
        trial.tables[name] = _merge_rule(trial.tables.get(name), s.rule)
        problem = _fits(catalog, trial)
        if problem:
            draft.review[name] = f"the suggestion ({s.text}) does not fit: {problem}"
            continue
        merged.tables[name] = trial.tables[name]
        draft.review[name] = s.text
        changed = True
    return changed


def _apply_reverse_owned(catalog: Catalog, graph: Graph, draft: Draft) -> bool:
    org = {q for q, n in graph.nodes.items() if n.classification in ("org", "root")}
    merged = draft.rules
    for q in graph.unclassified:
        t = catalog.tables[q]
        referrers = [
            (r, fk) for r in sorted(org) for fk in catalog.tables[r].foreign_keys
            if catalog.top_parent(fk.ref_table) == q and len(fk.columns) == 1
        ]
        if len(referrers) != 1 or t.column(referrers[0][1].ref_columns[0]) is None:
            continue
        r, fk = referrers[0]
        if not _optional_or_unique(catalog, r, fk.columns[0]):
            continue  # many NOT NULL references to one row (a join table): shared, not owned
        trial = merged.model_copy(deep=True)
        name, ref_name = display(q), display(r)
        trial.tables[name] = _merge_rule(trial.tables.get(name), TableRule(
            sharding_key={fk.ref_columns[0]: f"{ref_name}({fk.columns[0]})"}))
        ref_rule = trial.tables.setdefault(ref_name, TableRule())
        if fk.name not in ref_rule.ignore_fks:
            ref_rule.ignore_fks.append(fk.name)
        if _fits(catalog, trial):
            continue
        merged.tables.clear()
        merged.tables.update(trial.tables)
        draft.review[name] = (
            f"owned through {ref_name}.{fk.columns[0]} (the only organization table that "
            f"references it; its foreign key {fk.name} is under ignore_fks so {name} is copied "
            f"after {ref_name}); if several organizations share a row, list it under "
            "cluster_wide instead")
        return True
    return False


def _optional_or_unique(catalog: Catalog, table: str, column: str) -> bool:
    """An optional pointer (``projects.avatar_id``) or a one-to-one one: the row it points at
    is the referrer's own, unlike a NOT NULL column many rows share (``lfs_object_id``)."""
    t = catalog.tables[table]
    col = t.column(column)
    if col is None:
        return False
    unique = any(list(u.columns) == [column] for u in t.unique_keys)
    return unique or not col.not_null


def _place_leftover(catalog: Catalog, graph: Graph, draft: Draft, q: str, *, final: bool) -> bool:
    """Place an unclassified table; with ``final=False`` only when it is clearly cluster-wide."""
    t = catalog.tables[q]
    name = display(q)
    merged = draft.rules
    org = {p for p, n in graph.nodes.items() if n.classification in ("org", "root")}
    cluster = {p for p, n in graph.nodes.items() if n.classification == "cluster_wide"}
    cluster |= {r for c in merged.cluster_wide if (r := catalog.resolve(c)) is not None}
    targets = {catalog.top_parent(fk.ref_table) for fk in t.foreign_keys} - {q}
    referrers = sorted({
        display(p) for p in org for fk in catalog.tables[p].foreign_keys
        if catalog.top_parent(fk.ref_table) == q
    })
    pairs = [c.name for c in t.columns
             if c.name.endswith("_type") and t.column(c.name[:-5] + "_id") is not None]
    poly = ""
    if pairs:
        poly = ("; polymorphic pair(s) " + ", ".join(f"{p}/{p[:-5]}_id" for p in pairs)
                + " with no observed type that maps to an organization table: if they lead to "
                "one, write a polymorphic rule with its types")
    earlier = draft.review.get(name, "")
    earlier = f"; {earlier}" if earlier else ""
    rule = merged.tables.get(name)
    if rule is not None and (rule.sharding_key or rule.polymorphic):
        # The rules' own sharding rule does not reach the root: the reviewer must correct it.
        draft.review[name] = f"its rule does not reach the root: {graph.nodes[q].reason}{earlier}"
        return True
    if referrers:
        merged.cluster_wide.append(name)
        why = (f"cluster_wide: organization tables reference it ({', '.join(referrers)}) and "
               "it has no link to an organization; right if every Cell holds the same rows")
    elif targets and targets <= cluster:
        merged.cluster_wide.append(name)
        why = ("cluster_wide: its foreign keys lead only to cluster-wide tables ("
               + ", ".join(sorted(display(p) for p in targets)) + ")")
    elif final:
        merged.cell_local.append(name)
        why = ("cell_local: no foreign key, sharding rule or column name leads from it to an "
               "organization; per-Cell data unless every Cell must hold the same rows "
               "(cluster_wide) or it belongs to an organization (add a sharding_key)")
    else:
        return False
    draft.review[name] = why + poly + earlier
    return True


def _merge_rule(old: TableRule | None, new: TableRule) -> TableRule:
    if old is None:
        return new
    merged = old.model_copy(deep=True)
    merged.sharding_key.update(new.sharding_key)
    merged.polymorphic.extend(new.polymorphic)
    merged.ignore_fks.extend(c for c in new.ignore_fks if c not in merged.ignore_fks)
    return merged
