"""Part 6b: the budget search on the zoo's MobileNetV2 (alpha 0.35), structured (`python -m bench budget_zoo`).

The model and data are part 5b's (`bench.zoo_setup`): MobileNetV2 trained 5 epochs from scratch on the 8,000
training digits padded to 32x32 RGB, BatchNorm statistics settled, cached under bench/.cache/zoo (`bench.zoo`'s
`_pretrained`). One job with one step
`{"kind": "budget", "method": "structured", "metric": "accuracy", "max_drop": 0.02, "objective": "macs",
"epochs": 2, "max_trials": 6}`, batch 128, through the engine's `compress` as a user runs it. The budget is
relative to the input model's accuracy as the job measures it (manifest.before) on the val half of the 2,000
held-out digits, the only held-out digits it gets; the bench scores the input and the returned model on the test
half, which the job never sees (`bench.budget.SPLIT`). One seed: a job costs 10-20 minutes on the 2 bench cores.
Goal (issue 12): MACs of the returned model <= 0.6x the input's, within the 2 points on the test half. The input
model is not converged (5 epochs), so the run also fine-tunes the unpruned input model for as many epochs as the
returned model was trained along its chain of warm starts (`zoo_plain`: plain, and with BatchNorm re-estimated): the
reference that separates what pruning cost from what the extra training gained.
"""

from __future__ import annotations

from bench.budget import SPLIT
from bench.common import LoadMonitor, header, log, write_result
from bench.harness import Sides
from bench.zoo import _pretrained
from bench.zoo_setup import MODELS

MODEL = "mobilenet_v2"
GOAL_MACS = 0.6
STEP = {
    "kind": "budget",
    "method": "structured",
    "metric": "accuracy",
    "max_drop": 0.02,
    "objective": "macs",
    "epochs": 2,
    "max_trials": 6,
}
FULL = {"data": MODELS[MODEL], "seeds": (0,)}
QUICK = {
    "data": {"n_train": 1000, "n_test": 500, "pretrain_epochs": 1},
    "seeds": (0,),
    "step": {"epochs": 1, "max_trials": 2},  # laid over the part's step
}
BATCH = 128


def chain_epochs(trials: list[dict], index: int) -> int:
    """Epochs the model of trial `index` was trained for in all: its own and those of the trials it warm-started
    from (each trial's `start`)."""
    epochs = 0
    while index is not None:
        epochs += trials[index]["epochs"]
        index = trials[index].get("start")
    return epochs


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    return run_step(sides, quick, command, repeats, name="budget_zoo", step=STEP, goal_macs=GOAL_MACS)


def run_step(
    sides: Sides,
    quick: bool,
    command: str,
    repeats: int | None,
    *,
    name: str,
    step: dict,
    goal_macs: float | None,
) -> dict:
    """One budget job per seed with `step` on the zoo's MobileNetV2, written to bench/results/NAME.json; the goal
    (MACs <= goal_macs within the budget) is judged only when goal_macs is given."""
    cfg = dict(QUICK if quick else FULL)
    cfg["step"] = {**step, **cfg.get("step", {})}  # a quick run trains less
    if repeats:
        cfg["seeds"] = tuple(range(repeats))
    payload = header(
        name, command, quick, {**cfg, "model": MODEL, "batch_size": BATCH, "goal_macs": goal_macs, "split": SPLIT}
    )
    monitor = LoadMonitor()
    pre = _pretrained(sides, MODEL, cfg["data"], BATCH, tfmot=False)
    data = {"model": MODEL, "n_train": cfg["data"]["n_train"], "n_test": cfg["data"]["n_test"]}
    runs = []
    for seed in cfg["seeds"]:
        monitor.sample()
        r = sides["secateurs"].call(
            "zoo_budget_job", **data, model_file=pre["keras"], data_file=pre["data"], step=cfg["step"], seed=seed
        )
        monitor.sample()
        b = r["budget"]
        for t in b["trials"]:
            t["macs_ratio"] = t["macs"] / r["macs_before"]
        r.update(
            seed=seed,
            drop_points=100 * (r["input_accuracy"]["test"] - r["accuracy"]),
            epochs_spent=sum(t["epochs"] for t in b["trials"]),
        )
        # the goal is judged on the test half: MACs within the ratio and the drop within the budget there
        within = r["drop_points"] <= 100 * cfg["step"]["max_drop"] + 1e-9
        r["goal_met"] = None if goal_macs is None else bool(within and r["macs_ratio"] <= goal_macs)
        r["chain_epochs"] = chain_epochs(b["trials"], b["chosen"])
        if cfg.get("reference", True):
            # the unpruned input model trained as long as the returned one was (its chain of warm starts), plain
            # and with BatchNorm re-estimated: how much of the returned accuracy is the extra training
            r["reference"] = sides["secateurs"].call(
                "zoo_plain", **data, model_file=pre["keras"], epochs=r["chain_epochs"], batch_size=BATCH, seed=seed
            )
            log(
                f"{name}: reference, {r['chain_epochs']} epochs unpruned: {r['reference']['accuracy']:.4f}, "
                f"with BatchNorm re-estimated {r['reference']['reestimated'].get('accuracy')}"
            )
        runs.append(r)
        log(
            f"{name}: seed {seed}: MACs {r['macs_ratio']:.3f}x, test accuracy {r['input_accuracy']['test']:.4f} -> "
            f"{r['accuracy']:.4f} ({-r['drop_points']:+.2f} points), {len(b['trials'])} trials, met {b['met']}, "
            f"{r['wall_time_s']:.0f} s"
        )
        for i, t in enumerate(b["trials"]):
            log(
                f"{name}:   trial {i}: level {t['level']:.4f}, accuracy {t['metric']:.4f} (drop {t['drop']:+.4f}), "
                f"MACs {t['macs_ratio']:.3f}x, within {t['within_budget']}"
            )
    payload["pretrained"] = pre
    payload["runs"] = runs
    payload["goal_met"] = None if goal_macs is None else all(r["goal_met"] for r in runs)
    payload["load"] = monitor.summary()
    path = write_result(name, payload, quick)
    log(f"{name}: wrote {path}")
    return payload
