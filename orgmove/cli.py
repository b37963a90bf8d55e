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
from typing import Annotated

import psycopg
import typer

from orgmove import __version__, cli_move, cli_rebalance, cli_sandbox, cli_sync
from orgmove.cli_common import Session, err, session
from orgmove.config import redact
from orgmove.db import translate
from orgmove.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    BadInput,
    Interrupted,
    OrgmoveError,
)
from orgmove.obs import METRICS, scrub_secrets, setup_logging

app = typer.Typer(
    name="orgmove",
    help="Move one Organization's data between PostgreSQL Cells.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The registration points: every command module contributes a typer app whose commands become
# top-level commands (COMMAND_MODULES) or a named group (GROUPS). Add a line here for a new module.
COMMAND_MODULES: list[typer.Typer] = [cli_move.app, cli_sync.app, cli_sandbox.app]
GROUPS: list[tuple[str, typer.Typer]] = [("sandbox", cli_sandbox.sandbox_app),
                                         ("topology", cli_sandbox.topology_app)]
for module_app in COMMAND_MODULES:
    app.registered_commands += module_app.registered_commands
for group_name, group_app in GROUPS:
    app.add_typer(group_app, name=group_name)
cli_rebalance.register(app)


def _version(value: bool) -> None:
    if value:
        print(f"orgmove {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
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
    progress_every: Annotated[float, typer.Option(
        "--progress-every", envvar="ORGMOVE_PROGRESS_EVERY", show_envvar=True, min=0.1,
        help="Without a terminal, log one progress line (rows, rate, percent, ETA) this often, "
             "in seconds.")] = 10.0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """Move one Organization's data between PostgreSQL Cells.

    Example: orgmove plan --org 1 --from cell-1 --to cell-2
    """
    s = session(ctx)
    s.config_path = config
    s.debug = debug
    s.log_format = log_format
    s.metrics_file = metrics_file
    s.metrics_port = metrics_port
    s.progress_every_s = progress_every
    setup_logging(fmt=log_format, debug=debug)
    if metrics_port:
        # In the function: the HTTP exporter is only needed with --metrics-port.
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_addr, registry=METRICS.registry)


# --- entry point ---------------------------------------------------------------------------------


def _write_metrics(s: Session) -> None:
    if s.metrics_file:
        try:
            METRICS.write_textfile(s.metrics_file)
        except OSError as exc:
            err.print(f"warning: cannot write metrics to {s.metrics_file}: {exc}")


def _scrub(s: Session, text: str) -> str:
    return scrub_secrets(redact(text), s.secrets())


def _fail(s: Session, exc: OrgmoveError) -> int:
    if s.json:
        doc = json.loads(_scrub(s, json.dumps({"ok": False, "error": exc.to_json()}, default=str)))
        sys.stdout.write(json.dumps(doc) + "\n")
    sys.stderr.write(f"orgmove: error: {_scrub(s, str(exc))}\n")
    if s.debug:
        traceback.print_exc()
    return exc.exit_code


def _interrupted(s: Session) -> Interrupted:
    where = f"orgmove status {s.plan_file}" if s.plan_file is not None else "orgmove status --org ID"
    return Interrupted("interrupted by the operator",
                       fix=f"rerun the same command to resume; `{where}` shows where it stopped")


GLOBAL_VALUE_OPTIONS = ("--config", "--log-format", "--metrics-file", "--metrics-port", "--metrics-addr",
                        "--progress-every")
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
    s = Session()
    try:
        result = app(args=args, standalone_mode=False, obj=s)
        if isinstance(result, int):
            code = result
        if code == Interrupted.exit_code:
            # Typer turns a KeyboardInterrupt (SIGINT) into a silent Exit(130) when not in
            # standalone mode: say what happened and how to go on.
            code = _fail(s, _interrupted(s))
    except typer.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except OrgmoveError as exc:
        code = _fail(s, exc)
    except KeyboardInterrupt:
        code = _fail(s, _interrupted(s))
    except psycopg.Error as exc:  # a driver error that escaped its module's translation
        code = _fail(s, translate(exc, cell="a cell"))
    except typer.Abort:
        code = _fail(s, Interrupted("aborted", fix="rerun the command"))
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
            if s.debug:
                traceback.print_exc()
            if s.json:
                internal = OrgmoveError(f"internal error: {type(exc).__name__}", fix="rerun with --debug")
                sys.stdout.write(json.dumps({"ok": False, "error": {**internal.to_json(), "code": "internal"}}) + "\n")
            code = EXIT_FAILED
    finally:
        _write_metrics(s)
    sys.exit(code)
