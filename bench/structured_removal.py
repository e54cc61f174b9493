"""Part 3b: how a structured step removes units, on the toy models and a BN ResNet (`python -m bench
structured_removal`).

A structured step that fine-tunes can remove its units gradually (`removal: "gradual"`: units re-ranked on the
current weights and masked out on a linear ramp, one surgery at the end) or cut once and then fine-tune (`removal:
"one_shot"`); by default it is gradual only where the units pass through a squeeze-excite gate (part 5b). This part
puts the two side by side on the models the engine's other defaults were measured on: LeNet-300-100 and the tutorial CNN
(part 2's pretrained models, 10 epochs) and part 3's BN ResNet (`resnet_bn`, width 32, 5 epochs), each job run as a
user runs it (`pipeline.compress` with one step: keep 0.75 or 0.5, 2 epochs, batch 128, everything else default),
against plain fine-tuning for as long (a `finetune` step, BatchNorm re-estimated as every job does). Seeds 0-2,
held-out accuracy of the exported model measured by the bench. Results: bench/results/structured_removal.json.
"""

from __future__ import annotations

from bench.common import LoadMonitor, header, log, write_result
from bench.harness import Sides, pretrained

FULL = {
    "models": {"lenet_300_100": 10, "tutorial_cnn": 10, "resnet_bn": 5},  # model -> pretraining epochs
    "keep_ratios": (0.75, 0.5),
    "removals": ("gradual", "one_shot"),
    "seeds": (0, 1, 2),
    "epochs": 2,
    "batch_size": 128,
}
QUICK = {**FULL, "models": {"lenet_300_100": 10}, "keep_ratios": (0.5,), "seeds": (0,)}


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    cfg = QUICK if quick else FULL
    monitor = LoadMonitor()
    payload = header("structured_removal", command, quick, cfg)
    payload["models"] = {}

    def job(pre: dict, step: dict, seed: int) -> dict:
        monitor.sample()
        return sides["secateurs"].call(
            "step_job", model_file=pre["keras"], step=step, batch_size=cfg["batch_size"], seed=seed
        )

    for model, epochs in cfg["models"].items():
        pre = pretrained(sides, model, epochs=epochs, batch_size=cfg["batch_size"], tfmot=False)
        plain = [job(pre, {"kind": "finetune", "epochs": cfg["epochs"]}, s) for s in cfg["seeds"]]
        log(f"structured_removal: {model} plain fine-tune {[r['accuracy'] for r in plain]}")
        rows = []
        for keep in cfg["keep_ratios"]:
            for removal in cfg["removals"]:
                step = {"kind": "structured", "keep_ratio": keep, "epochs": cfg["epochs"], "removal": removal}
                runs = [job(pre, step, s) for s in cfg["seeds"]]
                rows.append({"keep_ratio": keep, "removal": removal, "runs": runs})
                log(f"structured_removal: {model} keep {keep} {removal}: {[r['accuracy'] for r in runs]}")
        payload["models"][model] = {"pretrained": pre, "pretrain_epochs": epochs, "plain": plain, "rows": rows}
        write_result("structured_removal", {**payload, "load": monitor.summary()}, quick)
    payload["load"] = monitor.summary()
    write_result("structured_removal", payload, quick)
    return payload


def tables(d: dict) -> str:
    """Part 3b's table: per model and keep ratio, each removal's held-out accuracy per seed, its median difference
    to plain fine-tuning of the same seed, the MACs ratio and the claimed wins."""
    from statistics import median

    from bench.report_format import _md, _run_line

    cfg = d["config"]
    rows = []
    for name, m in d["models"].items():
        plain = [r["accuracy"] for r in m["plain"]]
        rows.append(
            [name, m["pretrain_epochs"], f"{m['pretrained']['accuracy']:.4f}", "plain fine-tune", "—", "—",
             " / ".join(f"{a:.4f}" for a in plain), "—", "—"]
        )  # fmt: skip
        for row in m["rows"]:
            acc = [r["accuracy"] for r in row["runs"]]
            delta = median(100 * (a - p) for a, p in zip(acc, plain))
            macs = median(r["macs"]["after"] / r["macs"]["before"] for r in row["runs"])
            params = median(r["params"]["after"] / r["params"]["before"] for r in row["runs"])
            wins = ", ".join(sorted({r["win"] for r in row["runs"]}))
            rows.append(
                ["", "", "", row["removal"],
                 row["keep_ratio"], f"{macs:.2f}× / {params:.2f}×", " / ".join(f"{a:.4f}" for a in acc),
                 f"{delta:+.2f}", wins]
            )  # fmt: skip
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    return "\n".join(
        [
            _run_line(d),
            "",
            f"One step per job, {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam 1e-3, every other setting the "
            f"engine's default; seeds {seeds}. Points: median over seeds of (step − plain fine-tune of the same seed).",
            "",
            _md(
                rows,
                [
                    "model",
                    "pretraining epochs",
                    "pretrained acc.",
                    "removal",
                    "keep",
                    "MACs / params",
                    "held-out acc. per seed",
                    "points vs plain",
                    "claimed win",
                ],
            ),
        ]
    )
