"""The markdown conventions of tests/docrun.py. Pure."""

from __future__ import annotations

from pathlib import Path

from tests.docrun import parse


def test_blocks_skips_and_givens(tmp_path: Path) -> None:
    md = tmp_path / "r.md"
    md.write_text(
        "<!-- doc-test: given orgmove plan --org $ORG -->\n"
        "```bash\norgmove status $PLAN\nkill -INT <pid>   # doc-test: skip placeholder\n```\n"
        "text\n<!-- doc-test: skip production only -->\n\n```bash\npsql \"$PROD\"\n```\n"
        "```sql\nSELECT 1;\n```\n```bash\norgmove copy $PLAN\n```\n"
    )
    doc = parse(md)
    assert doc.given == ["orgmove plan --org $ORG"]
    assert doc.blocks == [["orgmove status $PLAN"], ["orgmove copy $PLAN"]]
    assert doc.skipped_blocks == 1 and doc.skipped_lines == 1
    assert doc.script().startswith("set -eo pipefail\norgmove plan --org $ORG\norgmove status $PLAN\n")
