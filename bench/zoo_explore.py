"""Screening arms for issue 9's gaps at part 5b's setup, one arm per process (not a bench part).

    python -m bench.zoo_explore MODEL ARM[+FLAG...] [SEED]

MODEL: mobilenet_v2, resnet_bn16 or efficientnet_b0. FLAGs set engine switches (`_flags`), e.g. for the structured
global ranking `macs+pow50+tgt130+share25` (groups.GLOBAL_RULE "macs", POWER 0.5, TARGET_POWER 1.3, MIN_SHARE
0.25), `reshape` / `noreshape` (handlers.TRACE_UNIT_RESHAPE on / off: squeeze-excite's Reshape traced or a
barrier), `gradual` / `oneshot` (the structured step's `removal`: units removed progressively during the fine-tune,
one surgery at its end, or one cut first; `gendNN`: the gradual ramp ends at NN % of the steps, `gpowNN`: its power
is NN / 10, `gkeepnorm` / `grenorm`: gradual.RENORMALIZE off / on),
`keepchains` (EfficientNetB0's project convs and stem overridden to keep 1.0) and `keepNN` (keep_ratio NN / 100).

Loads the pretrained model that `python -m bench zoo_setup` caches (bench/.cache/zoo, 8,000 digits), runs one
JobSpec through `pipeline.compress` exactly as `bench.sides.zoo_secateurs.zoo_engine` does (2 epochs, batch 128,
Adam 1e-3, latency off) and prints one JSON line: held-out accuracy of the exported model, MACs ratio, sparsity
and the allocation per kind of layer. ARM names a step below; "plain" runs the reference (2 epochs of `model.fit`
+ BatchNorm re-estimation). Results are appended to bench/.cache/zoo/explore.jsonl.
"""

from __future__ import annotations

import json
import sys
import time

from bench.zoo import ZOO_CACHE
from bench.zoo_setup import BATCH, EPOCHS, MODELS, NAMED_MODELS

PRUNE = {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "epochs": EPOCHS}
STRUCT = {"kind": "structured", "keep_ratio": 0.75, "epochs": EPOCHS}
ARMS = {
    "prune": PRUNE,
    "prune_layer": {**PRUNE, "scope": "layer"},
    "prune_end50": {**PRUNE, "schedule": {"kind": "polynomial", "end": 0.5}},
    "struct_layer": STRUCT,
    "struct_global": {**STRUCT, "scope": "global"},
    "struct_05": {**STRUCT, "keep_ratio": 0.5},
    "struct_05_global": {**STRUCT, "keep_ratio": 0.5, "scope": "global"},
}


def _kind(key: str) -> str:
    name = key.split("/")[0]
    for kind in ("depthwise", "expand", "project", "Conv1", "Conv_1", "predictions"):
        if kind in name:
            return kind
    return "other"


def _flags(flags: list[str], step: dict) -> None:
    """Engine variants under test, set on the engine's modules (this process runs one arm)."""
    from workers.engine import pruning
    from workers.engine.structured import gradual, groups, handlers

    for flag in flags:
        if flag in ("units", "macs"):  # the structured global ranking (groups.GLOBAL_RULE and its knobs)
            groups.GLOBAL_RULE = flag
        elif flag.startswith("pow"):
            groups.POWER = int(flag[3:]) / 100
        elif flag.startswith("tgt"):
            groups.TARGET_POWER = int(flag[3:]) / 100
        elif flag.startswith("share"):
            groups.MIN_SHARE = int(flag[5:]) / 100
        elif flag == "reshape":  # trace squeeze-excite's Reshape((1, 1, C)) (handlers.TRACE_UNIT_RESHAPE, now on)
            handlers.TRACE_UNIT_RESHAPE = True
        elif flag == "noreshape":  # squeeze-excite's Reshape a barrier again (the default before it was traced)
            handlers.TRACE_UNIT_RESHAPE = False
        elif flag == "gradual":  # units leave during the fine-tune, one cut at its end (removal "gradual", default)
            step["removal"] = "gradual"
        elif flag == "oneshot":  # one cut, then the fine-tune (removal "one_shot", the default before gradual)
            step["removal"] = "one_shot"
        elif flag.startswith("gend"):  # the gradual ramp ends at NN % of the fine-tune's steps (gradual.END)
            gradual.END = int(flag[4:]) / 100
        elif flag == "gkeepnorm":  # gradual: groups normalized by their mean before the removed zeros (default)
            gradual.RENORMALIZE = False
        elif flag == "grenorm":  # gradual: groups normalized by their mean with the removed zeros
            gradual.RENORMALIZE = True
        elif flag.startswith("gpow"):  # the gradual ramp's polynomial power NN / 10 (gradual.POWER)
            gradual.POWER = int(flag[4:]) / 10
        elif flag == "keepchains":  # EfficientNetB0: residual streams (project convs, stem) keep every unit
            blocks = "1a 2a 2b 3a 3b 4a 4b 4c 5a 5b 5c 6a 6b 6c 6d 7a".split()
            names = [f"block{b}_project_conv" for b in blocks] + ["stem_conv"]
            step["_overrides"] = {n: {"keep_ratio": 1.0} for n in names}
        elif flag.startswith("keep"):
            step["keep_ratio"] = int(flag[4:]) / 100
        elif flag == "sparedw":
            pruning.SPARE_ROLES = ("depthwise_kernel",)
        elif flag in ("erk", "lamp"):
            pruning.NORMALIZED_RULE = flag
        elif flag.startswith("floor"):
            pruning.FLOOR_SHARE = int(flag[5:]) / 100
        elif flag.startswith("end"):
            step["schedule"] = {"kind": "polynomial", "end": int(flag[3:]) / 100}
        elif flag.startswith("freq"):
            step.setdefault("schedule", {"kind": "polynomial"})["frequency"] = int(flag[4:])
        else:
            raise SystemExit(f"unknown flag {flag}")


