"""copy: every planned table's org rows equal on both Cells; other orgs untouched; exactly once."""

from __future__ import annotations

import psycopg
import pytest

from orgmove.config import load_config
from orgmove.copy import CopyOptions, run_copy
from tests.helpers import chunk_log_duplicates, make_plan, org_checksums, other_rows_checksums
from tests.orgcounts import org_row_counts


def test_copy_makes_target_equal_and_leaves_other_orgs_alone(cells) -> None:
    plan, _ = make_plan(cells)
    config = load_config(cells.config_path)
    target_before = other_rows_checksums(cells.dsn("cell-2"), plan)
    org2_before = org_row_counts(cells.dsn("cell-2"), 2)

    report = run_copy(plan, config, CopyOptions(workers=2, chunk_rows=25))

    source = org_checksums(cells.dsn("cell-1"), plan)
    target = org_checksums(cells.dsn("cell-2"), plan)
    assert target == source
    assert sum(n for n, _ in source.values()) == report.rows > 0
    # Independent count of the org's rows (hand-written per-table queries in the seed module).
    independent = org_row_counts(cells.dsn("cell-1"), 1)
    assert org_row_counts(cells.dsn("cell-2"), 1) == independent
    assert other_rows_checksums(cells.dsn("cell-2"), plan) == target_before
    assert org_row_counts(cells.dsn("cell-2"), 2) == org2_before
    assert report.chunks_copied == report.chunks_total > len(plan.steps)
    assert report.snapshot_consistent


def test_rerun_copies_nothing_twice(cells) -> None:
    plan, _ = make_plan(cells)
    config = load_config(cells.config_path)
    first = run_copy(plan, config, CopyOptions(workers=2, chunk_rows=40))
    second = run_copy(plan, config, CopyOptions(workers=2, chunk_rows=40))
    assert second.rows == 0
    assert second.chunks_skipped == first.chunks_total
    assert org_checksums(cells.dsn("cell-2"), plan) == org_checksums(cells.dsn("cell-1"), plan)
    with psycopg.connect(cells.dsn("cell-2")) as conn:
        assert chunk_log_duplicates(conn, plan.move_key) == []
        logged = conn.execute("SELECT count(*) FROM orgmove.chunk_log WHERE move_key = %s",
                              (plan.move_key,)).fetchone()
    assert logged is not None and logged[0] == first.chunks_total


def test_dry_run_writes_nothing(cells) -> None:
    plan, _ = make_plan(cells)
    config = load_config(cells.config_path)
    report = run_copy(plan, config, CopyOptions(dry_run=True))
    assert report.dry_run and report.rows > 0
    with psycopg.connect(cells.dsn("cell-2")) as conn:
        row = conn.execute("SELECT to_regclass('orgmove.moves')").fetchone()
    assert row is not None and row[0] is None
    assert org_row_counts(cells.dsn("cell-2"), 1) == {k: 0 for k in org_row_counts(cells.dsn("cell-2"), 1)}


@pytest.mark.parametrize("org", ["3"])
def test_copy_of_org_with_cross_org_fork(cells, org: str) -> None:
    plan, _ = make_plan(cells, org)
    config = load_config(cells.config_path)
    run_copy(plan, config, CopyOptions(workers=2, chunk_rows=30))
    assert org_checksums(cells.dsn("cell-2"), plan) == org_checksums(cells.dsn("cell-1"), plan)


def test_rate_limit_bounds_the_copy_speed(cells) -> None:
    plan, _ = make_plan(cells)
    config = load_config(cells.config_path)
    import time

    started = time.monotonic()
    report = run_copy(plan, config, CopyOptions(workers=2, chunk_rows=20, rate_rows_per_s=400))
    elapsed = time.monotonic() - started
    # A lower bound only: the limiter may never let the copy run faster than the rate.
    assert report.rows > 200
    assert elapsed >= (report.rows - 20) / 400


def test_permanent_error_stops_naming_table_chunk_and_cause_then_resumes(cells) -> None:
    from tests.helpers import orgmove_cli

    plan, path = make_plan(cells)
    # Something the plan's fingerprint does not cover and the target refuses: a CHECK constraint.
    with psycopg.connect(cells.dsn("cell-2")) as conn:
        conn.execute("ALTER TABLE issues ADD CONSTRAINT no_long_titles CHECK (length(title) < 3) NOT VALID")
    args = ("--config", str(cells.config_path), "copy", str(path), "--chunk-rows", "20")
    failed = orgmove_cli(*args)
    assert failed.returncode == 1, failed.stderr
    assert "public.issues chunk" in failed.stderr and "no_long_titles" in failed.stderr
    assert "Traceback" not in failed.stderr
    with psycopg.connect(cells.dsn("cell-2")) as conn:
        conn.execute("ALTER TABLE issues DROP CONSTRAINT no_long_titles")
    resumed = orgmove_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert org_checksums(cells.dsn("cell-2"), plan) == org_checksums(cells.dsn("cell-1"), plan)
