"""``orgmove sync PLAN``: the stream catch-up in the foreground (orgmove/catchup.py).

Registered on the main app by :func:`register` (cli.py calls it once), so that this module never
imports cli.py (tests/unit/test_import_layers.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from orgmove.config import Config


class _Globals(Protocol):
    json: bool

    def config(self, required: bool = True) -> Config: ...


def register(app: typer.Typer, globals_: _Globals, emit: Callable[..., None]) -> None:
    @app.command()
    def sync(
        plan_file: Annotated[Path, typer.Argument(help="Plan file written by `orgmove plan`.",
                                                  envvar="ORGMOVE_PLAN", show_envvar=True)],
        until_caught_up: Annotated[bool, typer.Option(
            "--until-caught-up", envvar="ORGMOVE_UNTIL_CAUGHT_UP", show_envvar=True,
            help="Exit 0 once the lag is under --max-lag-s.")] = False,
        max_lag_s: Annotated[float, typer.Option(
            "--max-lag-s", envvar="ORGMOVE_MAX_LAG_S", show_envvar=True, min=0.0,
            help="With --until-caught-up: the lag (seconds) that counts as caught up.")] = 1.0,
        max_seconds: Annotated[float | None, typer.Option(
            "--max-seconds", envvar="ORGMOVE_SYNC_MAX_SECONDS", show_envvar=True, min=0.0,
            help="Stop after this many seconds (default: run until caught up or interrupted).")] = None,
        as_json: Annotated[bool, typer.Option("--json", envvar="ORGMOVE_JSON", show_envvar=True,
                                              help="Print one JSON document on stdout.")] = False,
    ) -> None:
        """Apply the org's changes from the copy's slot to the target, exactly once; resumable.

        Shows lag (bytes, seconds), changes/s and whether the target is caught up.

        Example: orgmove sync plans/org-1-cell-1-cell-2.plan.json --until-caught-up --max-lag-s 1
        """
        globals_.json = as_json
        from orgmove.catchup import SyncOptions, SyncProgress, run_sync
        from orgmove.movectx import MoveContext
        from orgmove.plan import read_plan

        config = globals_.config()
        plan = read_plan(plan_file)
        ctx = MoveContext.create(plan, config)

        def show(progress: SyncProgress) -> None:
            if not as_json:
                sys.stderr.write(progress.line() + "\n")
                sys.stderr.flush()

        result = run_sync(ctx, SyncOptions(until_caught_up=until_caught_up, max_lag_s=max_lag_s,
                                           max_seconds=max_seconds), show)

        def human() -> None:
            print(result.line())
            if result.caught_up:
                print(f"next: orgmove cutover {plan_file}")

        doc: dict[str, Any] = {"command": "sync", **result.to_json()}
        emit(doc, human)
