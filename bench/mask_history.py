"""Before/after of the engine's mask updates: `python -m bench.mask_history REV [REV ...]`.

For each git revision, workers/engine/masks.py of that revision is put into a copy of the working tree and a
Secateurs worker on that copy runs `mask_update_cost` (a 4-epoch gradual prune of LeNet-300-100 to 80 %, every
mask update timed) in interleaved repetitions. Written to bench/results/mask_history.json.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from bench.common import LoadMonitor, ROOT, header, log, summarize, write_result
from bench.harness import Sides, pretrained
from bench.patching import patched_tree
from bench.worker import Side


def tree_at(rev: str):
    tree = patched_tree([])
    text = subprocess.run(["git", "show", f"{rev}:workers/engine/masks.py"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    (tree / "workers" / "engine" / "masks.py").write_text(text)
    return tree


def main(revs: list[str], repeats: int = 5) -> dict:
    command = "python -m bench.mask_history " + " ".join(revs)
    payload = header("mask_history", command, False, {"revisions": revs, "repeats": repeats, "model": "lenet_300_100",
                                                      "epochs": 4, "target": 0.8})
    monitor = LoadMonitor()
    with Sides() as sides:
        pre = pretrained(sides, "lenet_300_100", epochs=10, tfmot=False)
    trees = {rev: tree_at(rev) for rev in revs}
    workers = {rev: Side("secateurs", root=tree, label=f"secateurs@{rev}") for rev, tree in trees.items()}
    results: dict[str, list[dict]] = {rev: [] for rev in revs}
    try:
        for rep in range(repeats + 1):  # the first round warms up
            for rev in revs:
                monitor.sample()
                r = workers[rev].call("mask_update_cost", model_file=pre["keras"], epochs=4, target=0.8)
                if rep:
                    results[rev].append(r)
            log(f"mask_history: round {rep}/{repeats}")
    finally:
        for w in workers.values():
            w.close()
        for tree in trees.values():
            shutil.rmtree(tree, ignore_errors=True)
    payload["revisions"] = {rev: {k: summarize([r[k] for r in rs]) for k in rs[0] if k != "updates"} |
                            {"updates": rs[0]["updates"]} for rev, rs in results.items()}
    payload["load"] = monitor.summary()
    path = write_result("mask_history", payload, False)
    log(f"mask_history: wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:] or ["26171c3", "009fc65", "HEAD"])
