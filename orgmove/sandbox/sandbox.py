"""The embedded default: local Cells (cell-1, cell-2, or N of them with ``--cells N``), the
Topology Service and its database, all under one directory (default ``.orgmove/sandbox``),
described by ``D/orgmove.toml``. The number of Cells is kept in ``D/sandbox.json``: a later
``up --cells M`` with M larger adds Cells, never removes one."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from orgmove import state
from orgmove.errors import BadInput, EnvironmentProblem
from orgmove.sandbox.pgcluster import LocalCluster, free_port

DEFAULT_DIR = Path(".orgmove/sandbox")
# The sharding rules of the fixture schema the sandbox is seeded with; the sandbox keeps its own
# copy (D/rules.yaml) and names it in its config, so `plan` and `move` need no --rules there.
SHIPPED_RULES = Path(__file__).resolve().parents[2] / "plans" / "gitlab.rules.yaml"
CELLS = ("cell-1", "cell-2")
MAX_CELLS = 16
CELL_DB = "gitlab"
TOPOLOGY_DB = "topology"


@dataclass
class SandboxState:
    ports: dict[str, int]
    password: str
    token: str

    @property
    def cells(self) -> tuple[str, ...]:
        names = [n for n in self.ports if n.startswith("cell-")]
        return tuple(sorted(names, key=lambda n: int(n.split("-")[1])))

    @classmethod
    def load_or_create(cls, directory: Path, cells: int | None = None) -> SandboxState:
        path = directory / "sandbox.json"
        if path.exists():
            doc = json.loads(path.read_text())
            st = cls(doc["ports"], doc["password"], doc["token"])
        else:
            st = cls(
                ports={name: free_port() for name in (*CELLS, "topology-db", "topology")},
                password=secrets.token_urlsafe(12),
                token=secrets.token_urlsafe(24),
            )
        for number in range(1, (cells or 0) + 1):
            st.ports.setdefault(f"cell-{number}", free_port())
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"ports": st.ports, "password": st.password, "token": st.token}))
        os.chmod(path, 0o600)
        return st


class Sandbox:
    def __init__(self, directory: Path | str = DEFAULT_DIR) -> None:
        self.dir = Path(directory).absolute()

    @property
    def config_path(self) -> Path:
        return self.dir / "orgmove.toml"

    @property
    def rules_path(self) -> Path:
        return self.dir / "rules.yaml"

    def _copy_rules(self) -> None:
        if not self.rules_path.exists() and SHIPPED_RULES.exists():
            self.rules_path.write_text(SHIPPED_RULES.read_text())

    def _state(self) -> SandboxState:
        return SandboxState.load_or_create(self.dir)

    def clusters(self) -> dict[str, LocalCluster]:
        st = self._state()
        result = {name: LocalCluster(self.dir / name, st.ports[name], st.password) for name in st.cells}
        result["topology-db"] = LocalCluster(self.dir / "topology-db", st.ports["topology-db"], st.password)
        return result

    @property
    def cell_names(self) -> tuple[str, ...]:
        return self._state().cells

    def cell_dsns(self) -> dict[str, str]:
        cl = self.clusters()
        return {name: cl[name].dsn(CELL_DB) for name in self.cell_names}

    def topology_dsn(self) -> str:
        return self.clusters()["topology-db"].dsn(TOPOLOGY_DB)

    @property
    def topology_url(self) -> str:
        return f"http://127.0.0.1:{self._state().ports['topology']}"

    @property
    def token(self) -> str:
        return self._state().token

    # --- up ------------------------------------------------------------------------------------

    def up(self, cells: int | None = None) -> dict[str, Any]:
        """Start (or add) the Cells and the Topology Service. ``cells``: at least this many Cells."""
        if cells is not None and not 2 <= cells <= MAX_CELLS:
            raise BadInput(f"--cells {cells} is out of range", fix=f"use 2 to {MAX_CELLS} Cells")
        self.dir.mkdir(parents=True, exist_ok=True)
        SandboxState.load_or_create(self.dir, cells)
        clusters = self.clusters()
        for cluster in clusters.values():
            cluster.start()
        for name in self.cell_names:
            _ensure_database(clusters[name].dsn("postgres"), CELL_DB)
            with psycopg.connect(clusters[name].dsn(CELL_DB), autocommit=True) as conn:
                state.install_cell_schema(conn)
        _ensure_database(clusters["topology-db"].dsn("postgres"), TOPOLOGY_DB)
        self._start_topology()
        self._register_cells()
        self._copy_rules()
        self._write_config()
        return self.describe()

    def _write_config(self) -> None:
        lines = ["# Written by `orgmove sandbox up`; local sandbox only.", ""]
        for name, dsn in self.cell_dsns().items():
            lines += [f'[cells."{name}"]', f'dsn = "{dsn}"', ""]
        lines += ["[topology]", f'url = "{self.topology_url}"', f'token = "{self.token}"', ""]
        lines += ["[defaults]", f'plans_dir = "{self.dir / "plans"}"']
        if self.rules_path.exists():
            lines.append(f'rules = "{self.rules_path}"')
        lines.append("")
        # The rebalancer's queue lives in the Topology Service's database.
        lines += ["[rebalance]", f'queue_dsn = "{self.topology_dsn()}"', ""]
        self.config_path.write_text("\n".join(lines))
        os.chmod(self.config_path, 0o600)

    def _pidfile(self) -> Path:
        return self.dir / "topology.pid"

    def topology_running(self) -> bool:
        try:
            r = httpx.get(self.topology_url + "/healthz", timeout=1.0)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def _start_topology(self) -> None:
        if self.topology_running():
            return
        log = open(self.dir / "topology.log", "ab")
        env = dict(os.environ, ORGMOVE_TOPOLOGY_TOKEN=self.token, ORGMOVE_TOPOLOGY_DSN=self.topology_dsn())
        proc = subprocess.Popen(
            [sys.executable, "-m", "orgmove", "topology", "serve",
             "--listen", f"127.0.0.1:{self._state().ports['topology']}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        log.close()
        self._pidfile().write_text(str(proc.pid))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if self.topology_running():
                return
            time.sleep(0.1)
        tail = (self.dir / "topology.log").read_text(errors="replace")[-600:]
        raise EnvironmentProblem(
            f"the sandbox Topology Service did not start: {tail}",
            fix=f"read {self.dir / 'topology.log'}",
        )

    def _register_cells(self) -> None:
        from orgmove.topology.client import TopologyClient

        clusters = self.clusters()
        with TopologyClient(self.topology_url, self.token) as client:
            for number, name in enumerate(self.cell_names, 1):
                # Each cell allocates ids from its own range (the seed: cell N starts at N * 10^12).
                client.register_cell(name, f"127.0.0.1:{clusters[name].port}",
                                     sequence_start=number * 10**12, sequence_end=(number + 1) * 10**12 - 1)

    # --- seed ----------------------------------------------------------------------------------

    def seed(self, *, orgs: int, scale: str, seed: int = 42, skew: bool = False) -> Any:
        from orgmove.sandbox import seed as seeding
        from orgmove.topology.client import TopologyClient, seed_claims

        report = seeding.seed(self.cell_dsns(), orgs=orgs, scale=scale, seed=seed, skew=skew)
        with TopologyClient(self.topology_url, self.token) as client:
            seed_claims(client, self.cell_dsns())
        return report

    # --- down ----------------------------------------------------------------------------------

    def down(self) -> None:
        pidfile = self._pidfile()
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                pid = int(pidfile.read_text().strip())
                os.killpg(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            pidfile.unlink(missing_ok=True)
        for cluster in self.clusters().values():
            cluster.stop()

    def destroy(self) -> None:
        import shutil

        if self.dir.exists():
            self.down()
            shutil.rmtree(self.dir, ignore_errors=True)

    def env_line(self) -> str:
        return f"export ORGMOVE_CONFIG={self.config_path}"

    def describe(self) -> dict[str, Any]:
        clusters = self.clusters()
        return {
            "dir": str(self.dir),
            "config": str(self.config_path),
            "cells": {name: {"port": clusters[name].port, "running": clusters[name].is_running()}
                      for name in self.cell_names},
            "topology": {"url": self.topology_url, "running": self.topology_running()},
        }


def _ensure_database(admin_dsn: str, dbname: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