def main(model: str, arm: str, seed: int = 0) -> dict:
    from bench.sides.zoo_secateurs import zoo_engine, zoo_plain

    m = {**MODELS, **NAMED_MODELS}[model]
    stem = ZOO_CACHE / f"{model}-n{m['n_train']}-t{m['n_test']}-e{m['pretrain_epochs']}-b{BATCH}"
    data = {"model": model, "n_train": m["n_train"], "n_test": m["n_test"], "model_file": str(stem) + ".keras"}
    t0 = time.perf_counter()
    if arm == "plain":
        r = zoo_plain(**data, epochs=EPOCHS, batch_size=BATCH, seed=seed)
        out = {"accuracy": r["accuracy"], "reestimated": r["reestimated"].get("accuracy")}
    else:
        step, extra = dict(ARMS[arm.split("+")[0]]), {}
        _flags(arm.split("+")[1:], step)
        overrides = step.pop("_overrides", None)
        spec = {"steps": [step], "training": {"batch_size": BATCH}, "evaluation": {"latency": False}, "seed": seed}
        if overrides:
            spec["layers"] = {"overrides": overrides}
        spec.update(extra)
        from workers.engine.pipeline import steps as steps_mod

        reports, real = [], steps_mod.structured_prune

        def recording(*a, **k):
            model, report = real(*a, **k)
            reports.append(report)
            return model, report

        steps_mod.structured_prune = recording
        from workers.engine.structured import gradual as gradual_mod

        real_finish = gradual_mod.GradualStructured.finish

        def finishing(self):  # the gradual variant's one cut (flag `gradual`)
            model, report = real_finish(self)
            reports.append(report)
            return model, report

        gradual_mod.GradualStructured.finish = finishing
        r = zoo_engine(**data, data_file=str(stem) + "-data.npz", spec=spec)
        if reports:
            out_groups = {
                "+".join(sorted({_kind(n) for n in grp.layers})) + f"({len(grp.layers)})": []
                for grp in reports[0].groups
            }
            for grp in reports[0].groups:
                key = "+".join(sorted({_kind(n) for n in grp.layers})) + f"({len(grp.layers)})"
                out_groups[key].append(f"{grp.units_after}/{grp.units_before}")
        out = {k: r.get(k) for k in ("accuracy", "train_accuracy", "macs_ratio", "sparsity", "layers_over_98")}
        alloc = (r["steps"][0].get("allocation") or {}) if r.get("steps") else {}
        by_kind: dict[str, list[float]] = {}
        for key, s in alloc.items():
            by_kind.setdefault(_kind(key), []).append(s)
        out["allocation"] = {k: round(sum(v) / len(v), 3) for k, v in by_kind.items()}
        out["layer_sparsity"] = r.get("layer_sparsity")
        if reports:
            out["groups"] = out_groups
    out.update(model=model, arm=arm, seed=seed, wall_s=round(time.perf_counter() - t0, 1))
    with open(ZOO_CACHE / "explore.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    print("RESULT", json.dumps({k: v for k, v in out.items() if k != "layer_sparsity"}), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
