"""docs/architecture.md lists exactly the metrics orgmove exposes, with their labels. Pure."""

from __future__ import annotations

import re
from pathlib import Path

from orgmove.obs import METRIC_SPECS, LogProgress, Metrics

DOC = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()


def test_documented_metrics_are_the_registry() -> None:
    section = re.search(r"<!-- metrics -->(.*?)<!-- /metrics -->", DOC, re.S)
    assert section, "docs/architecture.md has no <!-- metrics --> list"
    documented = set(re.findall(r"`(orgmove_[a-z_]+(?:\{[a-z,]+\})?)`", section.group(1)))
    specs = {name + ("{" + ",".join(labels) + "}" if labels else "") for name, _, labels, _ in METRIC_SPECS}
    assert documented == specs
    assert Metrics().exposed_names() == {name for name, *_ in METRIC_SPECS}


def test_log_progress_line_has_rows_rate_percent_and_eta() -> None:
    now = [100.0]
    progress = LogProgress(every_s=5, clock=lambda: now[0])
    progress.start("copy", {"a": 600, "b": 400})
    now[0] += 10
    progress.advance("a", 250)
    assert progress.line() == {"phase": "copy", "rows": 250, "total": 1000, "percent": 25.0,
                               "rows_per_s": 25.0, "eta_s": 30.0}
