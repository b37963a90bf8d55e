"""The move commands: plan, copy, verify, cutover, move, status, rollback, cleanup.

Each command parses its options, calls one library function and emits its result (JSON with
``--json``, else :mod:`orgmove.cli_output`'s rendering).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from orgmove import cli_output, fkcheck, planner
from orgmove.cli_common import (
    AllowTriggersOpt,
    DryRunOpt,
    FromOpt,
    JsonOpt,
    MaxFreezeOpt,
    NoReplicaRoleOpt,
    OrgOpt,
    PlanArg,
    RateOpt,
    RulesOpt,
    Session,
    ToOpt,
    WorkersOpt,
    YesOpt,
    confirm,
    err,
    names,
    out,
    session,
)
from orgmove.copy import CopyOptions, run_copy
from orgmove.cutover import CutoverOptions, run_cutover
from orgmove.errors import BadInput, PlanError
from orgmove.movectx import MoveContext
from orgmove.movejob import owner_lookup, run_move
from orgmove.plan import default_plan_path, read_plan, write_plan
from orgmove.state import AFTER_FLIP
from orgmove.status import move_status, plan_in_use
from orgmove.teardown import run_cleanup, run_rollback
from orgmove.verify import VerifyOptions, VerifyReport, run_verify

app = typer.Typer()


@app.command()
def plan(
    ctx: typer.Context,
    org: OrgOpt,
    from_cell: FromOpt,
    to_cell: ToOpt,
    rules: RulesOpt = None,
    out_path: Annotated[Path | None, typer.Option("--out", envvar="ORGMOVE_PLAN_OUT", show_envvar=True,
                                                  help="Plan file to write.")] = None,
    suggest_rules: Annotated[bool, typer.Option(
        "--suggest-rules", envvar="ORGMOVE_SUGGEST_RULES", show_envvar=True,
        help="Print a draft rules file for unclassified tables and exit.")] = False,
    no_replica_role: NoReplicaRoleOpt = False,
    allow_triggers: AllowTriggersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Walk the org's table graph and write an ordered, reviewable copy plan.

    Example: orgmove plan --org 1 --from cell-1 --to cell-2 --rules plans/gitlab.rules.yaml
    """
    s = session(ctx, as_json)

    config = s.config()
    rules = rules or config.defaults.rules
    if suggest_rules:
        typer.echo(planner.suggest_rules(config, org, from_cell, to_cell, rules), nl=False)
        return
    path = out_path or default_plan_path(config.defaults.plans_dir, org, from_cell, to_cell)
    if _rerun_of_a_plan_in_use(s, path, org, from_cell, to_cell):
        return
    owner_of = owner_lookup(config)
    the_plan = planner.make_plan(config, org, from_cell, to_cell, rules, owner_of=owner_of,
                                 replica_role=not no_replica_role,
                                 allowed_triggers=names(allow_triggers))
    path = out_path or default_plan_path(config.defaults.plans_dir, the_plan.org, from_cell, to_cell)
    write_plan(the_plan, path)
    s.emit({"command": "plan", "plan_file": str(path), "move": the_plan.move_key,
            "plan": json.loads(the_plan.to_json()),
            "ownership_checked": owner_of is not None, "already_done": False},
           lambda: cli_output.print_plan(the_plan, path, owner_of is not None))


def _rerun_of_a_plan_in_use(s: Session, path: Path, org: str, from_cell: str, to_cell: str) -> bool:
    """`plan` while its move is under way (or done): the plan file is the move's, and its copied
    rows on the target are no conflict; keep the file and report it (exit 0)."""
    if not path.exists():
        return False
    try:
        existing = read_plan(path)
    except PlanError:
        return False
    if (str(existing.org), existing.from_cell, existing.to_cell) != (org, from_cell, to_cell):
        return False
    move_state = plan_in_use(s.config(), existing)
    if move_state is None:
        return False

    def human() -> None:
        out.print(f"already done: {path} is the plan of move {existing.move_key} (state {move_state}); "
                  "it was kept unchanged")
        out.print(f"next: orgmove status {path}")

    s.emit({"command": "plan", "plan_file": str(path), "move": existing.move_key,
            "plan": json.loads(existing.to_json()), "ownership_checked": False, "already_done": True}, human)
    return True


