"""The target's triggers while the move writes the organization's rows, and the replica role.

Target sessions that write the org's rows (copy workers, cutover's resync) run with
``session_replication_role = replica``: triggers in the default ``ENABLE`` (origin) mode and the
per-row foreign-key triggers do not fire, so rows land exactly as on the source (a BEFORE INSERT
trigger that assigns ids from a sequence would otherwise rewrite them) and side effects (counters,
audit rows) are not doubled. Foreign keys are then checked set-based (:mod:`orgmove.fkcheck`).

Triggers marked ``ENABLE ALWAYS`` (or ``ENABLE REPLICA``) still fire under the replica role: the
plan lists them and the move refuses unless ``--allow-triggers`` names each. With
``--no-replica-role`` every ``ENABLE``/``ENABLE ALWAYS`` trigger fires; the move refuses when a
BEFORE ROW trigger (which may change or drop rows) is not named in ``--allow-triggers``.

The decoding and the policy are pure; :func:`read_triggers` and the privilege check read the
catalog.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from orgmove.errors import PlanError, PreflightFailed
from orgmove.plan import Plan, Step, Trigger, split_table

REPLICA_SETTINGS: dict[str, str] = {"session_replication_role": "replica"}

# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h).
_ROW, _BEFORE, _INSERT, _DELETE, _UPDATE, _TRUNCATE, _INSTEAD = 1, 2, 4, 8, 16, 32, 64
_ENABLED = {"O": "origin", "R": "replica", "A": "always", "D": "disabled"}
# The statements the move runs on the target: COPY (INSERT), and MERGE/DELETE in the resync.
_WRITES = {"INSERT", "UPDATE", "DELETE"}


def session_settings(plan: Plan) -> dict[str, str]:
    """Extra session settings of the target sessions that write the org's rows."""
    return dict(REPLICA_SETTINGS) if plan.replica_role else {}


# --- pure ---------------------------------------------------------------------------------------


def decode_type(tgtype: int) -> tuple[str, str, list[str]]:
    """(timing, level, events) of a ``pg_trigger.tgtype``."""
    timing = "INSTEAD OF" if tgtype & _INSTEAD else "BEFORE" if tgtype & _BEFORE else "AFTER"
    level = "ROW" if tgtype & _ROW else "STATEMENT"
    events = [name for bit, name in ((_INSERT, "INSERT"), (_UPDATE, "UPDATE"), (_DELETE, "DELETE"),
                                     (_TRUNCATE, "TRUNCATE")) if tgtype & bit]
    return timing, level, events


def fires(enabled: str, events: list[str], replica_role: bool) -> bool:
    """Whether the trigger fires on the statements the move runs on the target."""
    if not set(events) & _WRITES:
        return False  # TRUNCATE only: the move never truncates
    if replica_role:
        return enabled in ("replica", "always")
    return enabled in ("origin", "always")


def is_allowed(trigger: Trigger, allowed: list[str]) -> bool:
    """``--allow-triggers`` names a trigger by its name or as ``table.name``."""
    schema, rel = split_table(trigger.table)
    names = {trigger.name, f"{rel}.{trigger.name}", f"{schema}.{rel}.{trigger.name}"}
    return bool(names & set(allowed))


def make_trigger(table: str, name: str, tgtype: int, tgenabled: str, function: str,
                 replica_role: bool, allowed: list[str]) -> Trigger:
    timing, level, events = decode_type(tgtype)
    enabled = _ENABLED.get(tgenabled, "origin")
    trigger = Trigger(table=table, name=name, timing=timing, level=level,
                      events=events, enabled=enabled, function=function,
                      fires=fires(enabled, events, replica_role))
    trigger.allowed = is_allowed(trigger, allowed)
    return trigger


