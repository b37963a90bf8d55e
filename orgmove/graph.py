"""The organization's table graph: pure, no database.

From the catalog (:mod:`orgmove.catalog`) and the sharding rules (:mod:`orgmove.rules`):

* every table is classified: ``root``, ``org`` (copied), ``cluster_wide``, ``ignored``,
  ``cell_local``, ``partition`` (copied through its partitioned parent) or ``unclassified``;
* every org table gets its *ownership*: the links through which its rows reach the root, and from
  them its row filter as join paths (:class:`orgmove.plan.FilterPath`);
* org tables are ordered parents first; dependency cycles are reported with their tables.

Ownership of a table, in order of precedence:

1. its ``sharding_key`` rule entries (all of them, as alternatives);
2. else its ``polymorphic`` rule links (all types, as alternatives);
3. else its foreign keys to org tables: the cheapest NOT NULL one (fewest hops to the root, then
   fewest rows on the way; so a table with its own ``organization_id`` filters on it directly).
   When every such foreign key is nullable, all of them are alternatives (``labels.project_id``
   or ``labels.group_id``).

The cheapest paths are found with Dijkstra's algorithm over the reversed links, generalized for
tables that need all their alternatives resolved first. Links that are not ownership (other
foreign keys, polymorphic links beside a sharding key, ``references``) only order the steps.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from orgmove.catalog import Catalog, Table
from orgmove.errors import PlanError, RulesError
from orgmove.ordering import sccs, toposort
from orgmove.plan import ClusterWideRef, FilterPath, Hop
from orgmove.resolver import Resolver, display
from orgmove.rules import Polymorphic, Rules, TableRule

Classification = Literal[
    "root", "org", "cluster_wide", "ignored", "cell_local", "partition", "unclassified"
]
DECLARED_KINDS = ("cluster_wide", "ignored", "cell_local")
MAX_PATHS = 64

Cost = tuple[int, int]  # (hops to the root, rows of the tables on the way)


@dataclass(frozen=True)
class Edge:
    """``table(columns)`` points at ``ref_table(ref_columns)`` (for rows of ``type_value``)."""

    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    source: str  # "fk", "sharding_key", "dictionary", "polymorphic", "references"
    not_null: bool = False
    type_column: str | None = None
    type_value: str | None = None
    name: str = ""

    def hop(self) -> Hop:
        return Hop(
            columns=list(self.columns),
            ref_table=self.ref_table,
            ref_columns=list(self.ref_columns),
            type_column=self.type_column,
            type_value=self.type_value,
        )

    def describe(self) -> str:
        cols = ", ".join(self.columns)
        text = f"{self.table}({cols}) -> {self.ref_table}"
        if self.type_value is not None:
            text += f" when {self.type_column} = {self.type_value!r}"
        return text

    def sort_key(self) -> tuple[str, ...]:
        return (*self.columns, self.ref_table, self.type_value or "")


@dataclass
class Node:
    table: str
    classification: Classification
    reason: str = ""
    ownership: list[Edge] = field(default_factory=list)
    paths: list[FilterPath] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    depth: int = 0
    self_referencing: bool = False


@dataclass
class Graph:
    root: str
    root_key: str
    nodes: dict[str, Node]
    order: list[str]  # root and org tables, parents first
    cluster_refs: list[ClusterWideRef]
    unclassified: list[str]
    cycles: list[list[str]]
    cycle_links: list[list[str]]

    def classification(self, table: str) -> Classification:
        return self.nodes[table].classification


@dataclass
class _Options:
    mode: Literal["any", "all"]
    edges: list[Edge]
    partial: str = ""  # why some nullable foreign keys are not followed


# --- analysis -----------------------------------------------------------------------------------


def analyze(catalog: Catalog, rules: Rules) -> Graph:
    """Classify every table, find each org table's ownership paths and order the org tables.

    Raises :class:`RulesError` for rules that do not fit the schema. Unclassified tables and
    dependency cycles are returned (``unclassified``, ``cycles``); :func:`check` raises for them.
    """
    res = Resolver(catalog, rules)
    root = catalog.resolve(rules.root.table)
    if root is None:
        raise RulesError(
            f"the root table {rules.root.table} does not exist in the source database",
            fix="set `root: {table: ..., key: ...}` in the rules to the organizations table",
        )
    root_table = catalog.tables[root]
    if root_table.column(rules.root.key) is None:
        raise RulesError(
            f"the root table {root} has no column {rules.root.key}",
            fix="set `root.key` in the rules to the organization id column",
        )

    declared: dict[str, Classification] = {}
    for kind in DECLARED_KINDS:
        for name in getattr(rules, kind):
            q = catalog.resolve(name)
            if q is None:
                continue  # rules may describe tables this schema version does not have
            if q in declared and declared[q] != kind:
                raise RulesError(
                    f"{res.where}: table {q} is listed both as {declared[q]} and as {kind}",
                    fix="keep it in one list",
                )
            declared[q] = kind  # type: ignore[assignment]
    if root in declared:
        raise RulesError(
            f"{res.where}: the root table {root} is listed as {declared[root]}",
            fix="remove it from that list",
        )

    table_rules: dict[str, TableRule] = {}
    for name, rule in rules.tables.items():
        q = catalog.resolve(name)
        if q is None:
            continue
        if q in declared and (rule.sharding_key or rule.polymorphic):
            raise RulesError(
                f"{res.where}: table {q} has a sharding rule but is listed as {declared[q]}",
                fix="remove one of the two",
            )
        if q in table_rules:
            raise RulesError(f"{res.where}: table {q} has two rules", fix="merge them into one")
        table_rules[q] = rule

    nodes: dict[str, Node] = {}
    candidates: list[str] = []
    for q, t in catalog.tables.items():
        if t.partition_of is not None:
            top = catalog.top_parent(q)
            nodes[q] = Node(q, "partition", reason=f"partition of {top}; copied through it")
        elif q == root:
            nodes[q] = Node(q, "root", reason=f"root: {rules.root.key} = the organization")
        elif q in declared:
            nodes[q] = Node(q, declared[q], reason=f"declared {declared[q]} in {res.where}")
        else:
            candidates.append(q)

    options = {
        q: _ownership_options(catalog, res, q, table_rules.get(q), declared) for q in candidates
    }
    cost, chosen = _dijkstra(catalog, root, options)

    # Ownership paths, built in order of cost (targets are always resolved before their users).
    paths: dict[str, list[FilterPath]] = {root: [FilterPath(hops=[], source="root")]}
    nodes[root].paths = paths[root]
    for q in sorted(chosen, key=lambda x: (cost[x], x)):
        opts = chosen[q]
        table_paths: list[FilterPath] = []
        for edge in sorted(opts.edges, key=Edge.sort_key):
            for p in paths[edge.ref_table]:
                table_paths.append(FilterPath(hops=[edge.hop(), *p.hops], source=edge.source))
        if len(table_paths) > MAX_PATHS:
            raise PlanError(
                f"table {q} has {len(table_paths)} alternative paths to the root",
                fix=f"declare a sharding_key for {display(q)} in the rules",
            )
        paths[q] = table_paths
        how = _describe_ownership(opts, root)
        nodes[q] = Node(
            q, "org", reason=how, ownership=sorted(opts.edges, key=Edge.sort_key),
            paths=table_paths, depth=cost[q][0],
        )

    unclassified = sorted(q for q in candidates if q not in chosen)
    for q in unclassified:
        nodes[q] = Node(q, "unclassified", reason=_why_unreached(q, options[q], chosen, root))

    org = [root, *sorted(chosen)]
    org_set = set(org)
    _dependencies(catalog, nodes, org, org_set, table_rules, res)
    order, cycles, cycle_links = toposort(
        org, {q: nodes[q].depends_on for q in org}, {q: nodes[q].depth for q in org}
    )
    unresolved_cycles = _unresolved_cycles(options, unclassified)
    cycles.extend(unresolved_cycles)
    refs = _cluster_refs(catalog, nodes, org, declared, table_rules, res)
    return Graph(
        root=root,
        root_key=rules.root.key,
        nodes=nodes,
        order=order,
        cluster_refs=refs,
        unclassified=unclassified,
        cycles=cycles,
        cycle_links=cycle_links + [[] for _ in unresolved_cycles],
    )


def _ignored_fk(rule: TableRule | None, fk_name: str, columns: Iterable[str]) -> bool:
    if rule is None or not rule.ignore_fks:
        return False
    return fk_name in rule.ignore_fks or any(c in rule.ignore_fks for c in columns)


def _ownership_options(
    catalog: Catalog,
    res: Resolver,
    q: str,
    rule: TableRule | None,
    declared: dict[str, Classification],
) -> _Options:
    t = catalog.tables[q]
    if rule is not None and rule.sharding_key:
        source = "dictionary" if rule.note.startswith("db/docs") else "sharding_key"
        edges = []
        for column, ref_text in rule.sharding_key.items():
            res.column(t, column, "sharding_key")
            ref, ref_cols = res.ref(q, column, ref_text, "sharding key")
            _check_rule_target(res, q, column, ref, declared)
            col = t.column(column)
            edges.append(Edge(
                q, (column,), ref, ref_cols, source,
                not_null=bool(col and col.not_null), name=f"sharding_key {column}",
            ))
        return _Options("all", edges)
    if rule is not None and rule.polymorphic:
        edges = _polymorphic_edges(res, t, rule.polymorphic)
        for e in edges:
            _check_rule_target(res, q, e.columns[0], e.ref_table, declared)
        return _Options("all", edges)
    not_null: list[Edge] = []
    nullable: list[Edge] = []
    for fk in t.foreign_keys:
        ref = catalog.top_parent(fk.ref_table)
        if ref == q or ref in declared or _ignored_fk(rule, fk.name, fk.columns):
            continue
        cols = [t.column(c) for c in fk.columns]
        nn = all(c is not None and c.not_null for c in cols)
        edge = Edge(q, tuple(fk.columns), ref, tuple(fk.ref_columns), "fk", not_null=nn,
                    name=fk.name)
        (not_null if nn else nullable).append(edge)
    if not_null:
        return _Options("any", not_null)
    return _Options("all", nullable)


def _check_rule_target(
    res: Resolver, q: str, column: str, ref: str, declared: dict[str, Classification]
) -> None:
    if ref in declared:
        raise RulesError(
            f"{res.where}: the sharding key {display(q)}.{column} points at {ref}, which is "
            f"declared {declared[ref]}",
            fix=f"point it at an organization table, or list {display(q)}.{column} under "
            "`references` instead",
        )
    if ref == q:
        raise RulesError(
            f"{res.where}: the sharding key {display(q)}.{column} points at its own table",
            fix="point it at the owning table (e.g. projects or namespaces)",
        )


def _polymorphic_edges(res: Resolver, t: Table, polys: list[Polymorphic]) -> list[Edge]:
    edges = []
    for poly in polys:
        res.column(t, poly.type_column, "polymorphic type_column")
        res.column(t, poly.id_column, "polymorphic id_column")
        col = t.column(poly.id_column)
        for type_value, ref_text in poly.types.items():
            ref, ref_cols = res.ref(t.qualified, poly.id_column, ref_text, "polymorphic link")
            edges.append(Edge(
                t.qualified, (poly.id_column,), ref, ref_cols, "polymorphic",
                not_null=bool(col and col.not_null), type_column=poly.type_column,
                type_value=type_value, name=f"polymorphic {poly.type_column}/{poly.id_column}",
            ))
    return edges


def _dijkstra(
    catalog: Catalog, root: str, options: dict[str, _Options]
) -> tuple[dict[str, Cost], dict[str, _Options]]:
    users: dict[str, list[str]] = {}
    for q, opts in options.items():
        for e in opts.edges:
            users.setdefault(e.ref_table, []).append(q)

    # Any-semantics reachability: nullable FKs to tables that can never be reached are dropped.
    reachable = {root}
    stack = [root]
    while stack:
        p = stack.pop()
        for q in users.get(p, []):
            if q not in reachable:
                reachable.add(q)
                stack.append(q)
    for q, opts in options.items():
        if opts.mode == "all" and all(e.source == "fk" for e in opts.edges):
            kept = [e for e in opts.edges if e.ref_table in reachable]
            if len(kept) != len(opts.edges):
                options[q] = _Options(
                    "all", kept, partial="nullable foreign keys to tables that no link leads "
                    "to from the root are not followed",
                )
    users = {}
    for q, opts in options.items():
        for e in opts.edges:
            users.setdefault(e.ref_table, []).append(q)

    def rows(p: str) -> int:
        return 0 if p == root else max(catalog.tables[p].est_rows, 0)

    cost: dict[str, Cost] = {root: (0, 0)}
    best: dict[str, Cost] = {}
    best_edge: dict[str, Edge] = {}
    final: set[str] = set()
    chosen: dict[str, _Options] = {}
    waiting = {
        q: len({e.ref_table for e in o.edges}) for q, o in options.items() if o.mode == "all"
    }
    heap: list[tuple[Cost, str]] = [((0, 0), root)]

    def push_all(q: str) -> None:
        opts = options[q]
        targets = {e.ref_table for e in opts.edges}
        c = (1 + max(cost[p][0] for p in targets), sum(cost[p][1] + rows(p) for p in targets))
        best[q] = c
        heapq.heappush(heap, (c, q))

    while True:
        while heap:
            c, q = heapq.heappop(heap)
            if q in final:
                continue
            final.add(q)
            cost[q] = c
            if q != root:
                opts = options[q]
                if opts.mode == "any":
                    chosen[q] = _Options("any", [best_edge[q]])
                else:
                    chosen[q] = opts
            for user in dict.fromkeys(users.get(q, [])):
                if user in final:
                    continue
                uo = options[user]
                if uo.mode == "any":
                    for e in uo.edges:
                        if e.ref_table != q:
                            continue
                        cand = (c[0] + 1, c[1] + rows(q))
                        old = best.get(user)
                        if old is None or (cand, e.sort_key()) < (old, best_edge[user].sort_key()):
                            best[user] = cand
                            best_edge[user] = e
                            heapq.heappush(heap, (cand, user))
                else:
                    waiting[user] -= 1
                    if waiting[user] == 0 and uo.edges:
                        push_all(user)
        # Deadlock (nullable foreign keys in a cycle): use the alternatives already resolved.
        stuck = [
            q for q, o in options.items()
            if q not in final and o.mode == "all" and o.edges
            and all(e.source == "fk" for e in o.edges)
            and any(e.ref_table in final for e in o.edges)
        ]
        if not stuck:
            break
        # Break one table at a time: resolving it may unblock the others completely.
        q = min(stuck, key=lambda x: (sum(e.ref_table not in final for e in options[x].edges), x))
        kept = [e for e in options[q].edges if e.ref_table in final]
        options[q] = _Options(
            "all", kept, partial="nullable foreign keys that close a cycle are not followed"
        )
        waiting[q] = 0
        push_all(q)
    return cost, chosen


def _describe_ownership(opts: _Options, root: str) -> str:
    kinds = {e.source for e in opts.edges}
    via = " or ".join(
        f"{','.join(e.columns)}"
        + (f"[{e.type_column}={e.type_value}]" if e.type_value is not None else "")
        + f" -> {e.ref_table}"
        for e in sorted(opts.edges, key=Edge.sort_key)
    )
    label = "/".join(sorted(kinds))
    text = f"org-scoped via {label}: {via}"
    if opts.partial:
        text += f" ({opts.partial})"
    return text


def _why_unreached(q: str, opts: _Options, chosen: dict[str, _Options], root: str) -> str:
    if not opts.edges:
        return "no foreign key or sharding rule leads to an organization table"
    missing = sorted(
        {e.ref_table for e in opts.edges if e.ref_table not in chosen and e.ref_table != root}
    )
    return "its links lead to tables that are not organization-scoped: " + ", ".join(missing)


def _dependencies(
    catalog: Catalog,
    nodes: dict[str, Node],
    org: list[str],
    org_set: set[str],
    table_rules: dict[str, TableRule],
    res: Resolver,
) -> None:
    for q in org:
        t = catalog.tables[q]
        rule = table_rules.get(q)
        deps: set[str] = {e.ref_table for e in nodes[q].ownership}
        for fk in t.foreign_keys:
            ref = catalog.top_parent(fk.ref_table)
            if ref == q:
                nodes[q].self_referencing = True
                continue
            if ref in org_set and not _ignored_fk(rule, fk.name, fk.columns):
                deps.add(ref)
        if rule is not None:
            for e in _polymorphic_edges(res, t, rule.polymorphic):
                if e.ref_table in org_set and e.ref_table != q:
                    deps.add(e.ref_table)
            for column, ref_text in rule.references.items():
                res.column(t, column, "references")
                ref, _ = res.ref(q, column, ref_text, "reference")
                if ref in org_set and ref != q:
                    deps.add(ref)
        deps.discard(q)
        nodes[q].depends_on = sorted(deps)


def _unresolved_cycles(options: dict[str, _Options], unclassified: list[str]) -> list[list[str]]:
    left = set(unclassified)
    deps = {q: [e.ref_table for e in options[q].edges if e.ref_table in left] for q in unclassified}
    return [sorted(scc) for scc in sccs(unclassified, deps) if len(scc) > 1]



def _cluster_refs(
    catalog: Catalog,
    nodes: dict[str, Node],
    org: list[str],
    declared: dict[str, Classification],
    table_rules: dict[str, TableRule],
    res: Resolver,
) -> list[ClusterWideRef]:
    refs: list[ClusterWideRef] = []
    for q in org:
        t = catalog.tables[q]
        rule = table_rules.get(q)
        for fk in t.foreign_keys:
            ref = catalog.top_parent(fk.ref_table)
            if ref in declared and not _ignored_fk(rule, fk.name, fk.columns):
                refs.append(ClusterWideRef(
                    table=q, columns=list(fk.columns), ref_table=ref,
                    ref_columns=list(fk.ref_columns),
                ))
        if rule is not None:
            for column, ref_text in rule.references.items():
                ref, ref_cols = res.ref(q, column, ref_text, "reference")
                if ref in declared:
                    refs.append(ClusterWideRef(
                        table=q, columns=[column], ref_table=ref, ref_columns=list(ref_cols)
                    ))
    refs.sort(key=lambda r: (r.table, r.columns, r.ref_table))
    return refs


# --- errors -------------------------------------------------------------------------------------


def check_cycles(graph: Graph) -> None:
    if not graph.cycles:
        return
    parts = []
    for tables, links in zip(graph.cycles, graph.cycle_links, strict=True):
        text = " <-> ".join(tables)
        if links:
            text += " (" + "; ".join(links) + ")"
        parts.append(text)
    raise PlanError(
        "the tables' dependencies form a cycle, so no copy order puts every parent first: "
        + " | ".join(parts),
        fix="break each cycle in the rules file: list the optional foreign key of one table "
        "under `ignore_fks` (its rows are then copied without waiting for the other table), or "
        "declare the right sharding_key",
        details={"cycles": graph.cycles},
    )
