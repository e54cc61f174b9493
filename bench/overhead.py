"""Part 1: pruning overhead and end-to-end pruning-job time, Secateurs (Keras 3) against tfmot (tf_keras).

For each model, from the same pretrained weights, every repetition runs (interleaved, same batch size, same
epochs, same data order seed):

  secateurs plain  <variant>   load .keras, compile (as the engine), fit E epochs, save   (plain Keras 3)
  secateurs prune  <variant>   load, Pruner + callback (engine defaults), compile, fit, detach, save
  tfmot plain                  load, compile, fit E epochs, save                            (plain tf_keras)
  tfmot prune f100 / f10       load, prune_low_magnitude(PolynomialDecay 0 -> target over the run,
                               frequency 100 = tfmot's default, or 10), compile, fit + UpdatePruningStep,
                               strip_pruning, save

overhead = prune fit time / plain fit time of the same side, per repetition; end to end = Secateurs job time /
tfmot job time (load -> saved pruned model), per repetition; medians over repetitions.
"""

from __future__ import annotations

from bench.common import LoadMonitor, header, log, summarize, write_result
from bench.harness import Arm, Sides, paired_ratio, pretrained, run_interleaved, times

MODELS = ("tutorial_cnn", "lenet_300_100")
TARGET = 0.8
FULL = {"repeats": 9, "epochs": 4, "variants": ("default", "spe=1", "jit", "dataset"), "tfmot_frequencies": (100, 10)}
QUICK = {"repeats": 2, "epochs": 4, "variants": ("default",), "tfmot_frequencies": (100,)}


def arms_for(model: str, pre: dict, cfg: dict) -> list[Arm]:
    common = {"epochs": cfg["epochs"], "batch_size": 128, "seed": 0}
    arms = []
    for v in cfg["variants"]:
        arms.append(
            Arm(f"secateurs:plain:{v}", "secateurs", "plain_job", {**common, "model_file": pre["keras"], "variant": v})
        )
        arms.append(
            Arm(
                f"secateurs:prune:{v}",
                "secateurs",
                "prune_job",
                {**common, "model_file": pre["keras"], "variant": v, "target": TARGET},
            )
        )
    arms.append(Arm("tfmot:plain", "tfmot", "plain_job", {**common, "model_file": pre["tfk"]}))
    for f in cfg["tfmot_frequencies"]:
        arms.append(
            Arm(
                f"tfmot:prune:f{f}",
                "tfmot",
                "prune_job",
                {**common, "model_file": pre["tfk"], "target": TARGET, "frequency": f},
            )
        )
    return arms


def analyse(results: dict[str, list[dict]], cfg: dict) -> dict:
    arms = {}
    for label, rs in results.items():
        arms[label] = {k: times(rs, k) for k in ("fit_s", "fit_cpu_s", "job_s", "setup_s")}
        arms[label]["accuracy"] = summarize([r["accuracy"] for r in rs])
        arms[label]["sparsity"] = rs[-1]["sparsity"]["overall"]
        for extra in ("compiled_by", "mask_updates", "spared", "schedule"):
            if extra in rs[-1]:
                arms[label][extra] = rs[-1][extra]
    tf_plain, tf_prune = results["tfmot:plain"], results["tfmot:prune:f100"]
    ratios = {
        "overhead": {
            f"tfmot:f{f}": paired_ratio(results[f"tfmot:prune:f{f}"], tf_plain, "fit_s")
            for f in cfg["tfmot_frequencies"]
        },
        "overhead_cpu": {
            f"tfmot:f{f}": paired_ratio(results[f"tfmot:prune:f{f}"], tf_plain, "fit_cpu_s")
            for f in cfg["tfmot_frequencies"]
        },
        "end_to_end_vs_tfmot": {},
        "plain_fit_vs_tf_keras": {},
        "prune_fit_vs_tfmot": {},
    }
    for v in cfg["variants"]:
        plain, prune = results[f"secateurs:plain:{v}"], results[f"secateurs:prune:{v}"]
        ratios["overhead"][f"secateurs:{v}"] = paired_ratio(prune, plain, "fit_s")
        ratios["overhead_cpu"][f"secateurs:{v}"] = paired_ratio(prune, plain, "fit_cpu_s")
        ratios["end_to_end_vs_tfmot"][f"secateurs:{v}"] = paired_ratio(prune, tf_prune, "job_s")
        ratios["prune_fit_vs_tfmot"][f"secateurs:{v}"] = paired_ratio(prune, tf_prune, "fit_s")
        ratios["plain_fit_vs_tf_keras"][f"keras3:{v}"] = paired_ratio(plain, tf_plain, "fit_s")
    return {"arms": arms, "ratios": ratios}


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["repeats"] = repeats
    payload = header(
        "overhead",
        command,
        quick,
        {**cfg, "models": MODELS, "target_sparsity": TARGET, "batch_size": 128, "optimizer": "adam(1e-3)"},
    )
    monitor = LoadMonitor()
    payload["models"] = {}
    for model in MODELS:
        pre = pretrained(sides, model, epochs=10)
        log(f"overhead: {model}, {cfg['repeats']} repetitions of {cfg['epochs']} epochs")
        results = run_interleaved(sides, arms_for(model, pre, cfg), cfg["repeats"], monitor)
        payload["models"][model] = {"pretrained_accuracy": pre["accuracy"], **analyse(results, cfg)}
    payload["load"] = monitor.summary()
    payload["workers"] = {name: sides[name].call("info") for name in ("secateurs", "tfmot")}
    path = write_result("overhead", payload, quick)
    log(f"overhead: wrote {path}")
    return payload