def refused(trigger: Trigger, replica_role: bool) -> bool:
    """A firing trigger the operator has not accepted. Under the replica role every firing trigger
    is refused (it was marked to fire even for replicas); without it, the BEFORE ROW ones, which
    may change or drop the rows being written."""
    if not trigger.fires or trigger.allowed:
        return False
    if replica_role:
        return True
    return trigger.timing == "BEFORE" and trigger.level == "ROW"


def refused_triggers(plan: Plan) -> list[Trigger]:
    return [t for s in plan.steps for t in s.triggers if refused(t, plan.replica_role)]


def firing_triggers(plan: Plan) -> list[Trigger]:
    return [t for s in plan.steps for t in s.triggers if t.fires]


def describe(trigger: Trigger) -> str:
    return (f"{trigger.table}.{trigger.name} ({trigger.timing} {' OR '.join(trigger.events)} "
            f"FOR EACH {trigger.level}, enabled {trigger.enabled}, {trigger.function}())")


def check_policy(plan: Plan) -> None:
    """Refuse (exit 2) the triggers that would fire and are not accepted."""
    bad = refused_triggers(plan)
    if not bad:
        return
    listed = "; ".join(describe(t) for t in bad)
    names = ",".join(sorted({f"{split_table(t.table)[1]}.{t.name}" for t in bad}))
    if plan.replica_role:
        why = ("fire even though the move writes as a replica (ENABLE ALWAYS or ENABLE REPLICA): "
               "they would run on every copied row")
        fix = (f"check what they do; if running them on the copied rows is right, pass "
               f"--allow-triggers {names}; otherwise have them set back to plain ENABLE on "
               f"cell {plan.to_cell!r} for the move")
    else:
        why = ("are BEFORE ROW triggers that fire because of --no-replica-role: they may change or "
               "drop the rows being copied, so the target would not equal the source")
        fix = (f"grant the replica role and plan without --no-replica-role (see docs/privileges.md), "
               f"or, if the triggers leave the rows unchanged, pass --allow-triggers {names}")
    raise PreflightFailed(
        f"{len(bad)} trigger(s) on cell {plan.to_cell!r} {why}: {listed}",
        fix=fix, details={"triggers": [f"{t.table}.{t.name}" for t in bad]},
    )


def check_allowed_names(plan: Plan) -> None:
    """Every name in ``--allow-triggers`` is a trigger of a planned table (a typo accepts nothing)."""
    every = [t for s in plan.steps for t in s.triggers]
    unknown = [name for name in plan.allowed_triggers if not any(is_allowed(t, [name]) for t in every)]
    if unknown:
        known = ", ".join(sorted({f"{split_table(t.table)[1]}.{t.name}" for t in every})) or "none"
        raise PlanError(
            f"--allow-triggers names {', '.join(unknown)}, which is not a trigger of a planned "
            f"table on cell {plan.to_cell!r} (its triggers: {known})",
            fix="name triggers as NAME or TABLE.NAME, as `orgmove plan --json` lists them",
        )


def warnings(plan: Plan) -> list[str]:
    """Accepted triggers that fire: the reviewer sees them in the plan's warnings."""
    return [f"trigger {describe(t)} fires on the rows the move writes to {plan.to_cell!r}"
            + (" (accepted with --allow-triggers)" if t.allowed else "")
            for t in firing_triggers(plan)]


# --- catalog ------------------------------------------------------------------------------------

# User triggers of each table and of its partitions; a partition's clone of its parent's trigger
# (tgparentid <> 0) is listed once, on the parent.
_TRIGGERS_SQL = """
SELECT q.schema_name || '.' || q.table_name, tn.nspname || '.' || tc.relname, t.tgname,
       t.tgtype::int, t.tgenabled::text, p.proname
FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS q(schema_name, table_name)
JOIN pg_namespace n ON n.nspname = q.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = q.table_name
-- pg_partition_tree() returns nothing for a plain table: the table itself, then its partitions.
CROSS JOIN LATERAL (SELECT c.oid AS relid UNION SELECT relid FROM pg_partition_tree(c.oid)) pt
JOIN pg_trigger t ON t.tgrelid = pt.relid
JOIN pg_class tc ON tc.oid = t.tgrelid
JOIN pg_namespace tn ON tn.oid = tc.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND t.tgparentid = 0
-- orgmove's own write gates (ADR 0008, orgmove/fence.py) are not the application's triggers:
-- a gate lets orgmove's writes through unless that org is fenced on this Cell.
  AND t.tgname NOT LIKE 'orgmove\\_gate\\_%%'
ORDER BY 1, 2, 3
"""


