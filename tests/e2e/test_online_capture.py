"""Online move, capture and catch-up against real Cells: the copy's slot snapshot and the stream
meet exactly (writes during the copy land once), only the org's changes are applied (direct and
join-path filters, a row moved into and out of the org), TOAST values survive, and a table
without a key is not doubled."""

from __future__ import annotations

import psycopg
import pytest

from orgmove.capture import capture_names
from orgmove.catchup import SyncOptions, run_sync
from orgmove.config import load_config
from orgmove.copy import CopyOptions, run_copy
from orgmove.movectx import MoveContext
from tests.helpers import make_plan, org_checksums, other_rows_checksums
from tests.online_writers import BIG, Writers, move_note, new_project_with_notes, org_project


def _slot_rows(dsn: str, slot: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT slot_name, plugin FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchall()]


def test_writes_during_copy_land_exactly_once(cells, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, _ = make_plan(cells)
    config = load_config(cells.config_path)
    src, dst = cells.dsn("cell-1"), cells.dsn("cell-2")
    target_others = other_rows_checksums(dst, plan)
    writers = Writers(src).start()
    # Slow chunk commits so that the writers commit throughout the copy.
    monkeypatch.setenv("ORGMOVE_FAILPOINTS", "copy.before_commit=sleep(0.05)")
    try:
        report = run_copy(plan, config, CopyOptions(workers=2, chunk_rows=25))
    finally:
        monkeypatch.delenv("ORGMOVE_FAILPOINTS")
    with psycopg.connect(src, autocommit=True) as conn:
        new_project_with_notes(conn, 1, "online-new")
        move_note(conn, 3, 1)  # into the org: an insert on the target
        move_note(conn, 1, 3)  # out of it: a delete on the target
        row = conn.execute(f"INSERT INTO issues (project_id, iid, title, description, created_at) "
                           f"VALUES (%s, 999999, 'toasted', ({BIG}), now()) RETURNING id",
                           (org_project(conn, 1),)).fetchone()
        assert row is not None and row[0] is not None
        toasted = row[0]
        conn.execute("UPDATE issues SET title = 'TOAST kept' WHERE id = %s", (toasted,))
    writers.stop()
    assert writers.steps > 20 and not writers.errors, writers.errors
    names = capture_names(plan.move_key)
    assert report.capture is not None and report.capture["slot"] == names.slot
    assert "public.web_hook_logs_archive" in report.capture["replica_identity_full"]
    assert _slot_rows(src, names.slot) == [(names.slot, "pgoutput")]

    progress = run_sync(MoveContext.create(plan, config), SyncOptions(until_caught_up=True, max_lag_s=5,
                                                                       max_seconds=120))
    assert progress.caught_up and progress.changes > 0 and progress.filtered_rows > 0

    assert org_checksums(dst, plan) == org_checksums(src, plan)
    assert other_rows_checksums(dst, plan) == target_others  # org 3's changes never reached the target
    with psycopg.connect(dst) as conn:
        found = conn.execute("SELECT title, length(description) FROM issues WHERE id = %s", (toasted,)).fetchone()
    assert found == ("TOAST kept", 6400)  # the UPDATE did not send the description: never written as NULL


def _write_after_copy(src: str, steps: int) -> None:
    import random

    from tests.online_writers import one_write

    rng = random.Random(3)
    with psycopg.connect(src, autocommit=True) as conn:
        for step in range(steps):
            one_write(conn, rng, (1, 3)[step % 2], step)


@pytest.mark.parametrize("kills", [[
    "apply.before_commit=exit@1", "apply.after_commit=exit@1", "apply.before_commit=exit@2",
    "apply.after_commit=exit@3", "sigkill",
]])
def test_kill_9_during_sync_neither_loses_nor_doubles(cells, kills: list[str]) -> None:
    import os
    import signal
    import time

    from tests.helpers import cli_ok, orgmove_popen

    plan, path = make_plan(cells)
    config = load_config(cells.config_path)
    src, dst = cells.dsn("cell-1"), cells.dsn("cell-2")
    run_copy(plan, config, CopyOptions(workers=2, chunk_rows=25))
    _write_after_copy(src, 700)
    with psycopg.connect(dst) as conn:
        row = conn.execute("SELECT count(*) FROM web_hook_logs_archive").fetchone()
    assert row is not None
    args = ("--config", str(cells.config_path), "sync", str(path), "--until-caught-up", "--max-lag-s", "5",
            "--max-seconds", "60", "--json")
    for kill in kills:
        if kill == "sigkill":
            proc = orgmove_popen(*args)
            time.sleep(2.5)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            continue
        proc = orgmove_popen(*args, env={"ORGMOVE_FAILPOINTS": kill})
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 137, (kill, proc.returncode, stderr)
    doc = cli_ok(cells.config_path, *args[2:])
    assert doc["caught_up"] is True
    assert org_checksums(dst, plan) == org_checksums(src, plan)  # duplicates in the keyless table count


def test_ddl_on_a_planned_table_during_sync_exits_2_naming_it(cells) -> None:
    from tests.helpers import orgmove_cli

    plan, path = make_plan(cells)
    config = load_config(cells.config_path)
    src, dst = cells.dsn("cell-1"), cells.dsn("cell-2")
    run_copy(plan, config, CopyOptions(workers=2, chunk_rows=25))
    _write_after_copy(src, 20)
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("ALTER TABLE issues ADD COLUMN severity integer")
    _write_after_copy(src, 20)
    proc = orgmove_cli("--config", str(cells.config_path), "sync", str(path), "--until-caught-up", "--json")
    assert proc.returncode == 2, proc.stderr
    assert "public.issues" in proc.stderr and "Traceback" not in proc.stderr
    with psycopg.connect(dst) as conn:
        # The target keeps the planned shape: nothing was applied against the new one.
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'issues' "
                            "AND column_name = 'severity'").fetchone() == (0,)


