"""Every repository path the README and docs/*.md name exists (the docs are self-contained)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "adr").glob("*.md"))]
# A path starts at one of the repository's top-level directories and runs to a space, a quote,
# a backtick or a bracket; `tests/x.py::test_name` names a test inside a file.
PATH = re.compile(r"(?<![\w./-])((?:orgmove|tests|docs|runbooks|bench)/[\w./*-]*[\w*/])")


def named_paths(text: str) -> set[str]:
    return {m.group(1).split("::")[0] for m in PATH.finditer(text)}


def exists(path: str) -> bool:
    if "*" in path:
        return any(REPO.glob(path))
    return (REPO / path).exists()


def test_the_pattern_finds_paths() -> None:
    found = named_paths("see `orgmove/sync.py` and tests/unit/test_x.py::test_y, not pyorgmove/x.py.")
    assert found == {"orgmove/sync.py", "tests/unit/test_x.py"}


def test_every_named_path_exists() -> None:
    missing = sorted(f"{doc.relative_to(REPO)}: {path}" for doc in DOCS
                     for path in named_paths(doc.read_text(encoding="utf-8")) if not exists(path))
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


# Design notes that live beside the repository, not in it (spelled apart so this file is no citation).
OUTSIDE_DOCS = ("DESIGN" + ".md", "GITLAB-DICTIONARY" + ".md", "../" + "shared")


def test_no_citation_outside_the_repository() -> None:
    offenders = [str(p.relative_to(REPO)) for p in [*DOCS, *(REPO / "orgmove").rglob("*.py"),
                                                   *(REPO / "orgmove").rglob("*.sql")]
                 if any(name in p.read_text(encoding="utf-8") for name in OUTSIDE_DOCS)]
    assert offenders == []
