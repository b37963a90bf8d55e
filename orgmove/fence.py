"""The write fence on a Cell (ADR 0008, which supersedes ADR 0002): the gate triggers that hold it
for every writer, the fence itself (install it with the drain, lift it, make it permanent) and
whether one is in force. The fence's schema (``orgmove.fences``, ``orgmove.assert_writable``,
``orgmove.gate_check``) is ``orgmove/sql/cell_schema.sql``, installed on every Cell."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from orgmove.errors import CutoverAborted, PreflightFailed
from orgmove.obs import log
from orgmove.plan import Hop, Plan, Step, cast_type, table_ident


def fence_function_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regprocedure('orgmove.assert_writable(text)') IS NOT NULL").fetchone()
    return bool(row and row[0])


def install_source_fence(conn: psycopg.Connection[Any], org: str, move_key: str, token: int,
                         drain_timeout_s: float, ttl_s: float) -> datetime:
    """Take the org's exclusive fence lock (waiting for in-flight writers: the drain), insert the
    fence row. Returns the fence time. A writer still holding the org's shared lock when the drain
    timeout passes is terminated (its transaction fails, nothing of it commits) and the lock is
    tried once more; raises CutoverAborted when that does not drain either."""
    try:
        return _fence_once(conn, org, move_key, token, drain_timeout_s, ttl_s)
    except psycopg.errors.LockNotAvailable:
        pass
    terminated = terminate_lock_holders(conn, org)
    log(logging.WARNING, "writers did not drain before the fence: terminated", move=move_key,
        org=org, pids=terminated)
    try:
        return _fence_once(conn, org, move_key, token, drain_timeout_s, ttl_s)
    except psycopg.errors.LockNotAvailable:
        raise CutoverAborted(
            f"writers of organization {org} did not finish within {drain_timeout_s:g}s of the fence, "
            f"even after terminating {len(terminated)} of them",
            fix="retry when the write load is lower, or raise defaults.lock_timeout_s",
        ) from None


def _fence_once(conn: psycopg.Connection[Any], org: str, move_key: str, token: int,
                drain_timeout_s: float, ttl_s: float) -> datetime:
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
            sql.Literal(f"{int(drain_timeout_s * 1000)}ms")))
        conn.execute("SELECT pg_advisory_xact_lock(orgmove.fence_lock_key(%s))", (org,))
        # Non-transactional record of this fence's transaction: a REPEATABLE READ writer whose
        # snapshot predates the fence row learns from it that it cannot see the fence.
        conn.execute(
            "SELECT setval(s, pg_current_xact_id()::text::bigint) "
            "FROM to_regclass(%s) AS s WHERE s IS NOT NULL",
            (f"orgmove.{gate_names(move_key).fence_xid_sequence}",))
        row = conn.execute(
            "INSERT INTO orgmove.fences (organization_id, move_key, fencing_token, expires_at) "
            "VALUES (%s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (organization_id) DO UPDATE SET move_key = excluded.move_key, "
            "fencing_token = excluded.fencing_token, fenced_at = clock_timestamp(), "
            "expires_at = excluded.expires_at RETURNING fenced_at",
            (org, move_key, token, ttl_s),
        ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def terminate_lock_holders(conn: psycopg.Connection[Any], org: str) -> list[int]:
    """Terminate the backends holding the org's shared fence lock: transactions that wrote the
    org's rows and stayed open through the drain timeout. Returns their pids."""
    rows = conn.execute(
        "SELECT l.pid, pg_terminate_backend(l.pid) FROM pg_locks l, "
        "LATERAL (SELECT orgmove.fence_lock_key(%s) AS k) key "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid <> pg_backend_pid() "
        "AND l.classid = ((key.k >> 32) & 4294967295)::oid AND l.objid = (key.k & 4294967295)::oid",
        (org,)).fetchall()
    return [int(r[0]) for r in rows]


def lift_fence(conn: psycopg.Connection[Any], org: str) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM orgmove.fences WHERE organization_id = %s", (org,))


def has_fence(conn: psycopg.Connection[Any], org: str) -> bool:
    if not fence_function_installed(conn):
        return False
    row = conn.execute("SELECT 1 FROM orgmove.fences WHERE organization_id = %s", (org,)).fetchone()
    return row is not None



def make_fence_permanent(src: psycopg.Connection[Any], org: str) -> None:
    with src.transaction():
        src.execute("UPDATE orgmove.fences SET expires_at = NULL WHERE organization_id = %s", (org,))


# --- the gate: a fence for every writer (ADR 0008) ---------------------------------------------
#
# One BEFORE ROW trigger per planned table of the source, ENABLE ALWAYS (it fires for writers in
# session_replication_role=replica too), plus a BEFORE TRUNCATE statement trigger. For a row of
# the moving org (its old or its new version) it calls orgmove.gate_check (cell_schema.sql),
# which takes the org's shared advisory lock without waiting and refuses while the fence is
# taken or in force. Rows of other orgs pay the membership test and nothing else. Installed when
# the move starts (copy), so the cutover runs no DDL; dropped by rollback and cleanup.

