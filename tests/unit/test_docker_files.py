"""Static checks of docker/Dockerfile, docker/compose.yaml and .dockerignore (no Docker engine here).

- every compose service has an image, or a build whose Dockerfile exists;
- every file or directory mounted from the repository exists;
- every `orgmove` command line in a `command:` names real commands and options of the CLI;
- a service whose entrypoint is replaced by `python -c` runs code that compiles and imports names
  that exist in the package;
- the Dockerfile has several stages, a non-root USER and an ENTRYPOINT, and COPYs files that exist
  and are not excluded by .dockerignore;
- the compose config loads with orgmove's own loader and names the compose Cells.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from orgmove.cli import GLOBAL_FLAGS, GLOBAL_VALUE_OPTIONS, app

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
OUR_DOCKERFILE = DOCKERFILE.resolve()


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "compose.yaml needs services"
    return doc


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _build_of(service: dict[str, Any]) -> tuple[Path, Path] | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        context, dockerfile = DOCKER / build, "Dockerfile"
    else:
        context, dockerfile = DOCKER / build.get("context", "."), build.get("dockerfile", "Dockerfile")
    return context.resolve(), (context / dockerfile).resolve()


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


# --- the CLI's command tree ----------------------------------------------------------------------


def _cli_tree() -> Any:
    return typer.main.get_command(app)


def _option_names(command: Any) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(getattr(param, "secondary_opts", []))
    names.update({"--help", "-h"})
    return names


def _check_orgmove_argv(argv: list[str]) -> list[str]:
    """Names the problems of one `orgmove ...` argument list (empty: it is a real command line)."""
    root = _cli_tree()
    problems: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):  # global options may stand anywhere (cli.hoist_global_options)
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in GLOBAL_VALUE_OPTIONS:
            i += 1 if "=" in arg else 2
            continue
        if arg in GLOBAL_FLAGS or arg in ("--version", "--help"):
            i += 1
            continue
        rest.append(arg)
        i += 1
    if not rest:
        return problems
    command: Any = root
    path: list[str] = []
    while rest and hasattr(command, "commands"):
        word = rest.pop(0)
        if word not in command.commands:
            problems.append(f"`orgmove {' '.join([*path, word])}` is not a command "
                            f"(known: {', '.join(sorted(command.commands))})")
            return problems
        command = command.commands[word]
        path.append(word)
    known = _option_names(command)
    for arg in rest:
        if arg.startswith("-") and arg.split("=", 1)[0] not in known:
            problems.append(f"`orgmove {' '.join(path)}` has no option {arg}")
    return problems


def _runs_orgmove(service: dict[str, Any]) -> bool:
    built = _build_of(service)
    return built is not None and built[1] == OUR_DOCKERFILE and "entrypoint" not in service


# --- compose ------------------------------------------------------------------------------------


def test_compose_parses_and_has_the_expected_services() -> None:
    services = _services()
    for name in ("cell-1", "cell-2", "topology-db", "topology", "orgmove"):
        assert name in services, f"compose.yaml has no service {name!r}"
    for name in ("cell-1", "cell-2", "topology-db"):
        assert str(services[name].get("image", "")).startswith("postgres:15"), name


@pytest.mark.parametrize("name", sorted(_services()))
def test_every_service_has_an_image_or_a_buildable_dockerfile(name: str) -> None:
    service = _services()[name]
    built = _build_of(service)
    assert service.get("image") or built, f"service {name!r} has neither image nor build"
    if built is not None:
        context, dockerfile = built
        assert context.is_dir(), f"service {name!r}: build context {context} does not exist"
        assert dockerfile.is_file(), f"service {name!r}: Dockerfile {dockerfile} does not exist"


def _host_paths() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for name, service in _services().items():
        for volume in service.get("volumes", []) or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if isinstance(volume, dict) and volume.get("type") not in (None, "bind"):
                continue
            if source and source.startswith((".", "/", "~")):
                found.append((name, (DOCKER / source).resolve()))
        env_files = service.get("env_file") or []
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            found.append((name, (DOCKER / path).resolve()))
    for section in ("configs", "secrets"):
        for name, item in (_compose().get(section) or {}).items():
            if isinstance(item, dict) and "file" in item:
                found.append((f"{section}.{name}", (DOCKER / item["file"]).resolve()))
    return found


def test_every_mounted_repository_path_exists() -> None:
    paths = _host_paths()
    assert paths, "expected bind mounts (the fence init script, the orgmove config)"
    for owner, path in paths:
        assert path.exists(), f"{owner}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} does not exist"
        assert path.is_relative_to(ROOT), f"{owner}: {path} is outside the repository"


def test_cells_install_the_write_fence_at_init() -> None:
    fence = (ROOT / "orgmove" / "sql" / "cell_schema.sql").resolve()
    for name in ("cell-1", "cell-2"):
        mounts = [str(v) for v in _services()[name].get("volumes", [])]
        targets = {
            (DOCKER / m.split(":")[0]).resolve(): m.split(":")[1] for m in mounts if m.startswith(".")
        }
        assert fence in targets, f"{name} does not mount orgmove/sql/cell_schema.sql"
        assert targets[fence].startswith("/docker-entrypoint-initdb.d/"), targets[fence]


def test_orgmove_command_lines_are_real_commands() -> None:
    checked = 0
    for name, service in _services().items():
        if not _runs_orgmove(service):
            continue
        argv = _argv(service.get("command"))
        assert argv, f"service {name!r} runs orgmove without a command"
        problems = _check_orgmove_argv(argv)
        assert not problems, f"service {name!r}: " + "; ".join(problems)
        checked += 1
    assert checked >= 2, "expected the topology and orgmove services to run orgmove commands"


def test_topology_service_serves_on_all_interfaces_with_a_token() -> None:
    service = _services()["topology"]
    argv = _argv(service.get("command"))
    assert argv[:2] == ["topology", "serve"]
    assert argv[argv.index("--listen") + 1].startswith("0.0.0.0:")
    assert "--dsn" in argv
    assert "ORGMOVE_TOPOLOGY_TOKEN" in (service.get("environment") or {})


def test_the_checker_rejects_unknown_commands_and_options() -> None:
    assert _check_orgmove_argv(["--config", "f.toml", "move", "--org", "1", "--yes"]) == []
    assert _check_orgmove_argv(["sandbox", "seed", "--orgs", "3"]) == []
    assert _check_orgmove_argv(["topology", "serve", "--listen", "0.0.0.0:7480"]) == []
    assert _check_orgmove_argv(["migrate", "--org", "1"])
    assert _check_orgmove_argv(["topology", "start"])
    assert _check_orgmove_argv(["move", "--organization", "1"])


def _python_scripts() -> list[tuple[str, str]]:
    scripts = []
    for name, service in _services().items():
        entry = _argv(service.get("entrypoint"))
        if entry[:2] == ["python", "-c"]:
            command = _argv(service.get("command")) if isinstance(service.get("command"), list) else [
                str(service.get("command"))]
            scripts.append((name, command[0]))
    return scripts


def test_inline_python_compiles_and_imports_real_names() -> None:
    scripts = _python_scripts()
    assert scripts, "expected the one-shot seed service (python -c)"
    for name, source in scripts:
        assert "$" not in source, f"{name}: compose would interpolate `$` in the script"
        tree = ast.parse(source, filename=f"compose:{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orgmove"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{name}: {node.module} has no {alias.name}"


def test_compose_config_loads_and_names_the_compose_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    from orgmove.config import load_config

    services = _services()
    mounted = {}
    for volume in services["orgmove"].get("volumes", []):
        parts = str(volume).split(":")
        if parts[0].startswith("."):
            mounted[parts[1]] = (DOCKER / parts[0]).resolve()
    env = services["orgmove"].get("environment") or {}
    config_path = mounted[env["ORGMOVE_CONFIG"]]
    config = load_config(config_path)
    assert set(config.cells) <= set(services), "every configured cell is a compose service"
    for name, cell in config.cells.items():
        assert cell.dsn_env, f"cell {name}: the compose config keeps DSNs in the environment"
        assert cell.dsn_env in env, f"the orgmove service does not set {cell.dsn_env}"
        assert f"@{name}:" in env[cell.dsn_env], f"{cell.dsn_env} does not point at the {name} service"
        monkeypatch.setenv(cell.dsn_env, env[cell.dsn_env])
        assert config.cell_dsn(name)
    assert config.topology is not None and "//topology:" in config.topology.url
    assert config.topology.token_env in env


# --- Dockerfile ---------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current = f"{current} {line.rstrip(chr(92)).strip()}".strip()
        if not line.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def test_dockerfile_is_multi_stage_non_root_with_entrypoint() -> None:
    instructions = _instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    assert stages[-1].split()[0] == "python:3.11-slim"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"USER {users[-1]} is root"
    entrypoints = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints and "orgmove" in entrypoints[-1]
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    assert any(k == "USER" for k, _ in instructions[last_from:]), "USER must be in the final stage"


def _dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    return [
        line.strip() for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _ignored(rel: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.removeprefix("**/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*") or any(
            fnmatch.fnmatch(part, pat) for part in rel.split("/")[:1]
        ):
            ignored = not negate
    return ignored


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    patterns = _dockerignore()
    copies = [rest for keyword, rest in _instructions() if keyword == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        parts = [p for p in rest.split() if not p.startswith("--")]
        for source in parts[:-1]:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_state_out_of_the_context() -> None:
    patterns = _dockerignore()
    for rel in (".git", ".venv", ".orgmove", "orgmove.toml", "plans/org-1-cell-1-cell-2.plan.json"):
        assert _ignored(rel, patterns), f"{rel} should be excluded from the build context"
