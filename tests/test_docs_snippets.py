"""The Python programs that the docs pass to `python3 -c '...'` in their shell examples must compile on the
project's Python (3.11 refuses a backslash inside an f-string's braces, which 3.12 accepts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INLINE = re.compile(r"python3? -c '([^']*)'")  # a shell single-quoted program: no ' inside by construction


def _programs() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, match in enumerate(INLINE.finditer(doc.read_text())):
            found.append((f"{doc.name}#{i}", match.group(1)))
    return found


def test_the_docs_have_inline_programs_to_check():
    assert len(_programs()) >= 2


@pytest.mark.parametrize(("where", "program"), _programs(), ids=[w for w, _ in _programs()])
def test_inline_python_in_the_docs_compiles(where, program):
    compile(program, where, "exec")
