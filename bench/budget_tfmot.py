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

The 2,000 held-out digits are split in two (`bench.sides._shared.VAL` / `TEST`): the budget job gets the val half
as its x_val and makes every choice on it; the test half is never shown to a job. Both tools are scored by the bench
on both halves (argmax) and sized the same way: non-zero weights and the gzip (level 9) of the weights as one .npz
(independent of the two Keras file formats). The verdict picks, as a user would by hand, the smallest tfmot setting
whose val accuracy (median over seeds) stays within the same 1 point of the input model's, and compares the
budget's returned model with it on the test half. Results: bench/results/budget_tfmot.json.
"""

from __future__ import annotations

import statistics

import numpy as np

from bench.budget import FULL as BUDGET_FULL
from bench.budget import QUICK as BUDGET_QUICK
from bench.budget import SPLIT, budget_step
from bench.common import LoadMonitor, header, log, write_result
from bench.harness import Sides, pretrained
from bench.sides._shared import unpack_right

SPARSITIES = (0.8, 0.9, 0.95, 0.97)
FREQUENCIES = (100, 10)
FULL = {"models": ("lenet_300_100", "tutorial_cnn"), "seeds": (0, 1, 2), "sparsities": SPARSITIES}
QUICK = {"models": ("lenet_300_100",), "seeds": (0,), "sparsities": (0.9,)}
BATCH = 128
DRAWS = 2000  # bootstrap draws of the test digits (margin_interval)


def step_config(quick: bool) -> dict:
    return budget_step(BUDGET_QUICK if quick else BUDGET_FULL)


def label(target: float, frequency: int) -> str:
    return f"tfmot poly {target:g} f{frequency}"


def input_accuracy(sides: Sides, pre: dict) -> dict:
    """The input model's accuracy: {"val", "test", "all"} (`bench.sides._shared.split_accuracy`)."""
    return sides["secateurs"].call("input_accuracy", model_file=pre["keras"])


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
    split = t["split_accuracy"]  # judged on the test half, as the budget job's model (module docstring)
    t.update(seed=seed, epochs=epochs, target=target, frequency=frequency)
    t.update(
        accuracy=split["test"], val_accuracy=split["val"], accuracy_all=split["all"], test_right=split["test_right"]
    )
    return t


def _median(rs: list[dict], key) -> float:
    return statistics.median(key(r) for r in rs)


def sizes(rs: list[dict]) -> dict:
    """Medians over seeds: accuracy (test half), val accuracy, sparsity and both sizes."""
    return {
        "accuracy": _median(rs, lambda r: r["accuracy"]),
        "val_accuracy": _median(rs, lambda r: r["val_accuracy"]),
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


def margin_interval(budget_runs: list[dict], tfmot_runs: list[dict], draws: int = DRAWS) -> list[float] | None:
    """How far the test digits alone can move the verdict's accuracy margin (the budget's median test accuracy over
    seeds minus tfmot's, as `sizes` takes it): a 95 % percentile bootstrap that redraws the test half's digits with
    replacement, the same draw for every run of both sides (each run's `test_right`, digit by digit), and takes the
    margin on each draw. [low, high] in accuracy (0.001 = one digit of 1,000); None when a run lacks `test_right`.
    An interval that holds 0 means these digits cannot tell which side is the more accurate; seeds are not redrawn,
    so it says nothing of how much the margin moves from seed to seed."""
    if not budget_runs or not tfmot_runs or any("test_right" not in r for r in [*budget_runs, *tfmot_runs]):
        return None
    b, t = (np.stack([unpack_right(r["test_right"]) for r in rs]) for rs in (budget_runs, tfmot_runs))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, b.shape[1], size=(draws, b.shape[1]))
    margins = np.median(b[:, idx].mean(axis=-1), axis=0) - np.median(t[:, idx].mean(axis=-1), axis=0)
    low, high = np.percentile(margins, [2.5, 97.5])
    return [round(float(low), 6), round(float(high), 6)]


