"""Local clusters and the sandbox: start and stop cleanly, `sandbox up` twice is harmless,
`sandbox env` points at the sandbox's config, `sandbox seed` loads both Cells and the claims."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from orgmove.config import load_config
from orgmove.sandbox.pgcluster import LocalCluster, free_port
from tests.e2e.test_operator_experience import _strip_data_maps, assert_same_shape, documented
from tests.helpers import orgmove_cli


def test_local_cluster_starts_stops_and_restarts(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", free_port(), password="pw-cluster-test")
    try:
        cluster.start()
        assert cluster.is_running()
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SHOW server_version_num").fetchone()[0] >= "150000"  # type: ignore[index]
        cluster.restart()
        with psycopg.connect(cluster.dsn()) as conn:
            conn.execute("SELECT 1")
        cluster.stop()
        assert not cluster.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn(), connect_timeout=2)
        cluster.start()  # the data directory is reused
        assert cluster.is_running()
    finally:
        cluster.destroy()
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_sandbox_up_twice_seed_env_down(tmp_path: Path) -> None:
    box = tmp_path / "sandbox"
    first = orgmove_cli("sandbox", "up", "--dir", str(box), "--json")
    assert first.returncode == 0, first.stderr
    try:
        doc = json.loads(first.stdout)
        assert_same_shape(doc, documented("sandbox up"), "sandbox up")
        assert all(c["running"] for c in doc["cells"].values()) and doc["topology"]["running"]
        again = orgmove_cli("sandbox", "up", "--dir", str(box), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["cells"] == doc["cells"]  # same ports, nothing restarted
        env = orgmove_cli("sandbox", "env", "--dir", str(box))
        assert env.stdout.strip() == f"export ORGMOVE_CONFIG={box.absolute() / 'orgmove.toml'}"
        config = load_config(box / "orgmove.toml")
        assert (box / "orgmove.toml").stat().st_mode & 0o077 == 0
        seeded = orgmove_cli("sandbox", "seed", "--dir", str(box), "--scale", "tiny", "--json")
        assert seeded.returncode == 0, seeded.stderr
        assert_same_shape(_strip_data_maps(json.loads(seeded.stdout)),
                          _strip_data_maps(documented("sandbox seed")), "sandbox seed")
        for cell in ("cell-1", "cell-2"):
            with psycopg.connect(config.cell_dsn(cell)) as conn:
                assert conn.execute("SELECT count(*) FROM organizations").fetchone()[0] >= 1  # type: ignore[index]
                assert conn.execute("SELECT to_regprocedure('orgmove.assert_writable(text)')").fetchone()[0]  # type: ignore[index]
        status = orgmove_cli("--config", str(box / "orgmove.toml"), "status", "--org", "1", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["owner"] == "cell-1"
    finally:
        down = orgmove_cli("sandbox", "down", "--dir", str(box))
    assert down.returncode == 0, down.stderr
    for name in ("cell-1", "cell-2", "topology-db"):
        assert not LocalCluster(box / name, 1).is_running()


def test_local_cluster_with_a_relative_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cluster = LocalCluster(Path("rel"), free_port(), password="pw-cluster-test")
    try:
        cluster.start()
        assert cluster.is_running()
        cluster.stop()
        assert not cluster.is_running()
    finally:
        cluster.destroy()
