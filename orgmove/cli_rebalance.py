"""``orgmove rebalance ...`` and ``orgmove worker``: the rebalancer's commands, registered on the
main app by :func:`register` (orgmove/cli.py calls it once)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from orgmove.config import Config, load_config
from orgmove.errors import BadInput
from orgmove.obs import add_secrets

rebalance_app = typer.Typer(help="Automated rebalancing: load, proposals, queued moves.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", envvar="ORGMOVE_JSON", show_envvar=True,
                                       help="Print one JSON document on stdout.")]
RulesOpt = Annotated[str | None, typer.Option("--rules", envvar="ORGMOVE_RULES", show_envvar=True,
                                              help="Sharding rules file (default: [defaults] rules).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Where to write the proposal (default: plans_dir).")]


def register(app: typer.Typer) -> None:
    app.add_typer(rebalance_app, name="rebalance")
    app.command("worker")(worker)


def _config(ctx: typer.Context) -> Config:
    path = ctx.find_root().params.get("config")
    config = load_config(path)
    add_secrets(config.secrets())
    return config


def _emit(as_json: bool, doc: dict[str, Any]) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"ok": True, **doc}, default=str, ensure_ascii=False) + "\n")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def _measure(config: Config, rules: str | None, sample_s: float = 0.0) -> Any:
    from orgmove.rebalance.loadmodel import measure
    from orgmove.topology.client import client_from_config

    if config.topology is None:
        return measure(config, rules_path=rules, sample_s=sample_s)
    with client_from_config(config) as topo:
        return measure(config, rules_path=rules, owner_of=lambda org: topo.owner_of_org(org),
                       sample_s=sample_s)


@rebalance_app.command("report")
def report(
    ctx: typer.Context, rules: RulesOpt = None, as_json: JsonOpt = False,
    sample_s: Annotated[float, typer.Option("--sample-s", min=0,
                                            help="Also sample the write rate over this many seconds.")] = 0.0,
) -> None:
    """The load of every Cell and the estimated size of every organization (catalog statistics).

    Example: orgmove rebalance report --json
    """
    config = _config(ctx)
    load = _measure(config, rules, sample_s)
    if as_json:
        _emit(True, load.model_dump(mode="json"))
        return
    t = Table(title="Cell load")
    for col in ("cell", "orgs", "org bytes", "org rows", "database bytes", "rows (reltuples)", "writes/s"):
        t.add_column(col, justify="left" if col == "cell" else "right")
    for c in load.cells:
        t.add_row(c.cell, str(c.orgs), _mb(c.org_bytes), f"{c.org_rows:,}", _mb(c.total_bytes),
                  f"{c.total_rows:,}", "" if c.writes_per_s is None else f"{c.writes_per_s:,.1f}")
    out.print(t)


def _write_proposal(config: Config, proposal: Any, path: Path | None) -> Path:
    target = path or Path(config.defaults.plans_dir) / f"rebalance-{proposal.id}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(proposal.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return target


def _plan(ctx: typer.Context, rules: str | None, out_path: Path | None, as_json: bool, drain: list[str]) -> None:
    from orgmove.rebalance.proposal import propose

    config = _config(ctx)
    unknown = sorted(set(drain) - set(config.cells))
    if unknown:
        raise BadInput(f"unknown cell {unknown[0]!r} to drain",
                       fix="name a configured cell: " + ", ".join(sorted(config.cells)))
    policy = config.rebalance.model_copy(update={"drain": sorted(set(config.rebalance.drain) | set(drain))})
    proposal = propose(_measure(config, rules), policy)
    path = _write_proposal(config, proposal, out_path)
    if as_json:
        _emit(True, {"proposal_file": str(path), **proposal.model_dump(mode="json")})
        return
    t = Table(title=f"proposal {proposal.id}: {len(proposal.moves)} moves")
    for col in ("wave", "org", "from", "to", "est. bytes", "est. time", "why"):
        t.add_column(col)
    for m in proposal.moves:
        t.add_row(str(m.wave), m.org, m.from_cell, m.to_cell, _mb(m.estimated_bytes), f"{m.estimated_s:.1f} s",
                  m.reason)
    out.print(t)
    out.print("before: " + ", ".join(f"{c} {_mb(b)}" for c, b in proposal.before.items()))
    out.print("after:  " + ", ".join(f"{c} {_mb(b)}" for c, b in proposal.after.items()))
    out.print(f"within the band (+-{proposal.band:.0%} of {_mb(proposal.mean_bytes)}): {proposal.within_band}")
    if proposal.unmovable:
        out.print("pinned on a draining cell (stay): " + ", ".join(proposal.unmovable))
    out.print(f"review it, then: orgmove rebalance start {path}")


@rebalance_app.command("plan")
def plan(ctx: typer.Context, rules: RulesOpt = None, out_path: OutOpt = None, as_json: JsonOpt = False) -> None:
    """Write a reviewable proposal: the moves that bring every Cell within the policy's band.

    Example: orgmove rebalance plan
    """
    _plan(ctx, rules, out_path, as_json, [])


@rebalance_app.command("drain")
def drain(ctx: typer.Context, cell: Annotated[str, typer.Argument(help="The Cell to empty.")],
          rules: RulesOpt = None, out_path: OutOpt = None, as_json: JsonOpt = False) -> None:
    """A proposal that moves every organization (but pinned ones) off CELL.

    Example: orgmove rebalance drain cell-3 && orgmove rebalance start PROPOSAL
    """
    _plan(ctx, rules, out_path, as_json, [cell])


def _read_proposal(path: Path) -> Any:
    from pydantic import ValidationError

    from orgmove.rebalance.proposal import Proposal

    try:
        return Proposal.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read proposal {path}: {exc.strerror}",
                       fix="pass the file `orgmove rebalance plan` wrote") from None
    except ValidationError as exc:
        raise BadInput(f"{path} is not a rebalance proposal ({exc.error_count()} problems)",
                       fix="pass the file `orgmove rebalance plan` wrote, unedited") from None


@rebalance_app.command("start")
def start(ctx: typer.Context, proposal_file: Annotated[Path, typer.Argument(help="Proposal file.")],
          as_json: JsonOpt = False) -> None:
    """Queue one job per move of the proposal; `orgmove worker` processes run them.

    Example: orgmove rebalance start plans/rebalance-0a1b2c3d4e5f.json
    """
    from orgmove.rebalance import queue

    config = _config(ctx)
    proposal = _read_proposal(proposal_file)
    unknown = sorted({c for m in proposal.moves for c in (m.from_cell, m.to_cell)} - set(config.cells))
    if unknown:
        raise BadInput(f"the proposal names cell {unknown[0]!r}, which the config does not know",
                       fix="plan again with this config: `orgmove rebalance plan`")
    jobs = queue.enqueue(config.rebalance.queue_dsn_value(), proposal)
    if as_json:
        _emit(True, {"proposal": proposal.id, "jobs": jobs})
        return
    queued = [j for j in jobs if j.get("job_id")]
    out.print(f"queued {len(queued)} moves of proposal {proposal.id}; run `orgmove worker` to process them")
    for j in jobs:
        if j.get("skipped"):
            out.print(f"  org {j['org']}: skipped ({j['skipped']})")


@rebalance_app.command("status")
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every queued move: its state, phase, progress and lag (seconds since its last report).

    Example: orgmove rebalance status --json
    """
    from orgmove.rebalance import queue

    doc = queue.status(_config(ctx).rebalance.queue_dsn_value())
    if as_json:
        _emit(True, doc)
        return
    t = Table(title="rebalance" + (" (stopped)" if doc["stopped"] else ""))
    for col in ("job", "org", "from", "to", "state", "phase", "attempts", "progress", "lag", "reason"):
        t.add_column(col)
    for m in doc["moves"]:
        t.add_row(str(m["job_id"]), m["org"], m["from_cell"], m["to_cell"], m["state"], m["phase"],
                  str(m["attempts"]), f"{m['progress']:.0%}", f"{m['lag_s']:.0f} s", m["reason"] or "")
    out.print(t)


@rebalance_app.command("stop")
def stop(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """No new moves: queued ones are cancelled, running ones finish or abort before their fence.

    Example: orgmove rebalance stop
    """
    from orgmove.rebalance import queue

    doc = queue.stop(_config(ctx).rebalance.queue_dsn_value())
    if as_json:
        _emit(True, doc)
        return
    out.print(f"stopped: {len(doc['cancelled_jobs'])} queued moves cancelled, {doc['running']} running "
              "(they finish or abort before their fence)")


def worker(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option("--name", envvar="ORGMOVE_WORKER_NAME", show_envvar=True,
                                             help="Worker name (default host:pid).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Exit when the queue is empty.")] = False,
) -> None:
    """Run queued rebalance moves (any number of workers, on any number of machines).

    Example: orgmove worker --metrics-port 9187
    """
    from orgmove.rebalance.worker import run_worker

    run_worker(_config(ctx), name=name, once=once, debug=bool(ctx.find_root().params.get("debug")))
