"""One point of part 2 with more seeds: `python -m bench.accuracy_point MODEL TARGET [SEEDS]`.

Where part 2 finds a difference of a few digits out of 2,000, five seeds cannot tell a real loss from noise.
This runs every arm of `bench.accuracy` at one (model, sparsity) point for SEEDS seeds (default 15) and reports
each arm's mean and median accuracy and the paired per-seed difference of each Secateurs arm against each tfmot
arm (mean, its standard error, and how many seeds won / tied / lost). Written to
bench/results/accuracy_point.json.
"""

from __future__ import annotations

import statistics
import sys

from bench.accuracy import FULL, arms_for
from bench.common import LoadMonitor, header, log, summarize, write_result
from bench.harness import Sides, pretrained


def main(model: str, target: float, seeds: int = 15) -> dict:
    cfg = {**FULL, "seeds": tuple(range(seeds))}
    command = f"python -m bench.accuracy_point {model} {target:g} {seeds}"
    payload = header(
        "accuracy_point",
        command,
        False,
        {**cfg, "model": model, "target": target, "batch_size": 128, "optimizer": "adam(1e-3)"},
    )
    monitor = LoadMonitor()
    raw: dict[str, list[float]] = {}
    with Sides() as sides:
        pre = pretrained(sides, model, epochs=10)
        for seed in cfg["seeds"]:
            for arm in arms_for(pre, target, seed, cfg):
                monitor.sample()
                raw.setdefault(arm.label, []).append(sides[arm.side].call(arm.task, **arm.args)["accuracy"])
            log(f"accuracy_point: seed {seed + 1}/{seeds}")
    arms = {label: {**summarize(v), "mean": statistics.fmean(v)} for label, v in raw.items()}
    paired = {}
    for ours in (a for a in raw if a.startswith("secateurs")):
        for theirs in (a for a in raw if a.startswith("tfmot")):
            d = [100 * (a - b) for a, b in zip(raw[ours], raw[theirs])]
            paired[f"{ours} - {theirs}"] = {
                "mean_points": statistics.fmean(d),
                "stderr_points": statistics.stdev(d) / len(d) ** 0.5,
                "won": sum(x > 0 for x in d),
                "tied": sum(x == 0 for x in d),
                "lost": sum(x < 0 for x in d),
            }
    payload.update(pretrained_accuracy=pre["accuracy"], arms=arms, paired=paired, load=monitor.summary())
    path = write_result("accuracy_point", payload, False)
    for name, p in paired.items():
        log(
            f"accuracy_point: {name}: {p['mean_points']:+.2f} ± {p['stderr_points']:.2f} points "
            f"(won {p['won']}, tied {p['tied']}, lost {p['lost']})"
        )
    log(f"accuracy_point: wrote {path}")
    return payload


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (2, 3):
        raise SystemExit("usage: python -m bench.accuracy_point MODEL TARGET [SEEDS]")
    main(args[0], float(args[1]), int(args[2]) if len(args) == 3 else 15)
