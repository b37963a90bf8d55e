"""The shell commands of the README and the runbooks, as written, for tests that run them.

Conventions in the markdown (runbooks/README.md "Docs are tested"):

- every fenced ```bash block runs, in order, as one script per file (``set -eo pipefail``);
- ``<!-- doc-test: skip REASON -->`` on the line before a fence skips that block;
- a command line ending in ``# doc-test: skip REASON`` is not run (a placeholder such as ``<pid>``,
  or a production-only step);
- ``<!-- doc-test: given COMMAND -->`` anywhere in the file: a shell command the test runs before
  the file's blocks, to bring the sandbox into the situation the procedure starts from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SKIP_BLOCK = re.compile(r"^<!--\s*doc-test:\s*skip\b.*-->\s*$")
SKIP_LINE = re.compile(r"#\s*doc-test:\s*skip\b.*$")
GIVEN = re.compile(r"<!--\s*doc-test:\s*given\s+(.+?)\s*-->")


@dataclass
class DocScript:
    path: Path
    given: list[str] = field(default_factory=list)
    blocks: list[list[str]] = field(default_factory=list)
    skipped_blocks: int = 0
    skipped_lines: int = 0

    def script(self) -> str:
        lines = ["set -eo pipefail", *self.given]
        for block in self.blocks:
            lines += block
        return "\n".join(lines) + "\n"


def parse(path: Path) -> DocScript:
    doc = DocScript(path)
    text = path.read_text(encoding="utf-8")
    doc.given = GIVEN.findall(text)
    lines = text.splitlines()
    previous = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "```bash":
            skip = bool(SKIP_BLOCK.match(previous.strip()))
            block: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                if SKIP_LINE.search(lines[i]):
                    doc.skipped_lines += 1
                else:
                    block.append(lines[i])
                i += 1
            if skip:
                doc.skipped_blocks += 1
            else:
                doc.blocks.append(block)
        if line.strip():
            previous = line
        i += 1
    return doc
