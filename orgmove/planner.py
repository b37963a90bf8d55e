"""The planner: from the source catalog and the sharding rules to a :class:`~orgmove.plan.Plan`.

:func:`build_plan` is pure (catalog + rules in, plan out). :func:`make_plan` is what
``orgmove plan`` runs: it connects to both Cells (read-only transactions, ``application_name``
``orgmove/plan``), reads both catalogs, builds the plan, estimates the organization's rows per step,
records both schema fingerprints and runs every pre-flight check (:mod:`orgmove.preflight`). It
writes nothing to either Cell.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from orgmove.catalog import INTEGER_TYPES, Catalog, Table, read_catalog, schema_fingerprint
from orgmove.config import Config
from orgmove.db import connect, wrap_errors
from orgmove.errors import CellUnreachable, PlanError, TransientError, UnclassifiedTables
from orgmove.graph import Graph, analyze, check_cycles
from orgmove.plan import (
    OrgKey,
    Plan,
    RootSpec,
    SkippedTable,
    Step,
    filter_condition,
    render_filter_for_review,
    table_ident,
)
from orgmove.resolver import display
from orgmove.rules import Rules, TableRule, dump_rules, load_rules
from orgmove.suggest import suggest

APPLICATION_NAME = "orgmove/plan"
EXACT_COUNT_LIMIT = 200_000  # tables up to this many rows: the org's rows are counted exactly
SAMPLE_ROWS = 50_000  # larger tables: about this many rows are sampled (TABLESAMPLE SYSTEM)

_INT_RANGES = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}

OwnerOf = Callable[[OrgKey], "str | None"]


# --- pure part ----------------------------------------------------------------------------------


def parse_org_key(org: str | int, key_type: str, *, root: str = "organizations") -> OrgKey:
    """The organization id as the root key's type: int for integer types, str otherwise."""
    text = str(org).strip()
    if not text:
        raise PlanError("the organization id is empty", fix="pass --org ID")
    if key_type in INTEGER_TYPES:
        try:
            value = int(text, 10)
        except ValueError:
            raise PlanError(
                f"organization id {text!r} is not an integer, but {root} keys are {key_type}",
                fix="pass the numeric id of the organization, e.g. --org 42",
            ) from None
        lo, hi = _INT_RANGES[key_type]
        if not lo <= value <= hi:
            raise PlanError(
                f"organization id {text} is out of the range of {key_type}",
                fix="check the organization id",
            )
        return value
    if key_type == "uuid":
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise PlanError(
                f"organization id {text!r} is not a UUID, but {root} keys are uuid",
                fix="pass the organization's UUID, e.g. --org 0b6f3f3e-...",
            ) from None
    return text


def raise_unclassified(
    catalog: Catalog,
    graph: Graph,
    rules: Rules,
    type_values: dict[str, dict[str, list[str]]] | None = None,
) -> None:
    if not graph.unclassified:
        return
    suggestions = {q: suggest(catalog, graph, q, type_values) for q in graph.unclassified}
    lines = [f"{q} ({graph.nodes[q].reason}; suggested: {s.text})" for q, s in suggestions.items()]
    draft = suggest_rules_for(catalog, rules, type_values)
    raise UnclassifiedTables(
        f"{len(lines)} table(s) are not classified by {rules.source or 'the rules'}: "
        + "; ".join(lines),
        fix="add a rule for each to the rules file given with --rules (a sharding_key, a "
        "polymorphic link, or one of the lists cluster_wide / ignored / cell_local); "
        "`orgmove plan ... --suggest-rules` prints the suggestions as a draft rules file to "
        "review: a plan never applies them by itself",
        details={
            "tables": {q: s.text for q, s in suggestions.items()},
            "suggested_rules": draft,
        },
    )


def build_plan(
    catalog: Catalog,
    rules: Rules,
    *,
    org: str | int,
    from_cell: str,
    to_cell: str,
    rules_label: str | None = None,
    type_values: dict[str, dict[str, list[str]]] | None = None,
    graph: Graph | None = None,
) -> Plan:
    """The plan from a catalog and rules, without a database. Raises for unclassified tables
    (:class:`UnclassifiedTables`), dependency cycles and rules that do not fit the schema.
    ``graph``: ``analyze(catalog, rules)`` when the caller has it already."""
    graph = graph or analyze(catalog, rules)
    raise_unclassified(catalog, graph, rules, type_values)
    check_cycles(graph)
    root_table = catalog.tables[graph.root]
    key_col = root_table.column(graph.root_key)
    assert key_col is not None
    root = RootSpec(table=graph.root, key=graph.root_key, key_type=key_col.type)
    org_key = parse_org_key(org, key_col.type, root=graph.root)
    steps = [_step(catalog.tables[q], graph, root) for q in graph.order]
    skipped = []
    for q, node in sorted(graph.nodes.items()):
        if node.classification in ("cluster_wide", "ignored", "cell_local", "partition"):
            skipped.append(SkippedTable(
                table=q, classification=node.classification, reason=node.reason
            ))
    return Plan(
        org=org_key,
        from_cell=from_cell,
        to_cell=to_cell,
        steps=steps,
        root=root,
        cluster_wide_refs=graph.cluster_refs,
        skipped=skipped,
        rules=rules_label,
    )


