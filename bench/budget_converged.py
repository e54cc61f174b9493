"""Part 6f: part 6e on converged input models (`python -m bench budget_converged`).

Part 6e's input models are part 2's: 10 epochs on the 8,000 training digits, where held-out accuracy is still
rising (LeNet-300-100 and the tutorial CNN gain about a point more by epoch 30, where it levels off), so the 12
epochs of a lightly pruned tfmot run end above the input model and a budget measured from the input model cannot
match them. A user brings a trained model; here the same architectures are trained 30 epochs (Adam 1e-3, batch 128,
seed 0, `bench.harness.pretrained`), and everything else is part 6e's: tfmot at 0.8 / 0.9 / 0.95 / 0.97 for 12
epochs at the better of frequencies 100 and 10, the budget job given that setting's drop, seeds 0-2, the same
verdict. Before the settings, each input model is also fine-tuned plainly for 2 epochs per seed, at the constant
learning rate (as the engine trains) and under a warm-up + cosine schedule (`finetune_rates`): what a trial's
training alone costs a converged model. Results: bench/results/budget_converged.json.
"""

from __future__ import annotations

from bench.budget_matched import run_matched
from bench.common import log
from bench.harness import Sides, pretrained

PRETRAIN_EPOCHS = 30


def finetune_rates(sides: Sides, models, seeds, epochs: int) -> dict:
    """Per model, the input model's accuracy on the test half and, per seed, after `epochs` of plain fine-tuning at
    the constant rate and under a warm-up + cosine schedule (the val half under each run's "val")."""
    out = {}
    for model in models:
        pre = pretrained(sides, model, epochs=PRETRAIN_EPOCHS)
        runs = [
            sides["secateurs"].call("finetune_rates", model_file=pre["keras"], epochs=epochs, seed=seed)
            for seed in seeds
        ]
        out[model] = {"input": runs[0]["input"], "runs": runs}  # the test half, as every accuracy of the part
        log(f"budget_converged: {model} fine-tuned {epochs} epochs: {runs}")
    return out


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    return run_matched(
        sides,
        quick,
        command,
        repeats,
        name="budget_converged",
        pretrain_epochs=PRETRAIN_EPOCHS,
        before=lambda cfg, step: {"finetune": finetune_rates(sides, cfg["models"], cfg["seeds"], step["epochs"])},
    )
