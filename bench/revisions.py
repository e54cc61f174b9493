"""Run a benchmark arm on another revision of this repository, side by side with the current tree.

`checkout(rev)` puts that commit into a temporary git worktree (`git worktree add --detach`) and removes it again
afterwards; a worker side (`Sides["secateurs@<rev>"]`) or a server (`bench/service.py`) started with that directory
as its root imports that revision's code, while the other arms of the same run import this checkout. Behaviour
that is an operating choice is compared through settings instead (SECATEURS_* variables of a server, see
docs/CONFIG.md); a revision is for a "before" that was simply older code. The repository's files are not touched;
git records the temporary worktree until it is removed (`git worktree prune` clears one left by a crash).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import ROOT


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def resolve(rev: str) -> str:
    """The full commit id of `rev` (a commit, branch, tag or expression such as `6ba69ba^`)."""
    return _git("rev-parse", "--verify", f"{rev}^{{commit}}")


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A temporary worktree of `rev`, detached; removed on exit."""
    commit = resolve(rev)
    parent = Path(tempfile.mkdtemp(prefix=f"bench-{commit[:8]}-"))
    tree = parent / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree
    finally:
        try:
            _git("worktree", "remove", "--force", str(tree))
        except RuntimeError:
            shutil.rmtree(tree, ignore_errors=True)
            _git("worktree", "prune")
        shutil.rmtree(parent, ignore_errors=True)
