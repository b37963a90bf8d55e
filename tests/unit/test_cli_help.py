"""Every option and argument of every command says what it is for (``--help``). Pure."""

from __future__ import annotations

import click
import typer

from orgmove.cli import app


def _walk(cmd: click.Command, name: str) -> list[tuple[str, click.Command]]:
    found = [(name, cmd)]
    for sub_name, sub in (getattr(cmd, "commands", None) or {}).items():
        found += _walk(sub, f"{name} {sub_name}")
    return found


def test_every_parameter_of_every_command_has_help() -> None:
    commands = _walk(typer.main.get_command(app), "orgmove")
    assert len(commands) >= 15
    missing = []
    for name, cmd in commands:
        for param in cmd.params:
            text = getattr(param, "help", None)
            if not (text and text.strip()):
                missing.append(f"{name} {param.opts[0] if param.opts else param.name}")
    assert missing == []
