"""move: plan + copy + sync (catch up from the copy's slot) + verify + cutover in one command,
with a summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from orgmove import planner
from orgmove.catchup import SyncOptions, run_sync
from orgmove.config import Config
from orgmove.copy import CopyOptions, CopyReport, run_copy
from orgmove.cutover import CutoverOptions, CutoverReport, run_cutover
from orgmove.movectx import MoveContext
from orgmove.obs import METRICS, NullProgress, ProgressSink
from orgmove.plan import OrgKey, default_plan_path, write_plan
from orgmove.topology.client import client_from_config
from orgmove.verify import VerifyOptions, VerifyReport, run_verify


@dataclass
class MoveSummary:
    plan_file: str
    copy: CopyReport
    verify: VerifyReport
    cutover: CutoverReport
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan_file": self.plan_file,
            "rows": self.copy.rows,
            "bytes": self.copy.bytes,
            "copy_rows_per_s": round(self.copy.rows_per_s, 1),
            "verify_seconds": round(self.verify.seconds, 3),
            "freeze_window_s": None if self.cutover.freeze_window_s is None
            else round(self.cutover.freeze_window_s, 3),
            "new_owner": self.cutover.new_owner,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "copy": self.copy.to_json(),
            "verify": self.verify.to_json(),
            "cutover": self.cutover.to_json(),
        }

    def table(self) -> Table:
        if self.copy.dry_run:
            t = Table(title=f"dry run: move {self.copy.move_key} (plan written, nothing copied)")
            t.add_column("what")
            t.add_column("value", justify="right")
            t.add_row("plan", self.plan_file)
            t.add_row("tables", str(len(self.copy.tables)))
            t.add_row("rows to copy (est.)", f"{self.copy.rows:,}")
            t.add_row("bytes to copy (est.)", f"{self.copy.bytes / 1e6:,.1f} MB")
            t.add_row("chunks", f"{self.copy.chunks_total:,}")
            return t
        t = Table(title=f"moved {self.copy.move_key}")
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("tables", str(len(self.copy.tables)))
        t.add_row("rows copied", f"{self.copy.rows:,}")
        t.add_row("bytes copied", f"{self.copy.bytes / 1e6:,.1f} MB")
        t.add_row("copy rate", f"{self.copy.rows_per_s:,.0f} rows/s "
                  f"({self.copy.bytes / 1e6 / max(self.copy.seconds, 1e-9):,.1f} MB/s)")
        t.add_row("copy time", f"{self.copy.seconds:.2f} s")
        t.add_row("verify time", f"{self.verify.seconds:.2f} s")
        t.add_row("verify", "equal" if self.verify.equal else "MISMATCH")
        estimated = self.cutover.estimated_freeze_s
        t.add_row("freeze window", f"{(self.cutover.freeze_window_s or 0) * 1000:,.0f} ms"
                  + ("" if estimated is None else f" (estimated {estimated * 1000:,.0f} ms)"))
        t.add_row("new owner", str(self.cutover.new_owner))
        return t


def owner_lookup(config: Config) -> Callable[[OrgKey], str | None] | None:
    """The planner's ownership check: asks the Topology Service which Cell owns an organization.
    None when the config names no Topology Service (the plan then says the check was skipped)."""
    if config.topology is None:
        return None

    def owner_of(org: OrgKey) -> str | None:
        with client_from_config(config) as client:
            return client.owner_of_org(org)

    return owner_of


def run_move(
    config: Config,
    org: str,
    from_cell: str,
    to_cell: str,
    *,
    rules: str | None,
    workers: int,
    max_freeze_s: float,
    progress: ProgressSink | None = None,
    say: Callable[[str], None] = lambda _msg: None,
    plan_path: Path | None = None,
    replica_role: bool = True,
    allowed_triggers: list[str] | None = None,
    rate_rows_per_s: float | None = None,
    dry_run: bool = False,
) -> MoveSummary:
    """``dry_run``: plan (the plan file is written: it is the review), then the copy's dry run;
    neither Cell nor the Topology Service changes, and verify and cutover are not run."""
    progress = progress or NullProgress()
    seconds: dict[str, float] = {}
    t = time.monotonic()
    say(f"[1/4] plan: organization {org}, {from_cell} -> {to_cell}")
    plan = planner.make_plan(config, org, from_cell, to_cell, rules, owner_of=owner_lookup(config),
                             replica_role=replica_role, allowed_triggers=allowed_triggers)
    path = plan_path or default_plan_path(config.defaults.plans_dir, plan.org, from_cell, to_cell)
    write_plan(plan, path)
    seconds["plan"] = time.monotonic() - t
    say(f"      {len(plan.steps)} tables, ~{sum(s.estimated_rows for s in plan.steps):,} rows -> {path}")

    t = time.monotonic()
    say("[2/4] copy")
    options = CopyOptions(workers=workers, chunk_rows=config.defaults.chunk_rows,
                          rate_rows_per_s=rate_rows_per_s or config.defaults.rate_rows_per_s,
                          max_replica_lag_s=config.replica_lag_threshold(to_cell), dry_run=dry_run)
    copy_report = run_copy(plan, config, options, progress)
    seconds["copy"] = time.monotonic() - t
    if dry_run:
        say("      dry run: verify and cutover skipped; nothing was changed")
        return MoveSummary(str(path), copy_report, VerifyReport(plan.move_key),
                           CutoverReport(plan.move_key, str(plan.org), from_cell, to_cell, dry_run=True),
                           seconds)

    if copy_report.capture is not None:
        # Catch up from the copy's slot before verify and cutover (the cutover catches up again).
        t = time.monotonic()
        say("      sync: catching up from the copy's slot")
        synced = run_sync(MoveContext.create(plan, config),
                          SyncOptions(until_caught_up=True, max_lag_s=max(0.5, max_freeze_s / 2), max_seconds=600))
        seconds["sync"] = time.monotonic() - t
        say(f"      {synced.changes:,} changes applied, lag {synced.lag_s:.2f}s")

    t = time.monotonic()
    say("[3/4] verify")
    verify_report = run_verify(plan, config, VerifyOptions(workers=workers), progress)
    seconds["verify"] = time.monotonic() - t
    if not verify_report.equal:
        # Writes since the last applied change make chunks differ; the cutover applies them
        # under the fence (or, without a slot, its sync levels them) and its check decides.
        say(f"      {verify_report.mismatched_chunks} chunks changed since the copy's snapshot; "
            "cutover's sync will level them")

    t = time.monotonic()
    say("[4/4] cutover")
    cut = run_cutover(plan, config, CutoverOptions(max_freeze_s=max_freeze_s, workers=workers), progress)
    seconds["cutover"] = time.monotonic() - t
    for step, secs in seconds.items():
        METRICS.step_seconds.labels(step).observe(secs)
    return MoveSummary(str(path), copy_report, verify_report, cut, seconds)
