"""Part 6f: part 6e on converged input models (`python -m bench budget_converged`).

Part 6e's input models are part 2's: 10 epochs on the 8,000 training digits, where held-out accuracy is still
rising (LeNet-300-100 and the tutorial CNN gain about a point more by epoch 30, where it levels off), so the 12
epochs of a lightly pruned tfmot run end above the input model and a budget measured from the input model cannot
match them. A user brings a trained model; here the same architectures are trained 30 epochs (Adam 1e-3, batch 128,
seed 0, `bench.harness.pretrained`), and everything else is part 6e's: tfmot at 0.8 / 0.9 / 0.95 / 0.97 for 12
epochs at the better of frequencies 100 and 10, the budget job given that setting's drop, seeds 0-2, the same
verdict. Results: bench/results/budget_converged.json.
"""

from __future__ import annotations

from bench.budget_matched import run_matched
from bench.harness import Sides

PRETRAIN_EPOCHS = 30


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    return run_matched(sides, quick, command, repeats, name="budget_converged", pretrain_epochs=PRETRAIN_EPOCHS)
