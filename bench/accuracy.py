"""Part 2: held-out accuracy at equal target sparsity and equal epochs, Secateurs defaults against tfmot.

From the same pretrained weights, each arm prunes to the target while fine-tuning the same number of epochs
(batch 128, Adam 1e-3, same seeds), then the 2,000 held-out digits are scored:

  secateurs            PruneStep(method="magnitude", target_sparsity=s, epochs=E): the engine's defaults
                       (since 78c2608: one global ranking that spares the smallest tensors and a small output
                       layer; polynomial schedule with its default window and frequency)
  secateurs:layer      the same with scope="layer" (every layer to the target: the default before 78c2608)
  tfmot:poly-f100      PolynomialDecay(0 -> s, begin 0, end = last step), tfmot's default frequency 100
  tfmot:poly-f10       the same with frequency 10
  tfmot:const-f100     ConstantSparsity(s, begin 0): prune_low_magnitude's default schedule type

Every arm runs with each seed; the table reports the median over seeds. "tfmot best" is the best tfmot arm
at that point (chosen after the fact, so it is generous to tfmot).
"""

from __future__ import annotations

import statistics

from bench.common import LoadMonitor, header, log, summarize, write_result
from bench.harness import Arm, Sides, pretrained

POINTS = {"tutorial_cnn": (0.5, 0.8, 0.9, 0.95), "lenet_300_100": (0.5, 0.8, 0.9, 0.92, 0.95)}
QUICK_POINTS = {"tutorial_cnn": (0.9,), "lenet_300_100": (0.9,)}
TFMOT_ARMS = {
    "tfmot:poly-f100": {"schedule": "polynomial", "frequency": 100},
    "tfmot:poly-f10": {"schedule": "polynomial", "frequency": 10},
    "tfmot:const-f100": {"schedule": "constant", "frequency": 100},
}
# label -> (worker side, task arguments); a side "secateurs@<rev>" runs the engine of that git revision
SECATEURS_ARMS = {
    "secateurs": ("secateurs", {}),
    "secateurs:layer": ("secateurs", {"step": {"scope": "layer"}}),
}
FULL = {"epochs": 2, "seeds": (0, 1, 2, 3, 4), "tfmot_arms": tuple(TFMOT_ARMS), "secateurs_arms": tuple(SECATEURS_ARMS)}
QUICK = {
    "epochs": 2,
    "seeds": (0,),
    "tfmot_arms": ("tfmot:poly-f100", "tfmot:poly-f10"),
    "secateurs_arms": ("secateurs",),
}


def arms_for(pre: dict, target: float, seed: int, cfg: dict) -> list[Arm]:
    common = {"epochs": cfg["epochs"], "batch_size": 128, "seed": seed, "target": target}
    arms = [
        Arm(
            name,
            SECATEURS_ARMS[name][0],
            "prune_job",
            {**common, "model_file": pre["keras"], **SECATEURS_ARMS[name][1]},
        )
        for name in cfg["secateurs_arms"]
    ]
    arms += [
        Arm(name, "tfmot", "prune_job", {**common, "model_file": pre["tfk"], **TFMOT_ARMS[name]})
        for name in cfg["tfmot_arms"]
    ]
    return arms


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["seeds"] = tuple(range(repeats))
    points = QUICK_POINTS if quick else POINTS
    payload = header(
        "accuracy",
        command,
        quick,
        {**cfg, "points": points, "batch_size": 128, "optimizer": "adam(1e-3)", "pretrain_epochs": 10},
    )
    monitor = LoadMonitor()
    payload["models"] = {}
    for model, targets in points.items():
        pre = pretrained(sides, model, epochs=10)
        rows = []
        for target in targets:
            raw: dict[str, list[dict]] = {}
            for seed in cfg["seeds"]:
                for arm in arms_for(pre, target, seed, cfg):
                    monitor.sample()
                    raw.setdefault(arm.label, []).append(sides[arm.side].call(arm.task, **arm.args))
            arms = {
                label: {
                    "accuracy": summarize([r["accuracy"] for r in rs]),
                    "sparsity": statistics.median(r["sparsity"]["overall"] for r in rs),
                    "layer_sparsity": {k: v["sparsity"] for k, v in rs[0]["sparsity"]["layers"].items()},
                    "spared": rs[0].get("spared"),
                }
                for label, rs in raw.items()
            }
            tf_labels = [a for a in arms if a.startswith("tfmot")]
            best_tf = max(tf_labels, key=lambda a: arms[a]["accuracy"]["median"])
            best = arms[best_tf]["accuracy"]["median"]
            row = {"target": target, "arms": arms, "tfmot_best": best_tf, "margin_vs_tfmot_best": {}, "goal_met": {}}
            for label in (a for a in arms if a.startswith("secateurs")):
                row["margin_vs_tfmot_best"][label] = arms[label]["accuracy"]["median"] - best
                row["goal_met"][label] = arms[label]["accuracy"]["median"] >= best
            rows.append(row)
            log(
                f"accuracy: {model} @ {target:.2f}: "
                + ", ".join(
                    f"{label} {arms[label]['accuracy']['median']:.4f}"
                    for label in arms
                    if label.startswith("secateurs")
                )
                + f"; best tfmot ({best_tf}) {best:.4f}"
            )
        payload["models"][model] = {"pretrained_accuracy": pre["accuracy"], "rows": rows}
    payload["load"] = monitor.summary()
    payload["workers"] = {
        name: sides[name].call("info")
        for name in {a[0] for a in SECATEURS_ARMS.values()}
        if name in {SECATEURS_ARMS[a][0] for a in cfg["secateurs_arms"]}
    }
    path = write_result("accuracy", payload, quick)
    log(f"accuracy: wrote {path}")
    return payload
