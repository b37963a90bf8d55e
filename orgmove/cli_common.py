"""What every CLI command module shares: the per-invocation :class:`Session` (typer's context
object, ``ctx.obj``), the shared option types, result emission and confirmation.

The session is created by :func:`orgmove.cli.main` and handed to click as ``obj``, so the error
handler there reads the same ``--json`` / ``--debug`` settings a command set, without a global.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from orgmove.config import Config, load_config
from orgmove.errors import BadInput
from orgmove.obs import add_secrets

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Session:
    """One invocation's global settings and its lazily loaded config."""

    config_path: str | None = None
    debug: bool = False
    json: bool = False
    log_format: str = "human"
    metrics_file: str | None = None
    metrics_port: int | None = None
    loaded_config: Config | None = field(default=None, repr=False)

    def config(self, required: bool = True) -> Config:
        if self.loaded_config is None:
            self.loaded_config = load_config(self.config_path, required=required)
            add_secrets(self.loaded_config.secrets())
        return self.loaded_config

    def secrets(self) -> list[str]:
        return self.loaded_config.secrets() if self.loaded_config is not None else []

    @property
    def progress_enabled(self) -> bool:
        return not self.json

    def emit(self, doc: dict[str, Any], human: Callable[[], None] | None = None) -> None:
        """The command's result: JSON on stdout with --json, else the human rendering."""
        if self.json:
            sys.stdout.write(json.dumps({"ok": True, **doc}, default=str, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif human is not None:
            human()


def session(ctx: typer.Context, as_json: bool | None = None) -> Session:
    """The invocation's session (created on first use when the app runs outside ``main``)."""
    s = ctx.ensure_object(Session)
    if as_json is not None:
        s.json = as_json
    return s


def confirm(action: str, yes: bool) -> None:
    """Ask before a change; ``action`` is a full sentence describing it."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadInput(
            f"{action.rstrip('.')}. This needs confirmation and there is no terminal to ask",
            fix="pass --yes (env ORGMOVE_YES=1) to confirm non-interactively",
        )
    if not typer.confirm(action + " Continue?", default=False, err=True):
        raise BadInput("Not confirmed, so nothing was changed", fix="rerun and answer yes, or pass --yes")


def names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def load_plan(path: Path) -> Any:
    from orgmove.plan import read_plan

    return read_plan(path)


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
OrgOpt = Annotated[str, typer.Option("--org", envvar="ORGMOVE_ORG", show_envvar=True,
                                     help="The organization's key (organizations.id).")]
FromOpt = Annotated[str, typer.Option("--from", envvar="ORGMOVE_FROM", show_envvar=True,
                                      help="Source cell name.")]
ToOpt = Annotated[str, typer.Option("--to", envvar="ORGMOVE_TO", show_envvar=True,
                                    help="Target cell name.")]
RulesOpt = Annotated[str | None, typer.Option(
    "--rules", envvar="ORGMOVE_RULES", show_envvar=True,
    help="Sharding rules YAML, or a db/docs directory (default: the config's defaults.rules).")]
MaxFreezeOpt = Annotated[float | None, typer.Option(
    "--max-freeze", envvar="ORGMOVE_MAX_FREEZE", show_envvar=True,
    help="Refuse the cutover if the write freeze would exceed this many seconds.")]
RateOpt = Annotated[float | None, typer.Option("--rate", envvar="ORGMOVE_RATE", show_envvar=True,
                                               help="Limit the copy to this many rows per second.")]
NoReplicaRoleOpt = Annotated[bool, typer.Option(
    "--no-replica-role", envvar="ORGMOVE_NO_REPLICA_ROLE", show_envvar=True,
    help="Write on the target as a plain client (its triggers fire), for targets that refuse "
         "GRANT SET ON PARAMETER session_replication_role.")]
AllowTriggersOpt = Annotated[str | None, typer.Option(
    "--allow-triggers", envvar="ORGMOVE_ALLOW_TRIGGERS", show_envvar=True,
    help="Comma-separated NAME or TABLE.NAME of target triggers accepted to fire on the copied rows.")]
DirOpt = Annotated[Path, typer.Option("--dir", envvar="ORGMOVE_SANDBOX_DIR", show_envvar=True,
                                      help="Sandbox directory.")]
