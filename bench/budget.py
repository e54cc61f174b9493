"""Part 6: the budget search. "How small can the model get within 1 point of held-out accuracy?"

From the part-2 pretrained weights (10 epochs on the 8,000 training digits, cached under bench/.cache), one
`{"kind": "budget", "max_drop": 0.01, "epochs": 2, "max_trials": 6}` job per model and seed, run through the
engine's `compress` as a user runs it (sensitivity analysis, allocation, search, fine-tuning of every trial).
The job gets one half of the 2,000 held-out digits as its x_val and chooses on it; the other half is never shown
to it (`SPLIT`; `bench.sides._shared.VAL` / `TEST`). Reported: every trial, the kernels' sparsity of the returned
model, its accuracy measured by the bench itself (argmax) on both halves, the drop in points on each, the epochs
spent and the wall time. Goals (issue 12): LeNet-300-100 >= 92 % sparsity, the tutorial CNN >= 90 %, both within 1
point on the half the job never saw.
"""

from __future__ import annotations

import statistics

from bench.common import LoadMonitor, header, log, write_result
from bench.harness import Sides, pretrained

SPLIT = (
    "the held-out digits split in two halves: val, the even positions (a budget job's x_val, on which it makes every "
    "choice, and on which a tfmot setting is hand-picked), and test, the odd positions (never shown to a job), on "
    "which the results are judged"
)

GOALS = {"lenet_300_100": 0.92, "tutorial_cnn": 0.90}
FULL = {"models": ("lenet_300_100", "tutorial_cnn"), "seeds": (0,), "max_drop": 0.01, "epochs": 2, "max_trials": 6}
QUICK = {"models": ("lenet_300_100",), "seeds": (0,), "max_drop": 0.01, "epochs": 1, "max_trials": 2}


def budget_step(cfg: dict) -> dict:
    """Part 6's budget step (magnitude, fewest non-zero weights) with the max_drop, epochs and trials of `cfg`."""
    return {
        "kind": "budget",
        "metric": "accuracy",
        "max_drop": cfg["max_drop"],
        "epochs": cfg["epochs"],
        "max_trials": cfg["max_trials"],
        "objective": "nonzero_params",
        "method": "magnitude",
    }


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["seeds"] = tuple(range(repeats))
    step = budget_step(cfg)
    payload = header(
        "budget", command, quick, {**cfg, "step": step, "batch_size": 128, "pretrain_epochs": 10, "split": SPLIT}
    )
    monitor = LoadMonitor()
    payload["models"] = {}
    for model in cfg["models"]:
        pre = pretrained(sides, model, epochs=10, tfmot=False)
        base = sides["secateurs"].call("input_accuracy", model_file=pre["keras"])
        runs = []
        for seed in cfg["seeds"]:
            monitor.sample()
            r = sides["secateurs"].call("budget_job", model_file=pre["keras"], step=step, seed=seed)
            monitor.sample()
            trials = r["budget"]["trials"]
            chosen = trials[r["budget"]["chosen"]]
            r.update(
                seed=seed,
                drop_points=100 * (base["test"] - r["accuracy"]),
                val_drop_points=100 * (base["val"] - r["val_accuracy"]),
                epochs_spent=sum(t["epochs"] for t in trials),
                chosen_level=chosen["level"],
                goal_met=r["sparsity"]["overall"] >= GOALS[model] and base["test"] - r["accuracy"] <= 0.01 + 1e-12,
            )
            runs.append(r)
            log(
                f"budget: {model} seed {seed}: sparsity {r['sparsity']['overall']:.4f}, test accuracy "
                f"{base['test']:.4f} -> {r['accuracy']:.4f} ({-r['drop_points']:+.2f} points; val "
                f"{-r['val_drop_points']:+.2f}), "
                f"{len(trials)} trials, met {r['budget']['met']}, {r['wall_time_s']:.0f} s"
            )
        payload["models"][model] = {
            "pretrained_accuracy": base["test"],
            "pretrained_val_accuracy": base["val"],
            "pretrained_accuracy_all": base["all"],
            "goal_sparsity": GOALS[model],
            "runs": runs,
            "sparsity_median": statistics.median(r["sparsity"]["overall"] for r in runs),
            "drop_points_median": statistics.median(r["drop_points"] for r in runs),
            "goal_met": all(r["goal_met"] for r in runs),
        }
    payload["load"] = monitor.summary()
    path = write_result("budget", payload, quick)
    log(f"budget: wrote {path}")
    return payload
