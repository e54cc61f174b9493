"""Part 3: structured pruning (real channel removal) of a residual conv net with BatchNorm.

The model (`bench.models.resnet_bn`): stem conv, two stages of two residual blocks (Conv-BN-ReLU-Conv-BN + Add),
a strided conv between them, global average pooling and a Dense head; trained from scratch on the 8,000
training digits. For each keep ratio the engine's `structured_prune` (defaults: criterion l1, layer scope,
round_to 1) removes filters (residual chains are pruned as one group), the smaller model is fine-tuned briefly
(one epoch at Adam 1e-3, one at 1e-4, through the engine's `compile_model`),
and parameters, MACs, file size, held-out accuracy and compiled CPU latency (batch 1 and 32, alternating
rounds of `metrics.latency` on the original and the pruned model) are reported.
"""

from __future__ import annotations

from bench.common import CACHE_DIR, LoadMonitor, header, log, summarize, write_result
from bench.harness import Sides

# training phases: (epochs, Adam learning rate); a last phase at 1e-4 settles the BatchNorm statistics (at a
# constant 1e-3 the held-out accuracy of this net jumps by +-5 points from one epoch to the next)
FULL = {
    "width": 32,
    "pretrain": ((5, 1e-3), (1, 1e-4)),
    "keep_ratios": (0.75, 0.5, 0.25),
    "finetune": ((1, 1e-3), (1, 1e-4)),
    "latency_rounds": 7,
    "latency_runs": 30,
    "baseline_finetune": True,
    # other settings at keep 0.5 (criterion, scope, fine-tune phases or None for the default fine-tune)
    "extra": (("l1", "global", None), ("mean_activation", "layer", None), ("l1", "layer", ((3, 1e-3), (1, 1e-4)))),
}
QUICK = {
    "width": 8,
    "pretrain": ((1, 1e-3),),
    "keep_ratios": (0.5,),
    "finetune": ((1, 1e-3),),
    "latency_rounds": 2,
    "latency_runs": 20,
    "baseline_finetune": False,
    "extra": (),
}


def _pretrained(sides: Sides, cfg: dict) -> dict:
    import json

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tag = "-".join(f"{e}x{lr:g}" for e, lr in cfg["pretrain"])
    path = CACHE_DIR / f"resnet_bn-w{cfg['width']}-{tag}.keras"
    info = path.with_suffix(".json")
    if path.exists() and info.exists():
        return json.loads(info.read_text())
    log(f"structured: pretraining resnet_bn (width {cfg['width']}), phases {cfg['pretrain']}")
    result = sides["secateurs"].call("structured_pretrain", width=cfg["width"], phases=cfg["pretrain"], out=str(path))
    info.write_text(json.dumps(result))
    return result


def _latency(rounds: list[dict]) -> dict:
    out = {}
    for key in rounds[0]:
        out[key] = {
            "before_ms": summarize([r[key]["before_ms"] for r in rounds]),
            "after_ms": summarize([r[key]["after_ms"] for r in rounds]),
            "speedup": summarize([r[key]["speedup"] for r in rounds]),
        }
    return out


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["latency_rounds"] = repeats
    payload = header(
        "structured",
        command,
        quick,
        {**cfg, "criterion": "l1", "scope": "layer", "round_to": 1, "batch_size": 128, "optimizer": "adam(1e-3)"},
    )
    monitor = LoadMonitor()
    pre = _pretrained(sides, cfg)
    payload["pretrained"] = pre
    reference = None
    if cfg["baseline_finetune"]:
        reference = sides["secateurs"].call("finetune_reference", model_file=pre["path"], finetune=cfg["finetune"])
        payload["reference_finetuned"] = reference
    rows = []
    runs = [(ratio, "l1", "layer", None) for ratio in cfg["keep_ratios"]]
    runs += [(0.5, crit, scope, phases) for crit, scope, phases in cfg["extra"]]
    for ratio, criterion, scope, phases in runs:
        monitor.sample()
        r = sides["secateurs"].call(
            "structured_job",
            model_file=pre["path"],
            keep_ratio=ratio,
            criterion=criterion,
            scope=scope,
            finetune=phases or cfg["finetune"],
            latency_rounds=cfg["latency_rounds"],
            latency_runs=cfg["latency_runs"],
        )
        if reference is not None and not phases:
            r["baseline_finetuned_accuracy"] = reference["accuracy"]
        monitor.sample()
        r["latency"] = _latency(r.pop("latency_rounds"))
        r["accuracy_drop_points"] = 100 * (r["before"]["accuracy"] - r["after"]["accuracy"])
        r["goal"] = {
            "speedup_b32": r["latency"]["batch_32"]["speedup"]["median"],
            "speedup_b1": r["latency"]["batch_1"]["speedup"]["median"],
        }
        rows.append(r)
        log(
            f"structured: keep {ratio} ({criterion}, {scope}): "
            f"params {r['before']['params']} -> {r['after']['params']}, "
            f"speedup b1 {r['goal']['speedup_b1']:.2f}x b32 {r['goal']['speedup_b32']:.2f}x, "
            f"accuracy {r['before']['accuracy']:.4f} -> {r['after']['accuracy']:.4f}"
        )
    payload["rows"] = rows
    payload["load"] = monitor.summary()
    path = write_result("structured", payload, quick)
    log(f"structured: wrote {path}")
    return payload
