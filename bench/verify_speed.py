"""Verify speed: in the same run, `orgmove copy` and then `orgmove verify` of the large
organization into a fresh target, in turns. cutover runs verify inside the write freeze, so its
speed is downtime.

Usage: python bench/verify_speed.py [--runs 3]
Last line: ratio=<verify seconds / copy seconds> (goal <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import make_plan, median, orgmove_argv, run_measured, start_cells


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cells = start_cells("large")
    work = Path(tempfile.mkdtemp(prefix="orgmove-bench-verify-"))
    _, plan_path = make_plan(cells, work)
    copies: list[float] = []
    verifies: list[float] = []
    ratios: list[float] = []
    for i in range(args.runs):
        cells.fresh_target("bench_verify")
        cfg = cells.config_for("bench_verify", work / "verify.toml")
        copy_s, _, _, _ = run_measured(orgmove_argv("--config", str(cfg), "copy", str(plan_path),
                                                    "--workers", str(args.workers)))
        verify_s, _, out, _ = run_measured(orgmove_argv("--config", str(cfg), "verify", str(plan_path),
                                                        "--workers", str(args.workers), "--json"))
        doc = json.loads(out)
        assert doc["equal"], "verify found differences on an untouched copy"
        cells.drop("bench_verify")
        copies.append(copy_s)
        verifies.append(verify_s)
        ratios.append(verify_s / copy_s)
        print(f"run {i + 1}: copy {copy_s:.2f}s, verify {verify_s:.2f}s ({doc['source_rows']:,} rows, "
              f"{doc['chunks']} chunks), ratio {verify_s / copy_s:.3f}")
    print(f"copy median {median(copies):.2f}s; verify median {median(verifies):.2f}s")
    print(f"ratio={median(ratios):.3f}")
    cells.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
