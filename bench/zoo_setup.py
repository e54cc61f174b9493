"""Part 5b: the zoo at issue 9's own setup, Secateurs and the plain reference only (`python -m bench zoo_setup`).

Part 5 (`bench.zoo`) trains MobileNetV2 and the BN ResNet on 4,000 digits to keep the whole zoo, tfmot arms
included, near an hour on two cores; its 2 fine-tune epochs are then 64 optimizer steps. Issue 9 measured its
goals on all 8,000 training digits (126 steps for 2 epochs). This part reruns the goal points on that setup with the
same tasks (`bench.sides.zoo_secateurs`: `zoo_pretrain`, `zoo_plain`, `zoo_engine`), and adds arms that are not
defaults: structured `scope: "layer"` (the default before `global`) and each `removal` set explicitly (gradual, or
one cut then the fine-tune), to show what each choice costs or gains on each model. No tfmot arm (part 5 has them).
Results: bench/results/zoo_setup.json.

EfficientNetB0 costs several times what the two others cost together, so it runs when named:
`python -m bench zoo_setup --models efficientnet_b0` reruns only the models named and keeps the other models'
results in the file; each model's entry records the run it came from ("run": date, commit, command, load).
"""

from __future__ import annotations

import json

from bench.common import RESULTS_DIR, LoadMonitor, header, log, write_result
from bench.harness import Sides
from bench.zoo import _call, _pretrained

MODELS = {
    "mobilenet_v2": {"n_train": 8000, "n_test": 2000, "pretrain_epochs": 5},
    "resnet_bn16": {"n_train": 8000, "n_test": 2000, "pretrain_epochs": 3},
}
NAMED_MODELS = {"efficientnet_b0": {"n_train": 8000, "n_test": 2000, "pretrain_epochs": 6}}  # run when named
QUICK_MODELS = {"resnet_bn16": {"n_train": 1000, "n_test": 500, "pretrain_epochs": 1}}
EPOCHS, BATCH = 2, 128
STRUCT = {"kind": "structured", "epochs": EPOCHS}
ARMS = {  # "(default)": removal left to the engine (gradual where units pass through squeeze-excite, else one cut)
    "prune 0.8 (default)": {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "epochs": EPOCHS},
    "structured 0.75 (default)": {**STRUCT, "keep_ratio": 0.75},
    "structured 0.75, gradual": {**STRUCT, "keep_ratio": 0.75, "removal": "gradual"},
    "structured 0.75, one-shot cut": {**STRUCT, "keep_ratio": 0.75, "removal": "one_shot"},
    "structured 0.75, scope layer": {**STRUCT, "keep_ratio": 0.75, "scope": "layer"},
    "structured 0.5 (default)": {**STRUCT, "keep_ratio": 0.5},
}


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None, models: list[str] | None = None) -> dict:
    known = {**MODELS, **NAMED_MODELS}
    if models:
        unknown = sorted(set(models) - set(known))
        if unknown:
            raise SystemExit(f"zoo_setup: unknown models {unknown}; known: {sorted(known)}")
        chosen = {name: known[name] for name in models}
    else:
        chosen = QUICK_MODELS if quick else MODELS
    monitor = LoadMonitor()
    config = {"epochs": EPOCHS, "batch_size": BATCH, "arms": ARMS, "optimizer": "adam(1e-3)", "seed": 0}
    payload = header("zoo_setup", command, quick, {"models": chosen, **config})
    kept = {} if quick else _kept_models(set(chosen), config)
    payload["config"]["models"] = {**{k: v["setup"] for k, v in kept.items()}, **chosen}
    payload["models"] = dict(kept)
    for model, m in chosen.items():
        pre = _pretrained(sides, model, m, BATCH, tfmot=False)
        data = {"model": model, "n_train": m["n_train"], "n_test": m["n_test"]}
        plain = _call(
            sides, "secateurs", "zoo_plain", monitor, **data, model_file=pre["keras"], epochs=EPOCHS, batch_size=BATCH
        )
        arms = {}
        for name, step in ARMS.items():
            spec = {"steps": [step], "training": {"batch_size": BATCH}, "evaluation": {"latency": False}}
            arms[name] = _call(
                sides,
                "secateurs",
                "zoo_engine",
                monitor,
                **data,
                model_file=pre["keras"],
                data_file=pre["data"],
                spec=spec,
            )
            log(f"zoo_setup: {model} {name}: {arms[name].get('accuracy')}")
        run_info = {k: payload[k] for k in ("date", "commit", "command")} | {"load": monitor.summary()}
        payload["models"][model] = {
            "pretrained": pre,
            **data,
            "pretrain_epochs": m["pretrain_epochs"],
            "setup": m,
            "plain": plain,
            "arms": arms,
            "run": run_info,
        }
        write_result("zoo_setup", {**payload, "load": monitor.summary()}, quick)
    payload["load"] = monitor.summary()
    write_result("zoo_setup", payload, quick)
    return payload


def _kept_models(rerun: set[str], config: dict) -> dict:
    """The other models' entries of the last full results, when they were made with the same arms and settings
    (each keeps the "run" it came from)."""
    path = RESULTS_DIR / "zoo_setup.json"
    if not path.exists():
        return {}
    last = json.loads(path.read_text())
    if {k: last["config"].get(k) for k in config} != config:
        log("zoo_setup: the stored results used other arms or settings; they are not kept")
        return {}
    out = {}
    for name, entry in last["models"].items():
        if name in rerun:
            continue
        entry.setdefault("setup", last["config"]["models"].get(name))
        entry.setdefault("run", {k: last[k] for k in ("date", "commit", "command", "load")})
        out[name] = entry
    return out
