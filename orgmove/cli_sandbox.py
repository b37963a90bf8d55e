"""The development commands: ``sandbox`` (local Cells and a Topology Service), ``topology serve``
and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orgmove.cli_common import DirOpt, JsonOpt, out, session
from orgmove.errors import BadInput
from orgmove.sandbox.demo import run_demo
from orgmove.sandbox.sandbox import Sandbox

sandbox_app = typer.Typer(help="The embedded default: local Cells and a Topology Service.",
                          no_args_is_help=True)
topology_app = typer.Typer(help="The Topology Service.", no_args_is_help=True)
app = typer.Typer()  # top-level commands (demo)

SANDBOX_DIR = Path(".orgmove/sandbox")


@sandbox_app.command("up")
def sandbox_up(ctx: typer.Context, directory: DirOpt = SANDBOX_DIR, as_json: JsonOpt = False) -> None:
    """Start local cell-1, cell-2 and the Topology Service (idempotent).

    Example: orgmove sandbox up && eval "$(orgmove sandbox env)"
    """
    s = session(ctx, as_json)
    doc = Sandbox(directory).up()
    s.emit({"command": "sandbox up", **doc}, lambda: out.print(
        f"sandbox up in {doc['dir']}; config: {doc['config']}\n"
        f"next: eval \"$(orgmove sandbox env --dir {directory})\" && orgmove sandbox seed"))


@sandbox_app.command("seed")
def sandbox_seed(
    ctx: typer.Context,
    directory: DirOpt = SANDBOX_DIR,
    orgs: Annotated[int, typer.Option("--orgs", envvar="ORGMOVE_SEED_ORGS", show_envvar=True, min=1,
                                      help="Number of organizations to create.")] = 3,
    scale: Annotated[str, typer.Option("--scale", envvar="ORGMOVE_SEED_SCALE", show_envvar=True,
                                       help="tiny, small, medium or large.")] = "small",
    as_json: JsonOpt = False,
) -> None:
    """Load the GitLab-shaped fixture schema and deterministic data into the sandbox Cells.

    Example: orgmove sandbox seed --orgs 3 --scale small
    """
    s = session(ctx, as_json)
    box = Sandbox(directory)
    box.up()
    report = box.seed(orgs=orgs, scale=scale)
    doc = report.to_json() if hasattr(report, "to_json") else report.model_dump()
    s.emit({"command": "sandbox seed", **doc}, lambda: out.print(
        f"seeded {doc.get('total_rows', 0):,} rows in {doc.get('seconds', 0):.1f}s "
        f"({doc.get('rows_per_s', 0):,.0f} rows/s)"))


@sandbox_app.command("down")
def sandbox_down(directory: DirOpt = SANDBOX_DIR) -> None:
    """Stop the sandbox's Cells and Topology Service (data is kept).

    Example: orgmove sandbox down
    """
    Sandbox(directory).down()
    out.print("sandbox stopped")


@sandbox_app.command("env")
def sandbox_env(directory: DirOpt = SANDBOX_DIR) -> None:
    """Print the shell line that points orgmove at the sandbox.

    Example: eval "$(orgmove sandbox env)"
    """
    print(Sandbox(directory).env_line())


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

    # In the function: the server pulls in uvicorn and fastapi, which no other command needs.
    from orgmove.topology.server import serve

    if not dsn:
        raise BadInput("the Topology Service needs a database", fix="pass --dsn or set ORGMOVE_TOPOLOGY_DSN")
    serve(listen, dsn, os.environ.get("ORGMOVE_TOPOLOGY_TOKEN"))


@app.command()
def demo(
    directory: DirOpt = Path(".orgmove/demo"),
    scale: Annotated[str, typer.Option("--scale", envvar="ORGMOVE_DEMO_SCALE", show_envvar=True,
                                       help="tiny, small, medium or large.")] = "medium",
    keep: Annotated[bool, typer.Option("--keep", envvar="ORGMOVE_DEMO_KEEP", show_envvar=True,
                                       help="Leave the sandbox running afterwards.")] = False,
) -> None:
    """Start a fresh sandbox, seed it, and move organization 1 from cell-1 to cell-2.

    Example: orgmove demo --scale small
    """
    run_demo(directory, scale=scale, keep=keep, console=out)