def test_copy_killed_and_resumed_under_writes_meets_the_stream_exactly(cells) -> None:
    from tests.helpers import cli_ok, orgmove_popen

    plan, path = make_plan(cells)
    src, dst = cells.dsn("cell-1"), cells.dsn("cell-2")
    writers = Writers(src).start()
    try:
        proc = orgmove_popen("--config", str(cells.config_path), "copy", str(path), "--chunk-rows", "25",
                             env={"ORGMOVE_FAILPOINTS": "copy.after_commit=exit@6"})
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 137, stderr
        resumed = cli_ok(cells.config_path, "copy", str(path), "--chunk-rows", "25", "--json")
    finally:
        writers.stop()
    assert resumed["chunks"]["skipped"] >= 6 and resumed["snapshot_consistent"] is True
    assert not writers.errors, writers.errors
    with psycopg.connect(dst) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM orgmove.events WHERE move_key = %s ORDER BY id",
                                            (plan.move_key,)).fetchall()]
    assert "capture_created" in kinds and "capture_resumed" in kinds
    assert _slot_rows(src, capture_names(plan.move_key).slot + "_r") == []  # the temporary slot is gone
    cli_ok(cells.config_path, "sync", str(path), "--until-caught-up", "--json")
    assert org_checksums(dst, plan) == org_checksums(src, plan)  # incl. duplicates of the keyless table


def test_copy_dry_run_lists_what_capture_creates_and_creates_nothing(cells) -> None:
    from tests.helpers import cli_ok

    plan, path = make_plan(cells)
    names = capture_names(plan.move_key)
    doc = cli_ok(cells.config_path, "copy", str(path), "--dry-run", "--json")
    assert doc["capture"]["slot"] == names.slot and doc["capture"]["publication"] == names.publication
    assert doc["capture"]["replica_identity_full"] == ["public.web_hook_logs_archive"]
    human = cli_ok(cells.config_path, "copy", str(path), "--dry-run").stdout
    assert f"logical slot {names.slot}" in human
    src = cells.dsn("cell-1")
    assert _slot_rows(src, names.slot) == []
    with psycopg.connect(src) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        assert conn.execute("SELECT relreplident FROM pg_class WHERE oid = 'web_hook_logs_archive'::regclass"
                            ).fetchone() == ("d",)
