"""``orgmove sync PLAN``: the stream catch-up in the foreground (orgmove/catchup.py)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from orgmove.catchup import SyncOptions, SyncProgress, run_sync
from orgmove.cli_common import JsonOpt, PlanArg, out, session
from orgmove.movectx import MoveContext

app = typer.Typer()


@app.command()
def sync(
    ctx: typer.Context,
    plan_file: PlanArg,
    until_caught_up: Annotated[bool, typer.Option(
        "--until-caught-up", envvar="ORGMOVE_UNTIL_CAUGHT_UP", show_envvar=True,
        help="Exit 0 once the lag is under --max-lag-s.")] = False,
    max_lag_s: Annotated[float, typer.Option(
        "--max-lag-s", envvar="ORGMOVE_MAX_LAG_S", show_envvar=True, min=0.0,
        help="With --until-caught-up: the lag (seconds) that counts as caught up.")] = 1.0,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", envvar="ORGMOVE_SYNC_MAX_SECONDS", show_envvar=True, min=0.0,
        help="Stop after this many seconds (default: run until caught up or interrupted).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply the org's changes from the copy's slot to the target, exactly once; resumable.

    Shows lag (bytes, seconds), changes/s and whether the target is caught up.

    Example: orgmove sync plans/org-1-cell-1-cell-2.plan.json --until-caught-up --max-lag-s 1
    """
    s = session(ctx, as_json)
    config = s.config()
    plan = s.load_plan(plan_file)
    move_ctx = MoveContext.create(plan, config)

    def show(progress: SyncProgress) -> None:
        if not as_json:
            sys.stderr.write(progress.line() + "\n")
            sys.stderr.flush()

    result = run_sync(move_ctx, SyncOptions(until_caught_up=until_caught_up, max_lag_s=max_lag_s,
                                            max_seconds=max_seconds), show)

    def human() -> None:
        out.print(result.line(), markup=False)
        if result.caught_up:
            out.print(f"next: orgmove cutover {plan_file}", markup=False)

    doc: dict[str, Any] = {"command": "sync", **result.to_json()}
    s.emit(doc, human)



