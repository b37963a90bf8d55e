"""Real PostgreSQL Cells for the test suite.

Three local clusters (cell-1, cell-2 and the Topology Service's database) are started once per test
session from the installed server binaries, in a temporary directory on free ports, and stopped at
the end even on failure. Tests get isolated databases cloned from template databases built once.
With a Docker engine and ``ORGMOVE_TEST_DOCKER=1`` the same fixtures use testcontainers.
If neither is possible the run stops at once with one message.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import sql

from orgmove.errors import OrgmoveError
from orgmove.sandbox.pgcluster import LocalCluster, find_pg_bin, free_port

CELL_NAMES = ("cell-1", "cell-2")
TOPOLOGY = "topology"
# Distinctive, so that a test can prove it never appears in any output or log.
TEST_PASSWORD = "pw-7Q2x-test-only"


class Server(Protocol):
    def dsn(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str: ...
    def stop(self, mode: str = "fast") -> None: ...
    def start(self, timeout: float = 60) -> None: ...


@dataclass
class ContainerServer:
    container: Any
    password: str = TEST_PASSWORD

    def dsn(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        host = self.container.get_container_host_ip()
        port = self.container.get_exposed_port(5432)
        return f"postgresql://{user}:{password or self.password}@{host}:{port}/{dbname}"

    def stop(self, mode: str = "fast") -> None:
        self.container.get_wrapped_container().stop()

    def start(self, timeout: float = 60) -> None:
        self.container.get_wrapped_container().start()


@dataclass
class Servers:
    servers: dict[str, Server]
    base_dir: Path
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def admin_dsn(self, name: str, dbname: str = "postgres") -> str:
        return self.servers[name].dsn(dbname)

    def create_db(self, name: str, template: str | None = None, prefix: str = "t") -> str:
        dbname = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.admin_dsn(name), autocommit=True) as conn:
            if template:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(dbname), sql.Identifier(template)
                    )
                )
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return dbname

    def drop_db(self, name: str, dbname: str) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(
            self.admin_dsn(name), autocommit=True
        ) as conn:
            # A logical slot pins its database (DROP DATABASE refuses) and slot names are
            # cluster-wide: drop the test database's slots first.
            for _ in range(50):
                active = conn.execute(
                    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", (dbname,)
                ).fetchall()
                if not active:
                    break
                for slot, pid in active:
                    if pid is not None:
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                time.sleep(0.1)
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            # Replication origins are cluster-wide and named after the move, not the database: a
            # test that left one would make the next test's move (same key, new database) see it.
            conn.execute("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin "
                         "WHERE roname LIKE 'orgmove\\_%'")


def _start_local(base: Path) -> dict[str, Server]:
    try:
        find_pg_bin()
    except OrgmoveError as exc:
        pytest.exit(f"cannot start test Cells: {exc}", returncode=2)
    started: dict[str, Server] = {}
    for name in (*CELL_NAMES, TOPOLOGY):
        cluster = LocalCluster(base / name, free_port(), password=TEST_PASSWORD)
        try:
            cluster.start()
        except OrgmoveError as exc:
            for other in started.values():
                other.stop("immediate")
            pytest.exit(f"cannot start test Cell {name}: {exc}", returncode=2)
        started[name] = cluster
    return started


def _start_docker() -> dict[str, Server]:
    from testcontainers.postgres import PostgresContainer

    started: dict[str, Server] = {}
    for name in (*CELL_NAMES, TOPOLOGY):
        container = PostgresContainer("postgres:15", username="postgres", password=TEST_PASSWORD)
        container.start()
        started[name] = ContainerServer(container)
    return started


def _docker_available() -> bool:
    if os.environ.get("ORGMOVE_TEST_DOCKER") != "1":
        return False
    with contextlib.suppress(Exception):
        import docker

        docker.from_env().ping()
        return True
    pytest.exit("ORGMOVE_TEST_DOCKER=1 but no Docker engine answers", returncode=2)
    return False


@contextlib.contextmanager
def start_servers(base: Path) -> Iterator[Servers]:
    servers = _start_docker() if _docker_available() else _start_local(base)
    try:
        # Warm-up: fail the whole run at once when a server is not usable.
        for name, server in servers.items():
            try:
                with psycopg.connect(server.dsn(), connect_timeout=10) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                pytest.exit(f"test Cell {name} is unreachable: {exc}", returncode=2)
        yield Servers(servers, base)
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