GATE_PREFIX = "orgmove_gate_"


@dataclass(frozen=True)
class GateNames:
    """Catalog names of one move's gate, derived from the move key."""

    tag: str  # short, stable, identifier-safe

    @property
    def trigger(self) -> str:
        return f"{GATE_PREFIX}{self.tag}"

    @property
    def truncate_trigger(self) -> str:
        return f"{GATE_PREFIX}{self.tag}_truncate"

    def function(self, step_no: int) -> str:
        return f"gate_{self.tag}_{step_no}"

    @property
    def truncate_function(self) -> str:
        return f"gate_{self.tag}_truncate"

    @property
    def fence_xid_sequence(self) -> str:
        return f"gate_{self.tag}_fence_xid"


def gate_names(move_key: str) -> GateNames:
    return GateNames(hashlib.sha256(move_key.encode()).hexdigest()[:12])


def _path_in_org(hops: list[Hop], plan: Plan, row: str, depth: int = 0) -> sql.Composable:
    """One join path as correlated lookups from the trigger's row (``NEW``/``OLD``) through the
    parents' keys: one index probe per hop, whatever the size of the org."""
    org = sql.SQL("{}::{}").format(sql.Literal(plan.org), cast_type(plan.root.key_type))

    def col(name: str) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.SQL(row), sql.Identifier(name))

    if not hops:
        return sql.SQL("{} = {}").format(col(plan.root.key), org)
    hop, rest = hops[0], hops[1:]
    if not rest and hop.ref_table == plan.root.table and hop.ref_columns == [plan.root.key]:
        cond: sql.Composable = sql.SQL("{} = {}").format(col(hop.columns[0]), org)
    else:
        alias = f"gate_hop_{depth}"
        match = sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}").format(sql.Identifier(alias), sql.Identifier(rc), col(c))
            for c, rc in zip(hop.columns, hop.ref_columns, strict=True))
        cond = sql.SQL("EXISTS (SELECT 1 FROM {t} AS {a} WHERE {m} AND {r})").format(
            t=table_ident(hop.ref_table), a=sql.Identifier(alias), m=match,
            r=_path_in_org(rest, plan, alias, depth + 1))
    if hop.type_column is not None:
        cond = sql.SQL("({} = {} AND {})").format(col(hop.type_column), sql.Literal(hop.type_value), cond)
    return cond


def _row_in_org(step: Step, plan: Plan, record: str) -> sql.Composable:
    """Does the trigger's ``NEW`` or ``OLD`` row belong to the org: the plan's join paths."""
    paths = [_path_in_org(list(p.hops), plan, record) for p in step.filter]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(paths)) if len(paths) > 1 else paths[0]


def gate_function_sql(plan: Plan, step: Step, step_no: int) -> sql.Composed:
    """The trigger function of one table (pure: SQL composition only)."""
    names = gate_names(plan.move_key)
    check = sql.SQL("PERFORM orgmove.gate_check({org}, {key}, {seq}::regclass);").format(
        org=sql.Literal(str(plan.org)), key=sql.Literal(plan.move_key),
        seq=sql.Literal(f"orgmove.{names.fence_xid_sequence}"))
    body = sql.SQL(
        "#variable_conflict use_column\n"
        "BEGIN\n"
        "  IF TG_OP <> 'DELETE' AND {new_in} THEN\n    {check}\n"
        "  ELSIF TG_OP <> 'INSERT' AND {old_in} THEN\n    {check}\n"
        "  END IF;\n"
        "  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;\n"
        "  RETURN NEW;\n"
        "END\n").format(new_in=_row_in_org(step, plan, "NEW"), old_in=_row_in_org(step, plan, "OLD"),
                        check=check)
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION orgmove.{fn}() RETURNS trigger LANGUAGE plpgsql VOLATILE "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}").format(
        fn=sql.Identifier(names.function(step_no)), body=sql.Literal(body.as_string(None)))


def _truncate_function_sql(plan: Plan) -> sql.Composed:
    names = gate_names(plan.move_key)
    body = sql.SQL("BEGIN\n  PERFORM orgmove.gate_check({org}, {key}, {seq}::regclass);\n"
                   "  RETURN NULL;\nEND\n").format(
        org=sql.Literal(str(plan.org)), key=sql.Literal(plan.move_key),
        seq=sql.Literal(f"orgmove.{names.fence_xid_sequence}"))
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION orgmove.{fn}() RETURNS trigger LANGUAGE plpgsql VOLATILE "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}").format(
        fn=sql.Identifier(names.truncate_function), body=sql.Literal(body.as_string(None)))


def _has_trigger(conn: psycopg.Connection[Any], table: str, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
                       (table_ident(table).as_string(conn), name)).fetchone()
    return row is not None


def gate_installed(conn: psycopg.Connection[Any], plan: Plan) -> bool:
    names = gate_names(plan.move_key)
    return all(_has_trigger(conn, s.table, names.trigger) for s in plan.steps)


