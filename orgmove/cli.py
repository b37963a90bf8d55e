"""The orgmove command line: plan, copy, verify, cutover, move, status, rollback, cleanup, sandbox,
topology, demo.

Every flag has an environment-variable twin (shown in ``--help``). ``--json`` prints one JSON
document on stdout and nothing else there. Errors print one paragraph on stderr (the traceback only
with ``--debug``) and exit 2 for bad input, 3 for a verification mismatch, 1 for a failure after
retries.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from orgmove import __version__, cli_sync
from orgmove.config import Config, load_config, redact
from orgmove.db import translate
from orgmove.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    BadInput,
    Interrupted,
    OrgmoveError,
)
from orgmove.obs import METRICS, add_secrets, scrub_secrets, setup_logging

app = typer.Typer(
    name="orgmove",
    help="Move one Organization's data between PostgreSQL Cells.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
sandbox_app = typer.Typer(help="The embedded default: local Cells and a Topology Service.",
                          no_args_is_help=True)
topology_app = typer.Typer(help="The Topology Service.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(topology_app, name="topology")


@dataclass
class Globals:
    config_path: str | None = None
    debug: bool = False
    json: bool = False
    log_format: str = "human"
    metrics_file: str | None = None
    metrics_port: int | None = None
    _config: Config | None = field(default=None, repr=False)

    def config(self, required: bool = True) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, required=required)
            add_secrets(self._config.secrets())
        return self._config


G = Globals()
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        print(f"orgmove {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    config: Annotated[str | None, typer.Option("--config", envvar="ORGMOVE_CONFIG", show_envvar=True,
                                               help="Config file (default ./orgmove.toml).")] = None,
    debug: Annotated[bool, typer.Option("--debug", envvar="ORGMOVE_DEBUG", show_envvar=True,
                                        help="Show tracebacks and debug logs.")] = False,
    log_format: Annotated[str, typer.Option("--log-format", envvar="ORGMOVE_LOG_FORMAT",
                                            show_envvar=True, help="human or json logs on stderr.")] = "human",
    metrics_file: Annotated[str | None, typer.Option(
        "--metrics-file", envvar="ORGMOVE_METRICS_FILE", show_envvar=True,
        help="Write Prometheus metrics to this file (textfile collector) at exit.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", envvar="ORGMOVE_METRICS_PORT", show_envvar=True,
        help="Serve Prometheus metrics on this port while the command runs.")] = None,
    metrics_addr: Annotated[str, typer.Option(
        "--metrics-addr", envvar="ORGMOVE_METRICS_ADDR", show_envvar=True,
        help="Address the metrics endpoint listens on (0.0.0.0 in a container).")] = "127.0.0.1",
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """Move one Organization's data between PostgreSQL Cells.

    Example: orgmove plan --org 1 --from cell-1 --to cell-2
    """
    G.config_path = config
    G.debug = debug
    G.log_format = log_format
    G.metrics_file = metrics_file
    G.metrics_port = metrics_port
    setup_logging(fmt=log_format, debug=debug)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_addr, registry=METRICS.registry)


# --- shared options ------------------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", envvar="ORGMOVE_JSON", show_envvar=True,
                                       help="Print one JSON document on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", envvar="ORGMOVE_YES", show_envvar=True,
                                      help="Do not ask for confirmation.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", envvar="ORGMOVE_DRY_RUN", show_envvar=True,
                                         help="Check everything, change nothing.")]
PlanArg = Annotated[Path, typer.Argument(help="Plan file written by `orgmove plan`.",
                                         envvar="ORGMOVE_PLAN", show_envvar=True)]
WorkersOpt = Annotated[int | None, typer.Option("--workers", envvar="ORGMOVE_WORKERS", show_envvar=True,
                                                min=1, max=64, help="Parallel workers.")]
NoReplicaRoleOpt = Annotated[bool, typer.Option(
    "--no-replica-role", envvar="ORGMOVE_NO_REPLICA_ROLE", show_envvar=True,
    help="Write on the target as a plain client (its triggers fire), for targets that refuse "
         "GRANT SET ON PARAMETER session_replication_role.")]
AllowTriggersOpt = Annotated[str | None, typer.Option(
    "--allow-triggers", envvar="ORGMOVE_ALLOW_TRIGGERS", show_envvar=True,
    help="Comma-separated NAME or TABLE.NAME of target triggers accepted to fire on the copied rows.")]


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def emit(doc: dict[str, Any], human: Any = None) -> None:
    """The command's result: JSON on stdout with --json, else the human rendering."""
    if G.json:
        sys.stdout.write(json.dumps({"ok": True, **doc}, default=str, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    elif human is not None:
        human()


def _progress_enabled() -> bool:
    return not G.json


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadInput(
            f"{question} needs confirmation and there is no terminal to ask",
            fix="pass --yes (env ORGMOVE_YES=1) to confirm non-interactively",
        )
    if not typer.confirm(question + " Continue?", default=False, err=True):
        raise BadInput("not confirmed; nothing was changed", fix="rerun and answer yes, or pass --yes")


def _load_plan(path: Path) -> Any:
    from orgmove.plan import read_plan

    return read_plan(path)


# --- plan ----------------------------------------------------------------------------------------


@app.command()
def plan(
    org: Annotated[str, typer.Option("--org", envvar="ORGMOVE_ORG", show_envvar=True,
                                     help="The organization's key (organizations.id).")],
    from_cell: Annotated[str, typer.Option("--from", envvar="ORGMOVE_FROM", show_envvar=True,
                                           help="Source cell name.")],
    to_cell: Annotated[str, typer.Option("--to", envvar="ORGMOVE_TO", show_envvar=True,
                                         help="Target cell name.")],
    rules: Annotated[str | None, typer.Option("--rules", envvar="ORGMOVE_RULES", show_envvar=True,
                                              help="Sharding rules YAML, or a db/docs directory.")] = None,
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
    G.json = as_json
    from orgmove import planner
    from orgmove.movejob import owner_lookup
    from orgmove.plan import default_plan_path, write_plan

    config = G.config()
    rules = rules or config.defaults.rules
    if suggest_rules:
        sys.stdout.write(planner.suggest_rules(config, org, from_cell, to_cell, rules))
        return
    owner_of = owner_lookup(config)
    the_plan = planner.make_plan(config, org, from_cell, to_cell, rules, owner_of=owner_of,
                                 replica_role=not no_replica_role,
                                 allowed_triggers=_names(allow_triggers))
    path = out_path or default_plan_path(config.defaults.plans_dir, the_plan.org, from_cell, to_cell)
    write_plan(the_plan, path)

    def human() -> None:
        table = Table(title=f"plan {the_plan.move_key} -> {path}")
        for col in ("#", "table", "est. rows", "est. bytes", "key", "filter"):
            table.add_column(col, overflow="fold")
        for i, step in enumerate(the_plan.steps, 1):
            table.add_row(str(i), step.table, f"{step.estimated_rows:,}", _bytes(step.estimated_bytes),
                          ",".join(step.key) or "(whole set)", step.filter_sql[:90])
        out.print(table)
        _print_triggers(the_plan)
        out.print(f"{len(the_plan.steps)} tables to copy, "
                  f"{sum(s.estimated_rows for s in the_plan.steps):,} rows estimated; "
                  f"{len(the_plan.skipped)} skipped; "
                  f"{len(the_plan.cluster_wide_refs)} cluster-wide references checked on the target.")
        if owner_of is None:
            out.print("note: no Topology Service configured: the ownership check was skipped.")
        for warning in the_plan.warnings:
            out.print(f"[bold yellow]warning:[/bold yellow] {warning}")
        out.print(f"next: orgmove copy {path}")

    emit({"command": "plan", "plan_file": str(path), "move": the_plan.move_key,
          "plan": json.loads(the_plan.to_json()),
          "ownership_checked": owner_of is not None}, human)


def _print_triggers(the_plan: Any) -> None:
    rows = [(s.table, t) for s in the_plan.steps for t in s.triggers]
    mode = "as a replica" if the_plan.replica_role else "as a plain client (--no-replica-role)"
    if not rows:
        out.print(f"target writes {mode}; no user triggers on the planned tables.")
        return
    table = Table(title=f"target triggers (the move writes {mode})")
    for col in ("table", "trigger", "timing", "enabled", "the move"):
        table.add_column(col, overflow="fold")
    for step_table, t in rows:
        on = t.table if t.table != step_table else step_table
        verdict = ("fires (allowed)" if t.allowed else "fires") if t.fires else "skipped"
        table.add_row(on, t.name, f"{t.timing} {'/'.join(t.events)} {t.level}", t.enabled, verdict)
    out.print(table)


# --- copy ----------------------------------------------------------------------------------------


@app.command()
def copy(
    plan_file: PlanArg,
    workers: WorkersOpt = None,
    chunk_rows: Annotated[int | None, typer.Option("--chunk-rows", envvar="ORGMOVE_CHUNK_ROWS",
                                                   show_envvar=True, min=1,
                                                   help="Rows per chunk.")] = None,
    rate: Annotated[float | None, typer.Option("--rate", envvar="ORGMOVE_RATE", show_envvar=True,
                                               help="Limit to this many rows per second.")] = None,
    dry_run: DryRunOpt = False,
    no_capture: Annotated[bool, typer.Option(
        "--no-capture", envvar="ORGMOVE_NO_CAPTURE", show_envvar=True,
        help="No publication or slot (roles without REPLICATION): cutover uses checksum rounds.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy the org's rows to the target from one snapshot; resumable.

    Example: orgmove copy plans/org-1-cell-1-cell-2.plan.json --workers 2
    """
    G.json = as_json
    from orgmove.copy import CopyOptions, run_copy
    from orgmove.obs import make_progress

    config = G.config()
    the_plan = _load_plan(plan_file)
    d = config.defaults
    options = CopyOptions(
        workers=workers or d.workers,
        chunk_rows=chunk_rows or d.chunk_rows,
        rate_rows_per_s=rate or d.rate_rows_per_s,
        max_replica_lag_s=config.replica_lag_threshold(the_plan.to_cell),
        dry_run=dry_run, capture=not no_capture,
    )
    report = run_copy(the_plan, config, options, make_progress(_progress_enabled()))

    def human() -> None:
        if report.dry_run:
            table = Table(title=f"dry run: copy {report.move_key} (nothing written)")
            for col in ("table", "est. rows", "est. bytes", "chunks", "already done"):
                table.add_column(col)
            for t in report.tables.values():
                table.add_row(t.table, f"{t.rows:,}", _bytes(t.bytes), str(t.chunks), str(t.chunks_skipped))
            out.print(table)
            out.print(f"would copy ~{report.rows:,} rows ({_bytes(report.bytes)}) in "
                      f"{report.chunks_total} chunks")
            if report.capture:
                cap = report.capture
                out.print(f"would create on {report.from_cell}: publication {cap['publication']}, logical slot "
                          f"{cap['slot']}; on {report.to_cell}: replication origin {cap['origin']}; "
                          f"REPLICA IDENTITY FULL: {', '.join(cap['replica_identity_full']) or 'none'}")
            return
        out.print(f"copied {report.rows:,} rows ({_bytes(report.bytes)}) in {report.seconds:.1f}s "
                  f"({report.rows_per_s:,.0f} rows/s); chunks: {report.chunks_copied} copied, "
                  f"{report.chunks_skipped} already done; snapshot consistent: "
                  f"{report.snapshot_consistent}")
        out.print(f"next: orgmove verify {plan_file}")

    emit({"command": "copy", **report.to_json()}, human)


# --- verify --------------------------------------------------------------------------------------


@app.command()
def verify(
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
    G.json = as_json
    from orgmove.obs import make_progress
    from orgmove.verify import VerifyOptions, run_verify

    config = G.config()
    the_plan = _load_plan(plan_file)
    only = [t.strip() for t in tables.split(",")] if tables else None
    report = run_verify(
        the_plan, config,
        VerifyOptions(workers=workers or config.defaults.workers, tables=only, max_examples=examples),
        make_progress(_progress_enabled()),
    )

    fks = None
    if foreign_keys:
        # The set-based FK check of the org's rows on the target (the cutover runs it again
        # under the fence): a dangling reference is a mismatch too. Opt-in: it costs about a
        # fifth of a copy on large organizations, and verify's own speed is the freeze's.
        from orgmove import fkcheck
        from orgmove.movectx import MoveContext

        with MoveContext.create(the_plan, config).connect_target("verify") as dst:
            fks = fkcheck.check_foreign_keys(dst, the_plan)

    def human() -> None:
        _print_verify(report)
        if fks is not None:
            if fks.clean:
                out.print(f"foreign keys: {fks.checked} checked, none dangling ({fks.seconds:.2f}s)")
            for d in fks.dangling:
                out.print(f"[bold red]dangling:[/bold red] {d.table} {d.constraint} -> {d.ref_table}: "
                          f"{', '.join(d.keys)}")

    doc = {"command": "verify", **report.to_json(),
           "foreign_keys": fks.to_json() if fks is not None else None}
    emit(doc, human)
    if not report.equal or (fks is not None and not fks.clean):
        raise typer.Exit(3)


def _print_verify(report: Any) -> None:
    table = Table(title=f"verify {report.move_key}")
    for col in ("table", "rows source", "rows target", "chunks", "mismatched", "examples"):
        table.add_column(col, overflow="fold")
    for t in report.tables.values():
        ex = "; ".join(f"{e.kind} {e.key}" for e in t.examples[:3])
        table.add_row(t.table, f"{t.source_rows:,}", f"{t.target_rows:,}", str(t.chunks),
                      str(t.mismatched_chunks), ex)
    out.print(table)
    verdict = "EQUAL" if report.equal else "MISMATCH"
    out.print(f"{verdict}: {report.source_rows:,} rows on the source, {report.target_rows:,} on the "
              f"target, {report.seconds:.1f}s")


# --- cutover / move / rollback / cleanup / status -------------------------------------------------


@app.command()
def cutover(
    plan_file: PlanArg,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    max_freeze: Annotated[float | None, typer.Option(
        "--max-freeze", envvar="ORGMOVE_MAX_FREEZE", show_envvar=True,
        help="Abort if the write freeze would exceed this many seconds.")] = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fence writes, sync, verify, flip the org's claims with compare-and-swap.

    Example: orgmove cutover plans/org-1-cell-1-cell-2.plan.json --max-freeze 30 --yes
    """
    G.json = as_json
    from orgmove.cutover import CutoverOptions, run_cutover
    from orgmove.obs import make_progress

    config = G.config()
    the_plan = _load_plan(plan_file)
    if not dry_run:
        _confirm(f"Cutover moves organization {the_plan.org} from {the_plan.from_cell} to "
                 f"{the_plan.to_cell}: its writes freeze until the claims flip.", yes)
    report = run_cutover(
        the_plan, config,
        CutoverOptions(dry_run=dry_run, max_freeze_s=max_freeze or config.defaults.max_freeze_s,
                       workers=workers or config.defaults.workers),
        make_progress(_progress_enabled()),
    )

    def human() -> None:
        out.print(report.human())

    emit({"command": "cutover", **report.to_json()}, human)


@app.command()
def move(
    org: Annotated[str, typer.Option("--org", envvar="ORGMOVE_ORG", show_envvar=True)],
    from_cell: Annotated[str, typer.Option("--from", envvar="ORGMOVE_FROM", show_envvar=True)],
    to_cell: Annotated[str, typer.Option("--to", envvar="ORGMOVE_TO", show_envvar=True)],
    rules: Annotated[str | None, typer.Option("--rules", envvar="ORGMOVE_RULES", show_envvar=True)] = None,
    workers: WorkersOpt = None,
    max_freeze: Annotated[float | None, typer.Option("--max-freeze", envvar="ORGMOVE_MAX_FREEZE",
                                                     show_envvar=True)] = None,
    yes: YesOpt = False,
    no_replica_role: NoReplicaRoleOpt = False,
    allow_triggers: AllowTriggersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan, copy, verify and cut over in one command.

    Example: orgmove move --org 1 --from cell-1 --to cell-2 --yes
    """
    G.json = as_json
    from orgmove.movejob import run_move
    from orgmove.obs import make_progress

    config = G.config()
    _confirm(f"Move organization {org} from {from_cell} to {to_cell}.", yes)
    summary = run_move(
        config, org, from_cell, to_cell, rules=rules or config.defaults.rules,
        workers=workers or config.defaults.workers,
        max_freeze_s=max_freeze or config.defaults.max_freeze_s,
        progress=make_progress(_progress_enabled()),
        say=(lambda msg: err.print(msg)) if not as_json else (lambda msg: None),
        replica_role=not no_replica_role, allowed_triggers=_names(allow_triggers),
    )

    def human() -> None:
        out.print(summary.table())

    emit({"command": "move", **summary.to_json()}, human)


@app.command()
def status(
    plan_file: Annotated[Path | None, typer.Argument(help="Plan file.", envvar="ORGMOVE_PLAN",
                                                     show_envvar=True)] = None,
    org: Annotated[str | None, typer.Option("--org", envvar="ORGMOVE_ORG", show_envvar=True)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a move stands: step, chunks, last error, lease, owner, freeze window.

    Example: orgmove status --org 1
    """
    G.json = as_json
    from orgmove.status import move_status

    if plan_file is None and org is None:
        raise BadInput("status needs a plan file or --org", fix="orgmove status PLAN or orgmove status --org ID")
    config = G.config()
    the_plan = _load_plan(plan_file) if plan_file else None
    doc = move_status(config, plan=the_plan, org=org)

    def human() -> None:
        for mv in doc["moves"] or [{}]:
            for k, v in mv.items():
                out.print(f"{k:>20}: {v}")
        out.print(f"{'owner':>20}: {doc.get('owner')}")

    emit({"command": "status", **doc}, human)


@app.command()
def rollback(plan_file: PlanArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Before the flip: abort and delete the org's copied rows from the target.

    Example: orgmove rollback plans/org-1-cell-1-cell-2.plan.json --yes
    """
    G.json = as_json
    from orgmove.teardown import run_rollback

    config = G.config()
    the_plan = _load_plan(plan_file)
    _confirm(f"Rollback deletes organization {the_plan.org}'s copied rows from {the_plan.to_cell}.", yes)
    doc = run_rollback(the_plan, config)
    emit({"command": "rollback", **doc}, lambda: out.print(
        f"rolled back {the_plan.move_key}: {doc['rows_deleted']:,} rows deleted from {the_plan.to_cell}; "
        f"the organization stays on {the_plan.from_cell}, writable"))


@app.command()
def cleanup(
    plan_file: PlanArg,
    yes: YesOpt = False,
    batch_rows: Annotated[int, typer.Option("--batch-rows", envvar="ORGMOVE_BATCH_ROWS",
                                            show_envvar=True, min=1)] = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """After the flip: delete the org's rows from the source, children first, in batches.

    Example: orgmove cleanup plans/org-1-cell-1-cell-2.plan.json --yes
    """
    G.json = as_json
    from orgmove.obs import make_progress
    from orgmove.teardown import run_cleanup

    config = G.config()
    the_plan = _load_plan(plan_file)
    _confirm(f"Cleanup deletes organization {the_plan.org}'s rows from {the_plan.from_cell}.", yes)
    doc = run_cleanup(the_plan, config, batch_rows=batch_rows, progress=make_progress(_progress_enabled()))
    emit({"command": "cleanup", **doc}, lambda: out.print(
        f"cleaned {the_plan.move_key}: {doc['rows_deleted']:,} rows deleted from {the_plan.from_cell}"))


# --- sandbox -------------------------------------------------------------------------------------

DirOpt = Annotated[Path, typer.Option("--dir", envvar="ORGMOVE_SANDBOX_DIR", show_envvar=True,
                                      help="Sandbox directory.")]


@sandbox_app.command("up")
def sandbox_up(directory: DirOpt = Path(".orgmove/sandbox"), as_json: JsonOpt = False) -> None:
    """Start local cell-1, cell-2 and the Topology Service (idempotent).

    Example: orgmove sandbox up && eval "$(orgmove sandbox env)"
    """
    G.json = as_json
    from orgmove.sandbox.sandbox import Sandbox

    doc = Sandbox(directory).up()
    emit({"command": "sandbox up", **doc}, lambda: out.print(
        f"sandbox up in {doc['dir']}; config: {doc['config']}\n"
        f"next: eval \"$(orgmove sandbox env --dir {directory})\" && orgmove sandbox seed"))


@sandbox_app.command("seed")
def sandbox_seed(
    directory: DirOpt = Path(".orgmove/sandbox"),
    orgs: Annotated[int, typer.Option("--orgs", envvar="ORGMOVE_SEED_ORGS", show_envvar=True, min=1)] = 3,
    scale: Annotated[str, typer.Option("--scale", envvar="ORGMOVE_SEED_SCALE", show_envvar=True,
                                       help="tiny, small, medium or large.")] = "small",
    as_json: JsonOpt = False,
) -> None:
    """Load the GitLab-shaped fixture schema and deterministic data into the sandbox Cells.

    Example: orgmove sandbox seed --orgs 3 --scale small
    """
    G.json = as_json
    from orgmove.sandbox.sandbox import Sandbox

    box = Sandbox(directory)
    box.up()
    report = box.seed(orgs=orgs, scale=scale)
    doc = report.to_json() if hasattr(report, "to_json") else report.model_dump()
    emit({"command": "sandbox seed", **doc}, lambda: out.print(
        f"seeded {doc.get('total_rows', 0):,} rows in {doc.get('seconds', 0):.1f}s "
        f"({doc.get('rows_per_s', 0):,.0f} rows/s)"))


@sandbox_app.command("down")
def sandbox_down(directory: DirOpt = Path(".orgmove/sandbox")) -> None:
    """Stop the sandbox's Cells and Topology Service (data is kept).

    Example: orgmove sandbox down
    """
    from orgmove.sandbox.sandbox import Sandbox

    Sandbox(directory).down()
    out.print("sandbox stopped")


@sandbox_app.command("env")
def sandbox_env(directory: DirOpt = Path(".orgmove/sandbox")) -> None:
    """Print the shell line that points orgmove at the sandbox.

    Example: eval "$(orgmove sandbox env)"
    """
    from orgmove.sandbox.sandbox import Sandbox

    print(Sandbox(directory).env_line())


# --- topology ------------------------------------------------------------------------------------


@topology_app.command("serve")
def topology_serve(
    listen: Annotated[str, typer.Option("--listen", envvar="ORGMOVE_TOPOLOGY_LISTEN", show_envvar=True,
                                        help="HOST:PORT")] = "127.0.0.1:7480",
    dsn: Annotated[str | None, typer.Option("--dsn", envvar="ORGMOVE_TOPOLOGY_DSN", show_envvar=True,
                                            help="PostgreSQL DSN of the service's database.")] = None,
) -> None:
    """Run the Topology Service (HTTP/JSON; bearer token from ORGMOVE_TOPOLOGY_TOKEN).

    Example: ORGMOVE_TOPOLOGY_TOKEN=s3cret orgmove topology serve --listen 127.0.0.1:7480 --dsn postgresql://...
    """
    import os

    from orgmove.topology.server import serve

    if not dsn:
        raise BadInput("the Topology Service needs a database", fix="pass --dsn or set ORGMOVE_TOPOLOGY_DSN")
    serve(listen, dsn, os.environ.get("ORGMOVE_TOPOLOGY_TOKEN"))


# --- demo ----------------------------------------------------------------------------------------


@app.command()
def demo(
    directory: DirOpt = Path(".orgmove/demo"),
    scale: Annotated[str, typer.Option("--scale", envvar="ORGMOVE_DEMO_SCALE", show_envvar=True)] = "medium",
    keep: Annotated[bool, typer.Option("--keep", envvar="ORGMOVE_DEMO_KEEP", show_envvar=True,
                                       help="Leave the sandbox running afterwards.")] = False,
) -> None:
    """Start a fresh sandbox, seed it, and move organization 1 from cell-1 to cell-2.

    Example: orgmove demo --scale small
    """
    from orgmove.sandbox.demo import run_demo

    run_demo(directory, scale=scale, keep=keep, console=out)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


cli_sync.register(app, G, emit)  # `orgmove sync` (orgmove/cli_sync.py)


# --- entry point ---------------------------------------------------------------------------------


def _write_metrics() -> None:
    if G.metrics_file:
        try:
            METRICS.write_textfile(G.metrics_file)
        except OSError as exc:
            err.print(f"warning: cannot write metrics to {G.metrics_file}: {exc}")


def _scrub(text: str) -> str:
    secrets = G._config.secrets() if G._config is not None else []
    return scrub_secrets(redact(text), secrets)


def _fail(exc: OrgmoveError) -> int:
    if G.json:
        doc = json.loads(_scrub(json.dumps({"ok": False, "error": exc.to_json()}, default=str)))
        sys.stdout.write(json.dumps(doc) + "\n")
    sys.stderr.write(f"orgmove: error: {_scrub(str(exc))}\n")
    if G.debug:
        traceback.print_exc()
    return exc.exit_code


GLOBAL_VALUE_OPTIONS = ("--config", "--log-format", "--metrics-file", "--metrics-port", "--metrics-addr")
GLOBAL_FLAGS = ("--debug",)


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let global options stand anywhere (``orgmove plan --config F``), as operators type them."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in GLOBAL_VALUE_OPTIONS:
            if "=" in arg:
                front.append(arg)
            elif i + 1 < len(argv):
                front += [arg, argv[i + 1]]
                i += 1
            else:
                rest.append(arg)
        elif arg in GLOBAL_FLAGS:
            front.append(arg)
        elif arg == "--":
            rest += argv[i:]
            break
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> None:
    code = 0
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    try:
        result = app(args=args, standalone_mode=False)
        if isinstance(result, int):
            code = result
        if code == Interrupted.exit_code:
            # Typer turns a KeyboardInterrupt (SIGINT) into a silent Exit(130) when not in
            # standalone mode: say what happened and how to go on.
            code = _fail(Interrupted("interrupted by the operator",
                                     fix="rerun the same command to resume; `orgmove status` shows "
                                     "where it stopped"))
    except typer.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except OrgmoveError as exc:
        code = _fail(exc)
    except KeyboardInterrupt:
        code = _fail(Interrupted("interrupted by the operator",
                                 fix="rerun the same command to resume; `orgmove status` shows where it stopped"))
    except psycopg.Error as exc:  # a driver error that escaped its module's translation
        code = _fail(translate(exc, cell="a cell"))
    except typer.Abort:
        code = _fail(Interrupted("aborted", fix="rerun the command"))
    except Exception as exc:  # usage errors and anything unexpected
        if isinstance(exc, typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            if "--json" in args:
                usage = BadInput(str(getattr(exc, "message", exc)), fix="see `orgmove COMMAND --help`")
                sys.stdout.write(json.dumps({"ok": False, "error": usage.to_json()}) + "\n")
            code = EXIT_BAD_INPUT
        else:
            logging.getLogger("orgmove").debug("internal error", exc_info=True)
            sys.stderr.write(
                f"orgmove: internal error: {type(exc).__name__}: {redact(str(exc))} "
                "(this is a bug; rerun with --debug for the traceback)\n"
            )
            if G.debug:
                traceback.print_exc()
            if G.json:
                internal = OrgmoveError(f"internal error: {type(exc).__name__}", fix="rerun with --debug")
                sys.stdout.write(json.dumps({"ok": False, "error": {**internal.to_json(), "code": "internal"}}) + "\n")
            code = EXIT_FAILED
    finally:
        _write_metrics()
    sys.exit(code)
