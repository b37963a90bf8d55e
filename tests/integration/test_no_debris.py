"""No debris (issue 14, item 7): after rollback and cleanup no replication slot, publication,
replication origin or gate trigger of the move is left on either Cell; an aborted cutover lifts
the fence and keeps what a retried cutover needs; the retained-WAL guard stops a move whose slot
keeps too much WAL and drops the slot; ``status`` lists every orgmove slot with its WAL."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orgmove import capture_guard, fence
from orgmove.capture import capture_names
from orgmove.copy import CopyOptions, run_copy
from orgmove.cutover import CutoverOptions, run_cutover
from orgmove.errors import RetainedWalExceeded
from orgmove.plan import Plan, table_ident
from orgmove.teardown import run_cleanup, run_rollback
from tests.helpers import cli_ok, make_plan
from tests.world import World

pytestmark = pytest.mark.slow


def _make_capture(world: World, plan: Plan) -> None:
    """What the copy creates for the online move on the source (publication, slot) and the
    target (origin); created here so these tests hold whichever copy made them."""
    names = capture_names(plan.move_key)
    with psycopg.connect(world.dsn("cell-1"), autocommit=True) as src:
        if not src.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (names.publication,)).fetchone():
            src.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(names.publication), sql.SQL(", ").join(table_ident(s.table) for s in plan.steps)))
        src.execute("SELECT pg_create_logical_replication_slot(%(s)s, 'pgoutput') WHERE NOT EXISTS "
                    "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %(s)s)", {"s": names.slot})
    with psycopg.connect(world.dsn("cell-2"), autocommit=True) as dst:
        dst.execute("SELECT pg_replication_origin_create(%(o)s) "
                    "WHERE pg_replication_origin_oid(%(o)s) IS NULL", {"o": names.origin})


def debris_on(dsn: str) -> dict[str, list[Any]]:
    """Everything of orgmove's on a Cell, straight from the catalogs."""
    with psycopg.connect(dsn) as conn:
        return {
            "slots": [r[0] for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'orgmove%'")],
            "publications": [r[0] for r in conn.execute(
                "SELECT pubname FROM pg_publication WHERE pubname LIKE 'orgmove%'")],
            "origins": [r[0] for r in conn.execute(
                "SELECT roname FROM pg_replication_origin WHERE roname LIKE 'orgmove%'")],
            "triggers": [r[0] for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'orgmove%'")],
            "gate_functions": [r[0] for r in conn.execute(
                "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'orgmove' AND proname LIKE 'gate\\_%' AND proname <> 'gate_check'")],
        }


NOTHING = {"slots": [], "publications": [], "origins": [], "triggers": [], "gate_functions": []}


def _plain_write_org1(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE issues SET title = title WHERE id = (SELECT i.id FROM issues i "
                     "JOIN projects p ON p.id = i.project_id JOIN namespaces n ON n.id = p.namespace_id "
                     "WHERE n.organization_id = 1 LIMIT 1)")


def _copied_with_capture(world: World) -> Plan:
    plan, _ = make_plan(world.cells)
    run_copy(plan, world.config, CopyOptions(workers=2))
    _make_capture(world, plan)
    source = debris_on(world.dsn("cell-1"))
    assert source["slots"] and source["publications"] and source["triggers"] and source["gate_functions"]
    assert debris_on(world.dsn("cell-2"))["origins"]
    return plan


def test_abort_lifts_the_fence_and_rollback_leaves_nothing(world: World) -> None:
    plan = _copied_with_capture(world)
    os.environ["ORGMOVE_FAILPOINTS"] = "cutover.after_fence=error"
    try:
        with pytest.raises(RuntimeError, match="failpoint"):
            # With the reverse stream prepared: its slot, publication and gate on the target and
            # its origin on the source are debris too once the move is given up.
            run_cutover(plan, world.config, CutoverOptions(max_freeze_s=60, reverse_stream=True))
    finally:
        os.environ.pop("ORGMOVE_FAILPOINTS", None)
    # Lifted: a writer that never cooperates writes again; the gate and the stream stay for a
    # retried cutover (a rollback is the way to give the move up).
    _plain_write_org1(world.dsn("cell-1"))
    assert debris_on(world.dsn("cell-1"))["slots"]
    target = debris_on(world.dsn("cell-2"))
    assert target["slots"] and target["publications"] and target["triggers"]
    assert len(debris_on(world.dsn("cell-1"))["origins"]) == 1  # the reverse stream's
    with psycopg.connect(world.dsn("cell-1")) as conn:
        assert fence.gate_installed(conn, plan)

    doc = run_rollback(plan, world.config)
    assert doc["dropped"]
    assert debris_on(world.dsn("cell-1")) == NOTHING
    assert debris_on(world.dsn("cell-2")) == NOTHING
    _plain_write_org1(world.dsn("cell-1"))


def test_cleanup_leaves_nothing_but_the_permanent_fence_row(world: World) -> None:
    plan = _copied_with_capture(world)
    report = run_cutover(plan, world.config, CutoverOptions(max_freeze_s=60))
    assert report.committed
    # After the flip and until cleanup, the gate refuses every writer of the org on the source.
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        _plain_write_org1(world.dsn("cell-1"))
    doc = run_cleanup(plan, world.config)
    assert doc["rows_deleted"] > 0 and doc["dropped"]
    assert debris_on(world.dsn("cell-1")) == NOTHING
    assert debris_on(world.dsn("cell-2")) == NOTHING
    with psycopg.connect(world.dsn("cell-1")) as conn:
        row = conn.execute("SELECT expires_at FROM orgmove.fences WHERE organization_id = '1'").fetchone()
    assert row == (None,), "the cooperative fence row stays: assert_writable still refuses"


def _make_wal(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_filler (x text)")
        conn.execute("INSERT INTO wal_filler SELECT repeat('w', 1000) FROM generate_series(1, 3000)")
        conn.execute("SELECT pg_switch_wal()")
        conn.execute("INSERT INTO wal_filler VALUES ('after the switch')")


def test_guard_stops_the_move_and_drops_its_slot(world: World) -> None:
    plan, path = make_plan(world.cells)
    _make_capture(world, plan)
    _make_wal(world.dsn("cell-1"))
    slot = capture_names(plan.move_key).slot

    doc = cli_ok(world.config_path, "status", "--org", "1", "--json")
    listed = {s["slot"]: s for s in doc["slots"]}
    assert listed[slot]["cell"] == "cell-1"
    assert listed[slot]["retained_wal_bytes"] > 1024 * 1024
    assert listed[slot]["over_limit"] is False
    text = cli_ok(world.config_path, "status", "--org", "1").stdout
    assert slot in text and "MB" in text

    # Under the limit: nothing happens.
    with psycopg.connect(world.dsn("cell-1"), autocommit=True) as src, \
            psycopg.connect(world.dsn("cell-2"), autocommit=True) as dst:
        assert capture_guard.check(src, dst, plan, 10_240) > 1024 * 1024
        assert debris_on(world.dsn("cell-1"))["slots"] == [slot]
        with pytest.raises(RetainedWalExceeded) as stopped:
            capture_guard.check(src, dst, plan, 0.5)
    assert stopped.value.exit_code == 1
    assert "max_retained_wal_mb" in stopped.value.message and stopped.value.fix
    assert debris_on(world.dsn("cell-1"))["slots"] == []
    assert debris_on(world.dsn("cell-1"))["publications"] == []
    assert debris_on(world.dsn("cell-2"))["origins"] == []

    # The copy checks too: a tiny limit in the config stops it with exit 1 and the fix.
    _make_capture(world, plan)
    _make_wal(world.dsn("cell-1"))
    text = world.config_path.read_text().replace("[defaults]\n", "[defaults]\nmax_retained_wal_mb = 0.5\n")
    world.config_path.write_text(text)
    proc = cli_ok(world.config_path, "copy", str(path), code=1)
    assert "max_retained_wal_mb" in proc.stderr and "Fix:" in proc.stderr
    assert debris_on(world.dsn("cell-1"))["slots"] == []