def _step(t: Table, graph: Graph, root: RootSpec) -> Step:
    node = graph.nodes[t.qualified]
    copy_cols = [c for c in t.columns if not c.generated]
    key = t.chunk_key()
    types = {c.name: c.type for c in t.columns}
    step = Step(
        table=t.qualified,
        schema_name=t.schema,
        name=t.name,
        columns=[c.name for c in copy_cols],
        column_types=[c.type for c in copy_cols],
        generated_columns=[c.name for c in t.columns if c.generated],
        key=key,
        key_types=[types[k] for k in key],
        filter=node.paths,
        depends_on=node.depends_on,
        estimated_rows=1 if node.classification == "root" else t.est_rows,
        estimated_bytes=t.est_bytes,
        partitions=list(t.partitions),
        self_referencing=node.self_referencing,
        reason=node.reason,
    )
    step.filter_sql = render_filter_for_review(step, root)
    return step


def suggest_rules_for(
    catalog: Catalog,
    rules: Rules,
    type_values: dict[str, dict[str, list[str]]] | None = None,
) -> str:
    """A rules YAML draft: ``rules`` plus a suggested rule for every unclassified table.

    Suggestions are applied round after round (a table may become reachable only through
    another suggested one). The draft loads as is; tables with no guess are named in comments.
    """
    merged = rules.model_copy(deep=True)
    notes: dict[str, str] = {}
    for _ in range(20):
        graph = analyze(catalog, merged)
        changed = False
        for q in graph.unclassified:
            s = suggest(catalog, graph, q, type_values)
            name = display(q)
            if s.rule is not None:
                merged.tables[name] = _merge_rule(merged.tables.get(name), s.rule)
                notes[q] = s.text
                changed = True
            elif s.list_kind == "cluster_wide" and name not in merged.cluster_wide:
                merged.cluster_wide.append(name)
                notes[q] = s.text
                changed = True
        if not changed:
            break
    graph = analyze(catalog, merged)
    header = [
        "orgmove sharding rules: draft from `orgmove plan` (review before use).",
        f"Based on {rules.source or 'the default rules'}.",
    ]
    if notes:
        header.append("Suggested (inferred from names; check each):")
        header += [f"  {display(q)}: {text}" for q, text in sorted(notes.items())]
    if graph.unclassified:
        header.append("Still unclassified (no guess; add a rule by hand):")
        header += [f"  {display(q)}: {graph.nodes[q].reason}" for q in graph.unclassified]
    return dump_rules(merged, header="\n".join(header))


def _merge_rule(old: TableRule | None, new: TableRule) -> TableRule:
    if old is None:
        return new
    merged = old.model_copy(deep=True)
    merged.sharding_key.update(new.sharding_key)
    merged.polymorphic.extend(new.polymorphic)
    return merged


# --- database part ------------------------------------------------------------------------------


@contextlib.contextmanager
def _cell(config: Config, cell: str) -> Iterator[psycopg.Connection[Any]]:
    dsn = config.cell_dsn(cell)
    try:
        conn = connect(dsn, cell=cell, application_name=APPLICATION_NAME,
                       statement_timeout_s=config.defaults.statement_timeout_s)
    except TransientError as exc:
        # Planning is not retried: a cell that cannot be reached now fails the pre-flight.
        raise CellUnreachable(
            f"cell {cell!r} is unreachable: {exc.message}",
            fix=f"check that the Cell's PostgreSQL is up and the DSN of cell {cell!r} is right",
        ) from exc
    try:
        # Every statement runs in a read-only, repeatable-read transaction: one consistent view
        # of the source, and a guarantee that planning writes nothing.
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def observed_type_values(
    conn: psycopg.Connection[Any], catalog: Catalog, tables: list[str], limit: int = 50
) -> dict[str, dict[str, list[str]]]:
    """Distinct values of ``X_type`` columns that pair with ``X_id`` (for suggestions only)."""
    out: dict[str, dict[str, list[str]]] = {}
    for q in tables:
        t = catalog.tables[q]
        for col in t.columns:
            if not col.name.endswith("_type") or t.column(col.name[:-5] + "_id") is None:
                continue
            query = sql.SQL(
                "SELECT DISTINCT {c}::text FROM (SELECT {c} FROM {t} LIMIT 100000) s "
                "WHERE {c} IS NOT NULL LIMIT {n}"
            ).format(c=sql.Identifier(col.name), t=table_ident(q), n=sql.Literal(limit))
            with conn.cursor() as cur:
                cur.execute(query)
                values = sorted(r[0] for r in cur.fetchall())
            out.setdefault(q, {})[col.name] = values
    return out