def verdict(base: dict, max_drop: float, budget: dict, settings: dict[str, dict]) -> dict:
    """`base`: the input model's {"val", "test"} accuracy. The smallest tfmot setting within the budget on the val
    half (median val accuracy >= base val - max_drop; fewest non-zero weights: the setting a user hand-picks on the
    data they hold out), and whether the budget's model is smaller than it (both fewer non-zero weights and fewer
    gzip bytes) at an equal or better accuracy on the test half (`met`); whether each stays within the budget on the
    test half (`budget_within_budget`, `met_within_budget`: smaller and both within); and the settings that dominate
    the budget's model on the test half (`dominated_by`)."""
    within = {k: s for k, s in settings.items() if s["val_accuracy"] >= base["val"] - max_drop - 1e-12}
    floor = base["test"] - max_drop - 1e-12
    out = {
        "tfmot_within_budget": sorted(within),
        "budget_within_budget": budget["accuracy"] >= floor,
        "budget_within_budget_val": budget["val_accuracy"] >= base["val"] - max_drop - 1e-12,
        "dominated_by": dominated_by(budget, settings),
    }
    if not within:
        out.update(tfmot_best=None, smaller=True, accuracy_margin=None, met=out["budget_within_budget"])
        return out
    best = min(within, key=lambda k: (within[k]["nonzero_weights"], -within[k]["val_accuracy"]))
    b = within[best]
    fewer = budget["nonzero_weights"] < b["nonzero_weights"]
    lighter = budget["weights_gzip_bytes"] < b["weights_gzip_bytes"]
    smaller = fewer and lighter
    margin = budget["accuracy"] - b["accuracy"]
    out.update(
        tfmot_best=best,
        tfmot_best_within_budget=b["accuracy"] >= floor,
        smaller=smaller,
        smaller_nonzero=fewer,
        smaller_gzip=lighter,
        size_ratio_nonzero=budget["nonzero_weights"] / b["nonzero_weights"],
        size_ratio_gzip=budget["weights_gzip_bytes"] / b["weights_gzip_bytes"],
        accuracy_margin=margin,
        met=bool(smaller and margin >= -1e-12),
        met_within_budget=bool(smaller and out["budget_within_budget"] and b["accuracy"] >= floor),
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
        {**cfg, "step": step, "frequencies": FREQUENCIES, "batch_size": BATCH, "pretrain_epochs": 10, "split": SPLIT},
    )
    monitor = LoadMonitor()
    payload["models"] = {}
    for model in cfg["models"]:
        pre = pretrained(sides, model, epochs=10)
        base = input_accuracy(sides, pre)
        budget_runs, tf_runs = [], {}
        for seed in cfg["seeds"]:
            monitor.sample()
            r = budget_job(sides, pre, step, seed)
            epochs = r["total_epochs"]
            budget_runs.append(r)
            log(
                f"budget_tfmot: {model} seed {seed}: budget sparsity {r['sparsity']['overall']:.4f}, accuracy "
                f"{r['accuracy']:.4f} (val {r['val_accuracy']:.4f}), {epochs} epochs, {r['weights_gzip_bytes']:,} "
                "gzip bytes"
            )
            for s in cfg["sparsities"]:
                for f in FREQUENCIES:
                    monitor.sample()
                    t = tfmot_job(sides, pre, epochs, s, f, seed)
                    tf_runs.setdefault(label(s, f), []).append(t)
                    log(
                        f"budget_tfmot: {model} seed {seed}: tfmot {s:g} f{f}: accuracy {t['accuracy']:.4f} "
                        f"(val {t['val_accuracy']:.4f}), "
                        f"{t['weights_gzip_bytes']:,} gzip bytes"
                    )
        budget = sizes(budget_runs)
        settings = {
            k: {**sizes(rs), "target": rs[0]["target"], "frequency": rs[0]["frequency"]} for k, rs in tf_runs.items()
        }
        payload["models"][model] = {
            "pretrained_accuracy": base["test"],
            "pretrained_val_accuracy": base["val"],
            "pretrained_accuracy_all": base["all"],
            "budget_runs": budget_runs,
            "budget": budget,
            "total_epochs": sorted({r["total_epochs"] for r in budget_runs}),
            "tfmot_runs": tf_runs,
            "tfmot": settings,
            "verdict": verdict(base, step["max_drop"], budget, settings),
        }
        v = payload["models"][model]["verdict"]
        if v["tfmot_best"] is not None:
            v["accuracy_margin_ci95"] = margin_interval(budget_runs, tf_runs[v["tfmot_best"]])
        log(f"budget_tfmot: {model}: verdict {v}")
        write_result("budget_tfmot", {**payload, "load": monitor.summary()}, quick)
    payload["load"] = monitor.summary()
    path = write_result("budget_tfmot", payload, quick)
    log(f"budget_tfmot: wrote {path}")
    return payload
