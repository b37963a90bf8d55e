"""demo: a fresh sandbox, seeded, and a full move of organization 1 from cell-1 to cell-2."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from orgmove.config import load_config
from orgmove.obs import make_progress
from orgmove.sandbox.sandbox import Sandbox

RULES = Path(__file__).resolve().parents[2] / "plans" / "gitlab.rules.yaml"


def rules_path() -> str:
    """The shipped rules: beside the package in a checkout, or ./plans in an image or a run dir."""
    for candidate in (RULES, Path("plans") / "gitlab.rules.yaml"):
        if candidate.exists():
            return str(candidate)
    from orgmove.errors import EnvironmentProblem

    raise EnvironmentProblem("plans/gitlab.rules.yaml was not found",
                             fix="run the demo from the orgmove checkout (or an image that has plans/)")


def run_demo(directory: Path, *, scale: str, keep: bool, console: Console) -> None:
    from orgmove.movejob import run_move
    from orgmove.topology.client import TopologyClient

    box = Sandbox(directory)
    console.print(f"[bold]orgmove demo[/bold]: a fresh sandbox in {box.dir}")
    box.destroy()
    t = time.monotonic()
    box.up()
    console.print(f"  cells cell-1, cell-2 and the Topology Service are up ({time.monotonic() - t:.1f}s)")
    t = time.monotonic()
    seeded = box.seed(orgs=3, scale=scale)
    total = getattr(seeded, "total_rows", 0)
    console.print(f"  seeded 3 organizations ({scale}): {total:,} rows in {time.monotonic() - t:.1f}s")
    config = load_config(box.config_path)
    with TopologyClient(box.topology_url, box.token) as client:
        console.print(f"  the Topology Service says organization 1 lives on {client.owner_of_org(1)}")
    try:
        summary = run_move(
            config, "1", "cell-1", "cell-2", rules=rules_path(), workers=2,
            max_freeze_s=config.defaults.max_freeze_s, progress=make_progress(True),
            say=lambda msg: console.print(msg),
        )
        console.print(summary.table())
        with TopologyClient(box.topology_url, box.token) as client:
            owner = client.owner_of_org(1)
        console.print(f"the Topology Service now says organization 1 lives on [bold]{owner}[/bold]")
    finally:
        if not keep:
            box.down()
            console.print("sandbox stopped (rerun with --keep to explore it)")
        else:
            console.print(f"sandbox kept: eval \"$(orgmove sandbox env --dir {directory})\"")
