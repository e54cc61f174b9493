"""Part 6h: the magnitude budget search on the zoo's MobileNetV2 (`python -m bench budget_zoo_magnitude`).

Part 6b's model, data, seed and reference (`bench.budget_zoo.run_step`) with the unstructured step instead:
`{"kind": "budget", "method": "magnitude", "metric": "accuracy", "max_drop": 0.02, "objective":
"nonzero_params", "epochs": 2, "max_trials": 6}`. Issue 12 sets no goal for it; the part checks that the budget
search's defaults (sensitivity allocation over about fifty layers, depthwise and pointwise alike, BatchNorm
re-estimated per trial, trials that keep their pruned weights when a fine-tune scores lower) hold on a real
architecture and not only on the toy models of parts 6 and 6c-6g. Results: bench/results/budget_zoo_magnitude.json.
"""

from __future__ import annotations

from bench.budget_zoo import run_step
from bench.harness import Sides

STEP = {
    "kind": "budget",
    "method": "magnitude",
    "metric": "accuracy",
    "max_drop": 0.02,
    "objective": "nonzero_params",
    "epochs": 2,
    "max_trials": 6,
}


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    return run_step(sides, quick, command, repeats, name="budget_zoo_magnitude", step=STEP, goal_macs=None)
