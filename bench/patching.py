"""Measure proposed engine/service patches (bench/patches/*.diff) before they land, side by side.

`patched_tree(names)` copies the working tree's workers/, service/ and bench/ to a temporary directory and
applies the named diffs there (`git apply`, paths relative to the repository root); a worker side or a server
started with that directory as its root imports the patched code, while the other arms of the same run import
the unpatched tree. A name with a leading "-" is applied in reverse: once a patch has landed, "-<patch>" rebuilds
the tree as it was before it, so the before/after comparison stays measurable in one run. Nothing in the
repository itself is modified.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import ROOT

PATCH_DIR = ROOT / "bench" / "patches"


def patch_path(name: str) -> Path:
    name = name.removeprefix("-")
    path = PATCH_DIR / (name if name.endswith(".diff") else f"{name}.diff")
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PATCH_DIR.glob("*.diff")))
        raise FileNotFoundError(f"no patch '{name}' in {PATCH_DIR}; known: {known or 'none'}")
    return path


def patched_tree(names: list[str] | tuple[str, ...]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="bench-patched-"))
    ignore = shutil.ignore_patterns("__pycache__", ".cache", "results", "*.pyc")
    for d in ("workers", "service", "bench"):
        shutil.copytree(ROOT / d, tmp / d, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    for name in names:
        reverse = ["--reverse"] if name.startswith("-") else []
        result = subprocess.run(["git", "apply", "--whitespace=nowarn", *reverse, str(patch_path(name))], cwd=tmp,
                                capture_output=True, text=True)
        if result.returncode != 0:
            how = "in reverse " if reverse else ""
            raise RuntimeError(f"patch {name} does not apply {how}to the working tree: {result.stderr.strip()}")
    return tmp


def tree_is_current(names: list[str] | tuple[str, ...]) -> dict[str, bool]:
    """Whether each patch is already in the working tree (it then applies in reverse)."""
    out = {}
    for name in names:
        r = subprocess.run(["git", "apply", "--check", "--reverse", str(patch_path(name))], cwd=ROOT,
                           capture_output=True, text=True)
        out[name] = r.returncode == 0
    return out
