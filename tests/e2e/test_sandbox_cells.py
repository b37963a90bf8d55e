"""`orgmove sandbox up --cells N` and `sandbox seed --skew`: N local Cells registered in the
Topology Service, most organizations on the first one, and the rebalancer sees the imbalance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orgmove.rebalance.proposal import within
from orgmove.sandbox.orglayout import skewed_home
from orgmove.sandbox.pgcluster import LocalCluster
from tests.helpers import orgmove_cli


def test_skewed_home_puts_most_orgs_on_the_first_cell() -> None:
    cells = ["cell-2", "cell-1", "cell-3"]
    homes = [skewed_home(org, 9, cells) for org in range(1, 10)]
    assert homes == ["cell-1"] * 6 + ["cell-2", "cell-3", "cell-2"]
    assert skewed_home(1, 1, ["cell-1"]) == "cell-1"


@pytest.mark.slow
def test_sandbox_up_with_three_cells_and_a_skewed_seed(tmp_path: Path) -> None:
    box = tmp_path / "sandbox"
    bad = orgmove_cli("sandbox", "up", "--dir", str(box), "--cells", "1")
    assert bad.returncode == 2 and "--cells 1" in bad.stderr and "Traceback" not in bad.stderr
    up = orgmove_cli("sandbox", "up", "--dir", str(box), "--cells", "3", "--json")
    assert up.returncode == 0, up.stderr
    try:
        doc = json.loads(up.stdout)
        assert sorted(doc["cells"]) == ["cell-1", "cell-2", "cell-3"]
        assert all(c["running"] for c in doc["cells"].values())
        seeded = orgmove_cli("sandbox", "seed", "--dir", str(box), "--orgs", "6", "--scale", "tiny", "--skew",
                             "--json")
        assert seeded.returncode == 0, seeded.stderr
        homes = {o["id"]: o["cell"] for o in json.loads(seeded.stdout)["orgs"]}
        assert homes == {1: "cell-1", 2: "cell-1", 3: "cell-1", 4: "cell-1", 5: "cell-2", 6: "cell-3"}
        config = str(box / "orgmove.toml")
        report = orgmove_cli("--config", config, "rebalance", "report", "--json")  # rules from the config
        assert report.returncode == 0, report.stderr
        cells = {c["cell"]: c for c in json.loads(report.stdout)["cells"]}
        assert {name: c["orgs"] for name, c in cells.items()} == {"cell-1": 4, "cell-2": 1, "cell-3": 1}
        assert not within({name: c["org_bytes"] for name, c in cells.items()}, 0.1)
        status = orgmove_cli("--config", config, "status", "--org", "6", "--json")
        assert json.loads(status.stdout)["owner"] == "cell-3", status.stderr
    finally:
        down = orgmove_cli("sandbox", "down", "--dir", str(box))
    assert down.returncode == 0, down.stderr
    for name in ("cell-1", "cell-2", "cell-3", "topology-db"):
        assert not LocalCluster(box / name, 1).is_running()
