"""Before/after of the engine's mask updates: `python -m bench.mask_history REV [REV ...]`.

For each git revision, a worktree of the current commit (HEAD) gets workers/engine/masks.py of that revision
(`bench.revisions.checkout`), so that only the mask code differs, and a Secateurs worker there runs
`mask_update_cost` (a 4-epoch gradual prune of LeNet-300-100 to 80 %, every mask update timed) in interleaved
repetitions. Written to bench/results/mask_history.json.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from bench.common import ROOT, LoadMonitor, header, log, summarize, write_result
from bench.harness import Sides, pretrained
from bench.revisions import checkout
from bench.worker import Side


def tree_at(rev: str, stack: ExitStack) -> Path:
    """A worktree of HEAD with workers/engine/masks.py of `rev`, removed when `stack` closes."""
    text = subprocess.run(
        ["git", "show", f"{rev}:workers/engine/masks.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    tree = stack.enter_context(checkout("HEAD"))
    (tree / "workers" / "engine" / "masks.py").write_text(text)
    return tree


def main(revs: list[str], repeats: int = 5) -> dict:
    command = "python -m bench.mask_history " + " ".join(revs)
    payload = header(
        "mask_history",
        command,
        False,
        {"revisions": revs, "repeats": repeats, "model": "lenet_300_100", "epochs": 4, "target": 0.8},
    )
    monitor = LoadMonitor()
    with Sides() as sides:
        pre = pretrained(sides, "lenet_300_100", epochs=10, tfmot=False)
    results: dict[str, list[dict]] = {rev: [] for rev in revs}
    with ExitStack() as trees:  # worktrees and workers, closed in reverse order
        workers = {
            rev: trees.enter_context(Side("secateurs", root=tree_at(rev, trees), label=f"secateurs@{rev}"))
            for rev in revs
        }
        for rep in range(repeats + 1):  # the first round warms up
            for rev in revs:
                monitor.sample()
                r = workers[rev].call("mask_update_cost", model_file=pre["keras"], epochs=4, target=0.8)
                if rep:
                    results[rev].append(r)
            log(f"mask_history: round {rep}/{repeats}")
    payload["revisions"] = {
        rev: {k: summarize([r[k] for r in rs]) for k in rs[0] if k != "updates"} | {"updates": rs[0]["updates"]}
        for rev, rs in results.items()
    }
    payload["load"] = monitor.summary()
    path = write_result("mask_history", payload, False)
    log(f"mask_history: wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:] or ["26171c3", "009fc65", "HEAD"])
