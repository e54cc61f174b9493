"""Part 6c: the budget step against hand-picked tfmot settings at equal total epochs (`python -m bench budget_tfmot`).

For the models of part 2 (LeNet-300-100 and the tutorial CNN, the same pretrained weights given to both sides,
`bench.harness.pretrained`), per seed:

  budget   part 6's job (`bench.budget`'s step: max_drop 0.01, 2 epochs per trial, at most 6 trials) through the
           engine's `compress`. Its training cost is the sum of its trials' epochs (manifest.budget.trials); its
           sensitivity analysis costs evaluations only, no epochs (its seconds are recorded).
  tfmot    tfmot's guide, per layer: prune_low_magnitude with PolynomialDecay(0 -> s, begin 0, end = the last step),
           fit with UpdatePruningStep, strip_pruning (`bench.sides.tfmot.prune_job`, part 2's task), for as many
           epochs as that budget job spent, at the hand-picked final sparsities s in SPARSITIES, frequency 100
           (tfmot's default) and 10.

Both are scored by the bench on the 2,000 held-out digits (argmax), and sized the same way: non-zero weights and the
gzip (level 9) of the weights as one .npz (independent of the two Keras file formats). The verdict compares the
budget's returned model with the smallest tfmot setting whose held-out accuracy (median over seeds) stays within the
same 1 point of the input model. Results: bench/results/budget_tfmot.json.
"""

from __future__ import annotations

import statistics

from bench.budget import FULL as BUDGET_FULL
from bench.budget import QUICK as BUDGET_QUICK
from bench.budget import budget_step
from bench.common import LoadMonitor, header, log, write_result
from bench.harness import Sides, pretrained

SPARSITIES = (0.8, 0.9, 0.95, 0.97)
FREQUENCIES = (100, 10)
FULL = {"models": ("lenet_300_100", "tutorial_cnn"), "seeds": (0, 1, 2), "sparsities": SPARSITIES}
QUICK = {"models": ("lenet_300_100",), "seeds": (0,), "sparsities": (0.9,)}
BATCH = 128


def step_config(quick: bool) -> dict:
    return budget_step(BUDGET_QUICK if quick else BUDGET_FULL)


def label(target: float, frequency: int) -> str:
    return f"tfmot poly {target:g} f{frequency}"


def budget_job(sides: Sides, pre: dict, step: dict, seed: int) -> dict:
    """One budget job on the pretrained model; `total_epochs`: the sum of its trials' epochs."""
    r = sides["secateurs"].call("budget_job", model_file=pre["keras"], step=step, seed=seed)
    r.update(seed=seed, total_epochs=sum(t["epochs"] for t in r["budget"]["trials"]))
    return r


def tfmot_job(sides: Sides, pre: dict, epochs: int, target: float, frequency: int, seed: int) -> dict:
    """tfmot's guide (PolynomialDecay 0 -> target over all steps) on the same pretrained weights."""
    t = sides["tfmot"].call(
        "prune_job",
        model_file=pre["tfk"],
        epochs=epochs,
        batch_size=BATCH,
        target=target,
        schedule="polynomial",
        frequency=frequency,
        seed=seed,
    )
    t.update(seed=seed, epochs=epochs, target=target, frequency=frequency)
    return t


def _median(rs: list[dict], key) -> float:
    return statistics.median(key(r) for r in rs)


def sizes(rs: list[dict]) -> dict:
    return {
        "accuracy": _median(rs, lambda r: r["accuracy"]),
        "sparsity": _median(rs, lambda r: r["sparsity"]["overall"]),
        "nonzero_weights": _median(rs, lambda r: r["nonzero_weights"]),
        "weights_gzip_bytes": _median(rs, lambda r: r["weights_gzip_bytes"]),
    }


def dominated_by(budget: dict, settings: dict[str, dict]) -> list[str]:
    """The tfmot settings with no more non-zero weights and no lower accuracy than the budget's model (an empty list:
    the budget's model is on the Pareto front of the settings tried)."""
    return sorted(
        k
        for k, s in settings.items()
        if s["nonzero_weights"] <= budget["nonzero_weights"] and s["accuracy"] >= budget["accuracy"]
    )