def read_triggers(conn: psycopg.Connection[Any], steps: list[Step]) -> dict[str, list[tuple[Any, ...]]]:
    """Raw ``(relation, name, tgtype, tgenabled, function)`` rows per step table."""
    schemas, names = [], []
    for step in steps:
        schemas.append(step.schema_name)
        names.append(step.name)
    out: dict[str, list[tuple[Any, ...]]] = {s.table: [] for s in steps}
    with conn.cursor() as cur:
        cur.execute(_TRIGGERS_SQL, {"schemas": schemas, "names": names})
        for table, relation, name, tgtype, tgenabled, function in cur.fetchall():
            out.setdefault(table, []).append((relation, name, tgtype, tgenabled, function))
    return out


def annotate_plan(conn: psycopg.Connection[Any], plan: Plan) -> None:
    """Fill every step's ``triggers`` from the target's catalog under the plan's policy."""
    raw = read_triggers(conn, plan.steps)
    for step in plan.steps:
        step.triggers = [make_trigger(rel, name, tgtype, enabled, fn, plan.replica_role,
                                      plan.allowed_triggers)
                         for rel, name, tgtype, enabled, fn in raw.get(step.table, [])]


def recheck(conn: psycopg.Connection[Any], plan: Plan) -> None:
    """Before writing: the target's triggers as they are NOW (one may have been added or set to
    ENABLE ALWAYS since the plan was made) under the plan's policy."""
    current = plan.model_copy(deep=True)
    annotate_plan(conn, current)
    check_policy(current)


# --- the privilege ------------------------------------------------------------------------------


def check_replica_privilege(conn: psycopg.Connection[Any], cell: str) -> None:
    """The target role may set session_replication_role (exit 2 naming the GRANT otherwise)."""
    row = conn.execute(
        "SELECT current_user, current_setting('server_version_num')::int, "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)").fetchone()
    assert row is not None
    user, version, superuser = str(row[0]), int(row[1]), bool(row[2])
    if superuser:
        return
    if version >= 150000:
        granted = conn.execute(
            "SELECT has_parameter_privilege(current_user, 'session_replication_role', 'SET')"
        ).fetchone()
        if granted and granted[0]:
            return
        grant = sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(
            sql.Identifier(user)).as_string(conn)
        fix = (f"as an administrator on cell {cell!r}: {grant}; (runbooks/least-privilege.sql "
               "does it, see docs/privileges.md), or plan with --no-replica-role to write as a "
               "plain client (the target's triggers then fire on the copied rows)")
    else:
        fix = (f"PostgreSQL {version // 10000} lets only a superuser set it (GRANT SET ON PARAMETER "
               "needs PostgreSQL 15): plan with --no-replica-role, or move as a superuser")
    raise PreflightFailed(
        f"role {user!r} on cell {cell!r} may not set session_replication_role, which the move "
        "needs to write the organization's rows as a replica (target triggers and per-row "
        "foreign-key triggers skipped, rows exactly as on the source)",
        fix=fix, details={"role": user, "parameter": "session_replication_role"},
    )


def check_target(conn: psycopg.Connection[Any], plan: Plan) -> None:
    """Everything this module requires before a command writes the org's rows on the target."""
    if plan.replica_role:
        check_replica_privilege(conn, plan.to_cell)
    recheck(conn, plan)