def estimate_steps(conn: psycopg.Connection[Any], plan: Plan, catalog: Catalog) -> set[str]:
    """The organization's rows and bytes per step: exact counts for tables up to
    ``EXACT_COUNT_LIMIT`` rows, a TABLESAMPLE count scaled up for larger ones, 0 for empty ones.
    Returns the tables where the organization certainly has no rows (counted or empty)."""
    none: set[str] = set()
    for step in plan.steps:
        t = catalog.tables[step.table]
        if t.est_bytes == 0:
            step.estimated_rows, step.estimated_bytes = 0, 0
            none.add(step.table)
            continue
        cond = filter_condition(step, plan.root, plan.org)
        if t.est_rows <= EXACT_COUNT_LIMIT:
            query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                table_ident(step.table), cond
            )
            scale = 1.0
        else:
            pct = min(100.0, 100.0 * SAMPLE_ROWS / t.est_rows)
            query = sql.SQL(
                "SELECT count(*) FROM {} TABLESAMPLE SYSTEM ({}) REPEATABLE (42) WHERE {}"
            ).format(table_ident(step.table), sql.Literal(pct), cond)
            scale = 100.0 / pct
        with conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
        rows = int(round((row[0] if row else 0) * scale))
        step.estimated_rows = rows
        per_row = t.est_bytes / max(t.est_rows, 1)
        step.estimated_bytes = int(rows * per_row)
        if rows == 0 and scale == 1.0:
            none.add(step.table)
    return none


def make_plan(
    config: Config,
    org: str,
    from_cell: str,
    to_cell: str,
    rules_path: str | None,
    owner_of: OwnerOf | None = None,
    *,
    replica_role: bool = True,
    allowed_triggers: list[str] | None = None,
) -> Plan:
    """Plan the move of ``org`` from ``from_cell`` to ``to_cell``; every pre-flight check passes
    or the right :class:`~orgmove.errors.OrgmoveError` (exit code 2) is raised. Writes nothing.
    ``replica_role``/``allowed_triggers``: the trigger policy of :mod:`orgmove.triggers`."""
    from orgmove import preflight, triggers

    preflight.check_cells(config, from_cell, to_cell)
    rules_path = rules_path or config.defaults.rules
    rules = load_rules(rules_path)
    with _cell(config, from_cell) as src, _cell(config, to_cell) as dst:
        with wrap_errors(from_cell, "reading the catalog"):
            catalog = read_catalog(src)
            graph = analyze(catalog, rules)
            type_values = None
            if graph.unclassified:
                type_values = observed_type_values(src, catalog, graph.unclassified)
        plan = build_plan(
            catalog, rules, org=org, from_cell=from_cell, to_cell=to_cell,
            rules_label=rules_path, type_values=type_values, graph=graph,
        )
        with wrap_errors(from_cell, "checking the organization"):
            preflight.check_org_exists(src, plan, from_cell)
        preflight.check_owner(owner_of, plan)
        with wrap_errors(to_cell, "reading the target catalog"):
            target_catalog = read_catalog(dst)
        preflight.check_target_schema(plan, catalog, target_catalog)
        with wrap_errors(from_cell, "estimating rows"):
            no_rows = estimate_steps(src, plan, catalog)
        preflight.check_target_conflicts(src, dst, plan, target_catalog, skip=no_rows)
        plan.warnings = preflight.unmapped_type_values(src, plan)
        preflight.check_cluster_wide_refs(src, dst, plan, target_catalog, skip=no_rows)
        plan.replica_role = replica_role
        plan.allowed_triggers = sorted(set(allowed_triggers or []))
        with wrap_errors(to_cell, "reading the target's triggers"):
            triggers.annotate_plan(dst, plan)
            if replica_role:
                triggers.check_replica_privilege(dst, to_cell)
        triggers.check_allowed_names(plan)
        triggers.check_policy(plan)
        plan.warnings += triggers.warnings(plan)
        tables = [s.table for s in plan.steps]
        with wrap_errors(from_cell, "fingerprinting the schema"):
            plan.source_fingerprint = schema_fingerprint(src, tables)
        with wrap_errors(to_cell, "fingerprinting the schema"):
            plan.target_fingerprint = schema_fingerprint(dst, tables)
    return plan


def suggest_rules(
    config: Config, org: str, from_cell: str, to_cell: str, rules_path: str | None
) -> str:
    """A rules YAML draft for the source schema: the given rules plus a suggested rule for every
    unclassified table (guessed from column names and observed polymorphic type values)."""
    rules_path = rules_path or config.defaults.rules
    rules = load_rules(rules_path)
    with _cell(config, from_cell) as src, wrap_errors(from_cell, "reading the catalog"):
        catalog = read_catalog(src)
        graph = analyze(catalog, rules)
        type_values = observed_type_values(src, catalog, graph.unclassified)
    return suggest_rules_for(catalog, rules, type_values)