def install_gate(conn: psycopg.Connection[Any], plan: Plan) -> None:
    """Install (or complete) the move's gate on the source, in one transaction. Idempotent: a
    rerun replaces the functions and adds only the triggers that are missing."""
    names = gate_names(plan.move_key)
    if conn.execute("SELECT to_regprocedure('orgmove.gate_check(text,text,regclass)')").fetchone() == (None,):
        raise PreflightFailed(
            "the write gate (orgmove.gate_check) is not installed on the source cell",
            fix="install it as an administrator: psql -f orgmove/sql/cell_schema.sql "
            "(runbooks/09-least-privilege.md)",
        )
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS orgmove.{} MINVALUE 1 START 1").format(
                sql.Identifier(names.fence_xid_sequence)))
            conn.execute(_truncate_function_sql(plan))
            for step_no, step in enumerate(plan.steps):
                conn.execute(gate_function_sql(plan, step, step_no))
                t = table_ident(step.table)
                if not _has_trigger(conn, step.table, names.trigger):
                    conn.execute(sql.SQL(
                        "CREATE TRIGGER {tg} BEFORE INSERT OR UPDATE OR DELETE ON {t} "
                        "FOR EACH ROW EXECUTE FUNCTION orgmove.{fn}()").format(
                        tg=sql.Identifier(names.trigger), t=t, fn=sql.Identifier(names.function(step_no))))
                    conn.execute(sql.SQL("ALTER TABLE {t} ENABLE ALWAYS TRIGGER {tg}").format(
                        t=t, tg=sql.Identifier(names.trigger)))
                if not _has_trigger(conn, step.table, names.truncate_trigger):
                    conn.execute(sql.SQL(
                        "CREATE TRIGGER {tg} BEFORE TRUNCATE ON {t} "
                        "FOR EACH STATEMENT EXECUTE FUNCTION orgmove.{fn}()").format(
                        tg=sql.Identifier(names.truncate_trigger), t=t,
                        fn=sql.Identifier(names.truncate_function)))
                    conn.execute(sql.SQL("ALTER TABLE {t} ENABLE ALWAYS TRIGGER {tg}").format(
                        t=t, tg=sql.Identifier(names.truncate_trigger)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PreflightFailed(
            f"cannot install the write gate on the source: {exc.diag.message_primary}. The gate is a "
            "trigger on every planned table, so the mover's role must own those tables (or be an "
            "administrator) and may create objects in schema orgmove",
            fix="run the move as the tables' owner, or see runbooks/09-least-privilege.md",
        ) from None


def ensure_gate(conn: psycopg.Connection[Any], plan: Plan) -> bool:
    """Install the gate at the move's start. A source role that may not create triggers (the
    least-privilege reader of runbooks/09-least-privilege.md) leaves the move with the
    cooperative fence only: warned about, recorded by the caller, shown by ``status``."""
    try:
        install_gate(conn, plan)
        return True
    except PreflightFailed as exc:
        log(logging.WARNING, "the write gate is not installed: only writers that call "
            "orgmove.assert_writable are fenced. " + exc.message, move=plan.move_key, fix=exc.fix)
        return False


def drop_gate(conn: psycopg.Connection[Any], plan: Plan) -> None:
    """Drop the move's gate triggers, functions and sequence (no-op for parts already gone)."""
    names = gate_names(plan.move_key)
    with conn.transaction():
        for step_no, step in enumerate(plan.steps):
            if conn.execute("SELECT to_regclass(%s)", (table_ident(step.table).as_string(conn),)).fetchone() != (None,):
                for tg in (names.trigger, names.truncate_trigger):
                    conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(tg), table_ident(step.table)))
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS orgmove.{}()").format(
                sql.Identifier(names.function(step_no))))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS orgmove.{}()").format(
            sql.Identifier(names.truncate_function)))
        conn.execute(sql.SQL("DROP SEQUENCE IF EXISTS orgmove.{}").format(
            sql.Identifier(names.fence_xid_sequence)))


def gate_triggers_on(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(table, trigger) of every orgmove gate trigger on the Cell: for status and debris checks."""
    rows = conn.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE %s ORDER BY 1, 2",
        (GATE_PREFIX + "%",)).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def bypass_gate(conn: psycopg.Connection[Any], move_key: str) -> None:
    """Let this session's writes through the move's gate (cleanup's deletes of a moved org)."""
    conn.execute("SELECT set_config('orgmove.gate_bypass', %s, false)", (move_key,))


def gate_installed_any(conn: psycopg.Connection[Any], plan: Plan) -> bool:
    """Is any part of the move's gate on this Cell (a trigger or the fence-xid sequence)?"""
    names = gate_names(plan.move_key)
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname IN (%s, %s)) "
        "OR to_regclass(%s) IS NOT NULL",
        (names.trigger, names.truncate_trigger, f"orgmove.{names.fence_xid_sequence}")).fetchone()
    return bool(row and row[0])