def verdict(base: float, max_drop: float, budget: dict, settings: dict[str, dict]) -> dict:
    """The smallest tfmot setting within the budget (median accuracy >= base - max_drop; fewest non-zero weights), and
    whether the budget's model is smaller (both fewer non-zero weights and fewer gzip bytes) at equal or better
    accuracy than it (`met`), or smaller and within the budget whatever the accuracy order (`met_within_budget`); and
    the settings that dominate the budget's model (`dominated_by`)."""
    within = {k: s for k, s in settings.items() if s["accuracy"] >= base - max_drop - 1e-12}
    out = {
        "tfmot_within_budget": sorted(within),
        "budget_within_budget": budget["accuracy"] >= base - max_drop - 1e-12,
        "dominated_by": dominated_by(budget, settings),
    }
    if not within:
        out.update(tfmot_best=None, smaller=True, accuracy_margin=None, met=out["budget_within_budget"])
        return out
    best = min(within, key=lambda k: (within[k]["nonzero_weights"], -within[k]["accuracy"]))
    b = within[best]
    fewer = budget["nonzero_weights"] < b["nonzero_weights"]
    lighter = budget["weights_gzip_bytes"] < b["weights_gzip_bytes"]
    smaller = fewer and lighter
    margin = budget["accuracy"] - b["accuracy"]
    out.update(
        tfmot_best=best,
        smaller=smaller,
        smaller_nonzero=fewer,
        smaller_gzip=lighter,
        size_ratio_nonzero=budget["nonzero_weights"] / b["nonzero_weights"],
        size_ratio_gzip=budget["weights_gzip_bytes"] / b["weights_gzip_bytes"],
        accuracy_margin=margin,
        met=bool(out["budget_within_budget"] and smaller and margin >= 0),
        met_within_budget=bool(out["budget_within_budget"] and smaller),
    )
    return out


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["seeds"] = tuple(range(repeats))
    step = step_config(quick)
    payload = header(
        "budget_tfmot",
        command,
        quick,
        {**cfg, "step": step, "frequencies": FREQUENCIES, "batch_size": BATCH, "pretrain_epochs": 10},
    )
    monitor = LoadMonitor()
    payload["models"] = {}
    for model in cfg["models"]:
        pre = pretrained(sides, model, epochs=10)
        budget_runs, tf_runs = [], {}
        for seed in cfg["seeds"]:
            monitor.sample()
            r = budget_job(sides, pre, step, seed)
            epochs = r["total_epochs"]
            budget_runs.append(r)
            log(
                f"budget_tfmot: {model} seed {seed}: budget sparsity {r['sparsity']['overall']:.4f}, accuracy "
                f"{r['accuracy']:.4f}, {epochs} epochs, {r['weights_gzip_bytes']:,} gzip bytes"
            )
            for s in cfg["sparsities"]:
                for f in FREQUENCIES:
                    monitor.sample()
                    t = tfmot_job(sides, pre, epochs, s, f, seed)
                    tf_runs.setdefault(label(s, f), []).append(t)
                    log(
                        f"budget_tfmot: {model} seed {seed}: tfmot {s:g} f{f}: accuracy {t['accuracy']:.4f}, "
                        f"{t['weights_gzip_bytes']:,} gzip bytes"
                    )
        budget = sizes(budget_runs)
        settings = {
            k: {**sizes(rs), "target": rs[0]["target"], "frequency": rs[0]["frequency"]} for k, rs in tf_runs.items()
        }
        payload["models"][model] = {
            "pretrained_accuracy": pre["accuracy"],
            "budget_runs": budget_runs,
            "budget": budget,
            "total_epochs": sorted({r["total_epochs"] for r in budget_runs}),
            "tfmot_runs": tf_runs,
            "tfmot": settings,
            "verdict": verdict(pre["accuracy"], step["max_drop"], budget, settings),
        }
        v = payload["models"][model]["verdict"]
        log(f"budget_tfmot: {model}: verdict {v}")
        write_result("budget_tfmot", {**payload, "load": monitor.summary()}, quick)
    payload["load"] = monitor.summary()
    path = write_result("budget_tfmot", payload, quick)
    log(f"budget_tfmot: wrote {path}")
    return payload
