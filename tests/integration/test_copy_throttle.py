"""Throttling: the copy pauses while a replica of the target lags more than the threshold, and
goes on by itself when the replica catches up. A real streaming replica, made with pg_basebackup."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orgmove.config import load_config
from orgmove.copy import CopyOptions, CopyReport, run_copy
from orgmove.sandbox.pgcluster import LocalCluster, _as_server_user, _hand_to_server_user, find_pg_bin, free_port
from orgmove.sandbox.seed import seed
from tests.helpers import make_plan, org_checksums

pytestmark = pytest.mark.slow
PASSWORD = "pw-replica-test-3k9"


@pytest.fixture()
def primary_with_replica() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    base = Path(tempfile.mkdtemp(prefix="orgmove-replica-"))
    primary = LocalCluster(base / "primary", free_port(), password=PASSWORD)
    replica = LocalCluster(base / "replica", free_port(), password=PASSWORD)
    try:
        primary.start()
        (base / "replica" / "socket").mkdir(parents=True)
        _hand_to_server_user(base)
        proc = subprocess.run(
            _as_server_user([str(find_pg_bin() / "pg_basebackup"), "-D", str(replica.data_dir), "-h", "127.0.0.1",
                             "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream"]),
            env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        with open(replica.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"port = {replica.port}\nunix_socket_directories = '{replica.socket_dir}'\n"
                       "wal_receiver_status_interval = 1\n")
        replica.start()
        yield primary, replica
    finally:
        replica.stop("immediate")
        primary.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


class _Cells:
    def __init__(self, dsns: dict[str, str], config_path: Path) -> None:
        self.dsns, self.config_path, self.names = dsns, config_path, tuple(dsns)

    def dsn(self, name: str) -> str:
        return self.dsns[name]


def _done_chunks(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('orgmove.chunk_log')").fetchone()[0] is None:  # type: ignore[index]
            return 0
        return int(conn.execute("SELECT count(*) FROM orgmove.chunk_log").fetchone()[0])  # type: ignore[index]


def test_copy_pauses_while_a_target_replica_lags(pg_servers, primary_with_replica, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    primary, replica = primary_with_replica
    source_db = pg_servers.create_db("cell-1", prefix="lagsrc")
    try:
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE gitlab")
        dsns = {"cell-1": pg_servers.admin_dsn("cell-1", source_db), "cell-2": primary.dsn("gitlab")}
        seed(dsns, orgs=3, scale="tiny")
        config_path = tmp_path / "orgmove.toml"
        config_path.write_text("".join(f'[cells."{n}"]\ndsn = "{d}"\n' for n, d in dsns.items()))
        config_path.chmod(0o600)
        cells = _Cells(dsns, config_path)
        plan, _ = make_plan(cells)
        # Let the replica catch up with the seed, then stop its replay.
        time.sleep(2)
        with psycopg.connect(replica.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

        result: dict[str, CopyReport | BaseException] = {}

        def copy() -> None:
            try:
                result["report"] = run_copy(plan, load_config(config_path),
                                            CopyOptions(workers=2, chunk_rows=10, max_replica_lag_s=0.5))
            except BaseException as exc:
                result["report"] = exc

        os.environ["ORGMOVE_FAILPOINTS"] = "copy.before_commit=sleep(0.5)"
        thread = threading.Thread(target=copy, daemon=True)
        try:
            thread.start()
            # The replica falls behind; the copy must stop committing chunks.
            deadline = time.monotonic() + 30
            stalled_at = None
            while time.monotonic() < deadline and thread.is_alive():
                before = _done_chunks(dsns["cell-2"])
                time.sleep(3)
                after = _done_chunks(dsns["cell-2"])
                if before and after == before and thread.is_alive():
                    stalled_at = after
                    break
            assert stalled_at is not None, "the copy never paused for the lagging replica"
            assert thread.is_alive()
            with psycopg.connect(replica.dsn(), autocommit=True) as conn:
                conn.execute("SELECT pg_wal_replay_resume()")
            thread.join(timeout=120)
        finally:
            os.environ.pop("ORGMOVE_FAILPOINTS", None)
        report = result["report"]
        assert isinstance(report, CopyReport), report
        assert report.chunks_copied + report.chunks_skipped == report.chunks_total > stalled_at
        assert org_checksums(dsns["cell-2"], plan) == org_checksums(dsns["cell-1"], plan)
    finally:
        pg_servers.drop_db("cell-1", source_db)
