"""What an operator and an automation job see: --json documents of every command match
docs/json.md, secrets never appear in any output or log, metrics after a copy, progress with an
ETA in a terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orgmove.config import dsn_password, load_config
from tests.helpers import REPO, make_plan, orgmove_cli
from tests.world import TOKEN, World

DOC = (REPO / "docs" / "json.md").read_text()


def documented(command: str) -> dict[str, Any]:
    m = re.search(r"<!-- shape: " + re.escape(command) + r" -->\s*```json\n(.*?)```", DOC, re.S)
    assert m, f"docs/json.md has no example for {command}"
    doc: dict[str, Any] = json.loads(m.group(1))
    return doc


def assert_same_shape(actual: Any, documented_doc: Any, where: str = "") -> None:
    """Every documented key is in the real output and vice versa, recursively (first list item)."""
    if isinstance(documented_doc, dict) and isinstance(actual, dict):
        assert set(actual) == set(documented_doc), (where, sorted(set(actual) ^ set(documented_doc)))
        for key in documented_doc:
            if isinstance(documented_doc[key], dict | list) and actual[key] not in (None, [], {}):
                assert_same_shape(actual[key], documented_doc[key], f"{where}.{key}")
    elif isinstance(documented_doc, list) and isinstance(actual, list) and documented_doc and actual:
        if isinstance(documented_doc[0], dict):
            assert_same_shape(actual[0], documented_doc[0], f"{where}[0]")


def run_json(world: World, *args: str, code: int = 0) -> dict[str, Any]:
    proc = orgmove_cli("--config", str(world.config_path), *args, "--json")
    assert proc.returncode == code, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)  # exactly one JSON document on stdout
    return doc


# Open-ended maps whose keys are data (table names, check names), not part of the shape.
DATA_KEYS = {"tables", "checks", "differences", "seconds", "unreachable_cells", "rows"}


def _strip_data_maps(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: ({} if k in DATA_KEYS and isinstance(v, dict) else _strip_data_maps(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_strip_data_maps(v) for v in doc]
    return doc


def test_json_of_every_move_command_matches_the_docs(world: World) -> None:
    plan, path = make_plan(world.cells)
    docs = {
        "plan": run_json(world, "plan", "--org", "1", "--from", "cell-1", "--to", "cell-2",
                         "--rules", str(REPO / "plans" / "gitlab.rules.yaml"),
                         "--out", str(path.parent / "p.plan.json")),
        "copy": run_json(world, "copy", str(path)),
        "verify": run_json(world, "verify", str(path)),
        "cutover": run_json(world, "cutover", str(path), "--yes"),
        "status": run_json(world, "status", str(path)),
        "cleanup": run_json(world, "cleanup", str(path), "--yes"),
        "error": run_json(world, "cleanup", str(path.parent / "missing.plan.json"), "--yes", code=2),
    }
    for command, doc in docs.items():
        assert doc["ok"] is (command != "error"), command
        if command != "error":
            assert doc["command"] == command
        assert_same_shape(_strip_data_maps(doc), _strip_data_maps(documented(command)), command)


def test_json_of_rollback_and_move_match_the_docs(world: World) -> None:
    plan, path = make_plan(world.cells)
    run_json(world, "copy", str(path))
    rollback = run_json(world, "rollback", str(path), "--yes")
    assert_same_shape(_strip_data_maps(rollback), _strip_data_maps(documented("rollback")), "rollback")
    move = run_json(world, "move", "--org", "1", "--from", "cell-1", "--to", "cell-2", "--yes",
                    "--rules", str(REPO / "plans" / "gitlab.rules.yaml"))
    assert move["new_owner"] == "cell-2"
    assert_same_shape(_strip_data_maps(move), _strip_data_maps(documented("move")), "move")


def test_no_output_or_log_line_contains_a_secret(world: World) -> None:
    config = load_config(world.config_path)
    secrets = {dsn_password(config.cell_dsn(c)) for c in config.cells} | {TOKEN}
    secrets.discard(None)
    assert secrets and all(len(s) >= 8 for s in secrets)  # type: ignore[arg-type]
    plan, path = make_plan(world.cells)
    outputs = []
    for args in (("copy", str(path)), ("verify", str(path)), ("cutover", str(path), "--yes"),
                 ("status", "--org", "1"), ("rollback", str(path), "--yes"),
                 ("copy", str(path.parent / "nope.json"))):
        for fmt in ("human", "json"):
            proc = orgmove_cli("--config", str(world.config_path), "--debug", "--log-format", fmt, *args)
            outputs.append(proc.stdout + proc.stderr)
    # An unreachable cell: the DSN (with its password) is in the error path.
    bad = world.config_path.parent / "bad.toml"
    bad.write_text(world.config_path.read_text().replace("127.0.0.1:", "127.0.0.1:1", 1))
    bad.chmod(0o600)
    proc = orgmove_cli("--config", str(bad), "--debug", "copy", str(path), "--json")
    outputs.append(proc.stdout + proc.stderr)
    text = "\n".join(outputs)
    assert "committed" in text or "claims" in text  # the commands did run
    for secret in secrets:
        assert secret not in text


def test_metrics_after_a_copy(world: World, tmp_path: Path) -> None:
    plan, path = make_plan(world.cells)
    metrics = tmp_path / "orgmove.prom"
    doc = json.loads(orgmove_cli("--config", str(world.config_path), "--metrics-file", str(metrics),
                                 "copy", str(path), "--chunk-rows", "20", "--json").stdout)
    text = metrics.read_text()
    rows = sum(float(v) for v in re.findall(r'^orgmove_rows_copied_total\{table="[^"]+"\} (\S+)$', text, re.M))
    nbytes = sum(float(v) for v in re.findall(r'^orgmove_bytes_copied_total\{table="[^"]+"\} (\S+)$', text, re.M))
    chunks = float(re.search(r"^orgmove_chunks_done_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert rows == doc["rows"] > 0
    assert nbytes == doc["bytes"]
    assert chunks == doc["chunks"]["copied"]
    assert re.search(r'^orgmove_rows_copied_total\{table="public.issues"\} [1-9]', text, re.M)
    for name in ("orgmove_retries_total", "orgmove_verify_mismatches_total", "orgmove_freeze_window_seconds"):
        assert re.search(rf"^{name} ", text, re.M), name


def _commands() -> dict[str, Any]:
    import typer

    from orgmove.cli import app

    root = typer.main.get_command(app)
    found: dict[str, Any] = {}
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        sub = getattr(cmd, "commands", None)
        if sub:
            for sub_name, sub_cmd in sub.items():
                found[f"{name} {sub_name}"] = sub_cmd
        else:
            found[name] = cmd
    return found


def test_every_command_help_has_an_example() -> None:
    for name, cmd in _commands().items():
        assert "Example:" in (cmd.help or ""), name


def test_readme_tour_uses_only_documented_commands() -> None:
    readme = (REPO / "README.md").read_text()
    commands = _commands()
    used = re.findall(r"^\s*(?:\.venv/bin/)?orgmove ((?:sandbox |topology )?[a-z]+)", readme, re.M)
    used += re.findall(r"`orgmove ((?:sandbox |topology )?[a-z]+)", readme)
    assert len(used) >= 8
    for command in used:
        assert command in commands, command
