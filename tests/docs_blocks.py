"""The shell blocks of README.md and docs/*.md with their marks (docs/cli.md "Shell blocks
in these docs"): ``<!-- runnable -->`` or ``<!-- not runnable: why -->`` on the line
before the fence. Pure: reads text, runs nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELLS = {"sh", "bash", "shell", "console"}
RUNNABLE = "<!-- runnable -->"
NOT_RUNNABLE = re.compile(r"^<!-- not runnable: \S.* -->$")


@dataclass(frozen=True)
class Block:
    where: str  # "docs/admin.md:52" (the fence's line)
    mark: str | None  # "runnable", "not runnable", or None (unmarked)
    text: str


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        if m.group(1) in SHELLS:
            prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            mark = "runnable" if prev == RUNNABLE else "not runnable" if NOT_RUNNABLE.match(prev) else None
            out.append(Block(f"{path.relative_to(root)}:{start + 1}", mark, "\n".join(lines[start + 1:end]) + "\n"))
        i = end + 1
    return out


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [b for f in doc_files(root) for b in blocks(f, root)]