@app.command()
def copy(
    ctx: typer.Context,
    plan_file: PlanArg,
    workers: WorkersOpt = None,
    chunk_rows: Annotated[int | None, typer.Option("--chunk-rows", envvar="ORGMOVE_CHUNK_ROWS",
                                                   show_envvar=True, min=1,
                                                   help="Rows per chunk.")] = None,
    rate: RateOpt = None,
    dry_run: DryRunOpt = False,
    no_capture: Annotated[bool, typer.Option(
        "--no-capture", envvar="ORGMOVE_NO_CAPTURE", show_envvar=True,
        help="No publication or slot (roles without REPLICATION): cutover uses checksum rounds.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy the org's rows to the target from one snapshot; resumable.

    Example: orgmove copy plans/org-1-cell-1-cell-2.plan.json --workers 2
    """
    s = session(ctx, as_json)

    config = s.config()
    the_plan = s.load_plan(plan_file)
    d = config.defaults
    options = CopyOptions(
        workers=workers or d.workers,
        chunk_rows=chunk_rows or d.chunk_rows,
        rate_rows_per_s=rate or d.rate_rows_per_s,
        max_replica_lag_s=config.replica_lag_threshold(the_plan.to_cell),
        dry_run=dry_run, capture=not no_capture,
    )
    report = run_copy(the_plan, config, options, s.progress())
    s.emit({"command": "copy", **report.to_json()}, lambda: cli_output.print_copy(report, plan_file))


@app.command()
def verify(
    ctx: typer.Context,
    plan_file: PlanArg,
    workers: WorkersOpt = None,
    tables: Annotated[str | None, typer.Option("--tables", envvar="ORGMOVE_TABLES", show_envvar=True,
                                               help="Only these tables (comma-separated).")] = None,
    examples: Annotated[int, typer.Option("--examples", envvar="ORGMOVE_EXAMPLES", show_envvar=True,
                                          help="Example keys per table.")] = 10,
    foreign_keys: Annotated[bool, typer.Option(
        "--foreign-keys", envvar="ORGMOVE_VERIFY_FOREIGN_KEYS", show_envvar=True,
        help="Also run the set-based foreign-key check of the org's rows on the target "
             "(cutover always runs it before the flip).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare chunk checksums of both Cells; narrow mismatches to rows. Exit 3 on mismatch.

    Example: orgmove verify plans/org-1-cell-1-cell-2.plan.json --json
    """
    s = session(ctx, as_json)

    config = s.config()
    the_plan = s.load_plan(plan_file)
    move_state = plan_in_use(config, the_plan)
    if move_state in AFTER_FLIP:
        # After the flip the target takes new writes and cleanup empties the source: a compare
        # means nothing any more. The cutover's final verify, under the fence, is the record.
        s.emit({"command": "verify", **VerifyReport(the_plan.move_key).to_json(), "foreign_keys": None,
                "already_done": True}, lambda: out.print(
            f"already done: move {the_plan.move_key} is {move_state}; the cutover verified it under the "
            f"fence before the flip\nnext: orgmove status {plan_file}"))
        return
    only = [t.strip() for t in tables.split(",")] if tables else None
    report = run_verify(
        the_plan, config,
        VerifyOptions(workers=workers or config.defaults.workers, tables=only, max_examples=examples),
        s.progress(),
    )

    fks = None
    if foreign_keys:
        # The set-based FK check of the org's rows on the target (the cutover runs it again
        # under the fence): a dangling reference is a mismatch too. Opt-in: it costs about a
        # fifth of a copy on large organizations, and verify's own speed is the freeze's.
        with MoveContext.create(the_plan, config).connect_target("verify") as dst:
            fks = fkcheck.check_foreign_keys(dst, the_plan)

    def human() -> None:
        cli_output.print_verify(report)
        if fks is not None:
            cli_output.print_foreign_keys(fks)
        if report.equal and (fks is None or fks.clean):
            out.print(f"next: orgmove cutover {plan_file} --dry-run")
        else:
            out.print(f"next: rerun `orgmove copy {plan_file}` to re-copy what differs, or let "
                      f"`orgmove cutover {plan_file}` re-copy it under the fence; "
                      "runbooks/04-verify-mismatch.md explains the differences")

    doc = {"command": "verify", **report.to_json(),
           "foreign_keys": fks.to_json() if fks is not None else None, "already_done": False}
    s.emit(doc, human)
    if not report.equal or (fks is not None and not fks.clean):
        raise typer.Exit(3)


@app.command()
def cutover(
    ctx: typer.Context,
    plan_file: PlanArg,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    max_freeze: MaxFreezeOpt = None,
    workers: WorkersOpt = None,
    reverse_stream: Annotated[bool, typer.Option(
        "--reverse-stream", help="Stream the target's writes back to the source from the flip on, "
        "so `orgmove rollback` after the flip loses none of them.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fence writes, sync, verify, flip the org's claims with compare-and-swap.

    Example: orgmove cutover plans/org-1-cell-1-cell-2.plan.json --max-freeze 30 --yes
    """
    s = session(ctx, as_json)

    config = s.config()
    the_plan = s.load_plan(plan_file)
    if not dry_run:
        confirm(f"Cutover moves organization {the_plan.org} from {the_plan.from_cell} to "
                f"{the_plan.to_cell}: its writes freeze until the claims flip.", yes)
    report = run_cutover(
        the_plan, config,
        CutoverOptions(dry_run=dry_run, max_freeze_s=max_freeze or config.defaults.max_freeze_s,
                       workers=workers or config.defaults.workers, reverse_stream=reverse_stream),
        s.progress(),
    )
    s.emit({"command": "cutover", **report.to_json()}, lambda: out.print(report.human(str(plan_file))))
    if report.dry_run and report.refused:
        # The dry run agrees with the real cutover: what it marks NO, the real one refuses (exit 2).
        raise typer.Exit(2)


@app.command()
def move(
    ctx: typer.Context,
    org: OrgOpt,
    from_cell: FromOpt,
    to_cell: ToOpt,
    rules: RulesOpt = None,
    workers: WorkersOpt = None,
    max_freeze: MaxFreezeOpt = None,
    rate: RateOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", envvar="ORGMOVE_DRY_RUN", show_envvar=True,
        help="Write the plan and show what the copy would do; change no Cell.")] = False,
    yes: YesOpt = False,
    no_replica_role: NoReplicaRoleOpt = False,
    allow_triggers: AllowTriggersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan, copy, verify and cut over in one command.

    Example: orgmove move --org 1 --from cell-1 --to cell-2 --yes
    """
    s = session(ctx, as_json)

    config = s.config()
    if not dry_run:
        confirm(f"Move organization {org} from {from_cell} to {to_cell}.", yes)
    summary = run_move(
        config, org, from_cell, to_cell, rules=rules or config.defaults.rules,
        workers=workers or config.defaults.workers,
        max_freeze_s=max_freeze or config.defaults.max_freeze_s,
        progress=s.progress(),
        say=(lambda msg: err.print(msg)) if not as_json else (lambda msg: None),
        replica_role=not no_replica_role, allowed_triggers=names(allow_triggers),
        rate_rows_per_s=rate, dry_run=dry_run,
    )
    s.emit({"command": "move", **summary.to_json()}, lambda: out.print(summary.table()))


@app.command()
def status(
    ctx: typer.Context,
    plan_file: Annotated[Path | None, typer.Argument(help="Plan file.", envvar="ORGMOVE_PLAN",
                                                     show_envvar=True)] = None,
    org: Annotated[str | None, typer.Option("--org", envvar="ORGMOVE_ORG", show_envvar=True,
                                            help="The organization's key (organizations.id).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a move stands: step, chunks, last error, lease, owner, freeze window.

    Example: orgmove status --org 1
    """
    s = session(ctx, as_json)
    if plan_file is None and org is None:
        raise BadInput("status needs a plan file or --org", fix="orgmove status PLAN or orgmove status --org ID")
    config = s.config()
    the_plan = s.load_plan(plan_file) if plan_file else None
    doc = move_status(config, plan=the_plan, org=org)
    s.emit({"command": "status", **doc}, lambda: cli_output.print_status(doc))


@app.command()
def rollback(ctx: typer.Context, plan_file: PlanArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Before the flip: abort and delete the org's copied rows from the target.

    Example: orgmove rollback plans/org-1-cell-1-cell-2.plan.json --yes
    """
    s = session(ctx, as_json)
    config = s.config()
    the_plan = s.load_plan(plan_file)
    doc = run_rollback(the_plan, config, str(plan_file), confirm=lambda: confirm(
        f"Rollback deletes organization {the_plan.org}'s copied rows from {the_plan.to_cell}.", yes))

    def human() -> None:
        if doc["already_done"]:
            out.print(f"already done: {the_plan.move_key} was rolled back earlier; the organization "
                      f"stays on {the_plan.from_cell}, writable")
        else:
            out.print(f"rolled back {the_plan.move_key}: {doc['rows_deleted']:,} rows deleted from "
                      f"{the_plan.to_cell}; the organization stays on {the_plan.from_cell}, writable")

    s.emit({"command": "rollback", **doc}, human)


@app.command()
def cleanup(
    ctx: typer.Context,
    plan_file: PlanArg,
    yes: YesOpt = False,
    batch_rows: Annotated[int, typer.Option("--batch-rows", envvar="ORGMOVE_BATCH_ROWS",
                                            show_envvar=True, min=1,
                                            help="Rows deleted per transaction.")] = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """After the flip: delete the org's rows from the source, children first, in batches.

    Example: orgmove cleanup plans/org-1-cell-1-cell-2.plan.json --yes
    """
    s = session(ctx, as_json)
    config = s.config()
    the_plan = s.load_plan(plan_file)
    doc = run_cleanup(the_plan, config, batch_rows=batch_rows, progress=s.progress(),
                      confirm=lambda: confirm(f"Cleanup deletes organization {the_plan.org}'s rows from "
                                              f"{the_plan.from_cell}.", yes))

    def human() -> None:
        if doc["already_done"]:
            out.print(f"already done: {the_plan.move_key} was cleaned up earlier")
        else:
            out.print(f"cleaned {the_plan.move_key}: {doc['rows_deleted']:,} rows deleted from "
                      f"{the_plan.from_cell}")

    s.emit({"command": "cleanup", **doc}, human)
