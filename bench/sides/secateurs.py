"""The Secateurs side: Keras 3 (TensorFlow backend) and the engine in workers/engine.

The pruning job is what the pipeline's gradual prune step does, without the evaluation, latency and export
around it: `prunable_weights` -> `Pruner` -> `pruner.callback(settings, steps_per_epoch)` -> `compile_model` (after
attaching the Pruner) -> `fit` -> `detach` -> save, with the spec's values turned into the engine's by
`workers.engine.config` as a job does.

Training *variants* try what Keras 3 offers on top of the engine's defaults (see VARIANTS); the benchmark
reports each one so that only what measurably helps is kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

if os.environ.get("TF_USE_LEGACY_KERAS") == "1":  # pragma: no cover - launched by bench.worker
    raise RuntimeError("the Secateurs side runs on Keras 3: unset TF_USE_LEGACY_KERAS")

import keras
import numpy as np
import tensorflow as tf

from bench.models import build
from bench.sides._shared import Stopwatch, data, held_out_accuracy, kernel_sparsity

_TMP = Path(tempfile.mkdtemp(prefix="bench-secateurs-"))

# name -> overrides of the engine's compile settings (`model_io.compile_model`) and the input pipeline; the
# plain and the pruning job of a variant compile alike, so the overhead is pruning's alone
VARIANTS: dict[str, dict] = {
    "default": {},  # the engine as it is (steps_per_execution 8 since it was measured here)
    "spe=1": {"steps_per_execution": 1},  # Keras' default, the engine's setting before
    "jit": {"jit_compile": True},  # XLA
    "dataset": {"pipeline": "dataset"},  # a cached, shuffled, prefetched tf.data.Dataset instead of arrays
}


def _variant(name: str) -> tuple[dict, str]:
    try:
        v = dict(VARIANTS[name])
    except KeyError:
        raise ValueError(f"unknown variant '{name}'; known: {', '.join(VARIANTS)}") from None
    return {k: v for k, v in v.items() if k != "pipeline"}, v.get("pipeline", "arrays")


def _fit_inputs(pipeline: str, batch_size: int, seed: int):
    x, y, _, _ = data()
    if pipeline == "arrays":
        return {"x": x, "y": y, "batch_size": batch_size, "shuffle": True}
    ds = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .cache()
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return {"x": ds}


def pretrain(model: str, epochs: int, batch_size: int, out: str, seed: int = 0, lr: float = 1e-3) -> dict:
    """Train `model` from scratch on the 8,000 training digits; save weights (.npz, w0..wn) and a .keras file."""
    keras.utils.set_random_seed(seed)
    x, y, _, _ = data()
    m = build(model, keras)
    m.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    acc = held_out_accuracy(m)
    np.savez(out, **{f"w{i}": w for i, w in enumerate(m.get_weights())})
    keras_path = str(Path(out).with_suffix(".keras"))
    m.save(keras_path)
    return {"weights": out, "keras": keras_path, "accuracy": acc, "params": int(m.count_params())}


def _compile_plain(model, lr: float, extra: dict | None = None) -> None:
    """Keras' own compile with Keras' defaults (the mask-update profile below; the jobs compile as the engine)."""
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        **(extra or {}),
    )


def _finish(model, sw: Stopwatch, extra: dict) -> dict:
    model.save(_TMP / "out.keras")
    sw.mark("saved")
    acc = held_out_accuracy(model)
    return {**sw.report(), "accuracy": acc, "sparsity": kernel_sparsity(model), **extra}


def plain_job(
    model_file: str, epochs: int, batch_size: int, lr: float = 1e-3, seed: int = 0, variant: str = "default"
) -> dict:
    """Load, compile (as the engine does, with the variant's overrides), fit `epochs` without pruning, save:
    plain Keras 3."""
    keras.utils.set_random_seed(seed)
    extra, pipeline = _variant(variant)
    inputs = _fit_inputs(pipeline, batch_size, seed)
    sw = Stopwatch()
    model = keras.saving.load_model(model_file)
    compiled_by = _engine_compile(model, lr, batch_size, extra)
    sw.mark("compiled")
    model.fit(**inputs, epochs=epochs, verbose=0)
    sw.mark("fitted")
    return _finish(model, sw, {"variant": variant, "compiled_by": compiled_by})


def _engine_compile(model, lr: float, batch_size: int, extra: dict) -> str:
    """The engine's compile (`model_io.compile_model`), then the variant's overrides of its settings (a compile
    again from the same config). Returns a description of what was done."""
    from workers.engine import config, model_io
    from workers.spec import TrainingSpec

    training = config.training_settings(
        TrainingSpec(
            batch_size=batch_size,
            optimizer="adam",
            learning_rate=lr,
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    )
    model_io.compile_model(model, training, training.loss, training.metrics)
    if not extra:
        return "model_io.compile_model"
    config = model.get_compile_config()
    model.compile(**keras.saving.deserialize_keras_object({**config, **extra}))
    return "model_io.compile_model + " + ", ".join(f"{k}={v}" for k, v in extra.items())


def prune_step(target: float, epochs: int, **overrides):
    from workers.spec import PruneStep

    return PruneStep(method="magnitude", target_sparsity=target, epochs=epochs, **overrides)


def prune_job(
    model_file: str,
    epochs: int,
    batch_size: int,
    target: float,
    lr: float = 1e-3,
    seed: int = 0,
    variant: str = "default",
    step: dict | None = None,
    selection: dict | None = None,
) -> dict:
    """Load, attach a Pruner (engine defaults: global scope, polynomial schedule), compile, fit with the pruning
    callback, detach, save: the pipeline's gradual prune step without evaluation/latency/export."""
    from workers.engine import config
    from workers.engine.pruning import Pruner
    from workers.engine.registry import prunable_weights
    from workers.spec import LayerSelection

    keras.utils.set_random_seed(seed)
    extra, pipeline = _variant(variant)
    inputs = _fit_inputs(pipeline, batch_size, seed)
    x = data()[0]
    spec = prune_step(target, epochs, **(step or {}))
    sw = Stopwatch()
    model = keras.saving.load_model(model_file)
    selection = config.layer_selection(LayerSelection(**(selection or {})))
    pruner = Pruner(model, prunable_weights(model, selection), selection.overrides)
    callback = pruner.callback(config.prune_settings(spec), int(np.ceil(len(x) / batch_size)))
    compiled_by = _engine_compile(model, lr, batch_size, extra)
    sw.mark("compiled")
    model.fit(**inputs, epochs=epochs, verbose=0, callbacks=[callback])
    sw.mark("fitted")
    pruner.detach()
    sw.mark("detached")
    return _finish(
        model,
        sw,
        {
            "variant": variant,
            "compiled_by": compiled_by,
            "spared": list(pruner.spared),
            "mask_updates": len(callback.updates),
            "schedule": spec.effective_schedule.kind,
        },
    )


def info() -> dict:
    import workers

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "workers_package": str(Path(workers.__file__).parent),
        "threads": {
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads(),
        },
    }


TASKS = {"pretrain": pretrain, "plain_job": plain_job, "prune_job": prune_job, "info": info}


# --------------------------------------------------------------------------- structured pruning (part 3)


def _measure_model(model, path: Path) -> dict:
    from workers.engine import counting, metrics

    model.save(path)
    params = counting.param_stats(model)
    return {
        "params": int(params["total"]),
        "macs": int(counting.macs(model)["macs"]),
        "file": metrics.file_size(path),
        "accuracy": held_out_accuracy(model),
    }


def _finetune(model, phases: list, batch_size: int, seed: int) -> float:
    """Fine-tune through the engine's compile (`model_io.compile_model`), one phase per (epochs, learning rate),
    each phase a fresh optimizer as in a job's consecutive steps. Returns the seconds spent in `fit`."""
    from workers.engine import config, model_io
    from workers.spec import TrainingSpec

    keras.utils.set_random_seed(seed)
    x, y, _, _ = data()
    seconds = 0.0
    for epochs, lr in phases:
        training = config.training_settings(
            TrainingSpec(
                batch_size=batch_size, learning_rate=lr, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
            )
        )
        model_io.compile_model(model, training, training.loss, training.metrics)
        sw = Stopwatch()
        model.fit(x, y, batch_size=batch_size, epochs=int(epochs), verbose=0, shuffle=True)
        sw.mark("fitted")
        seconds += sw.between(None, "fitted")
    return seconds


def structured_pretrain(width: int, phases: list, out: str, batch_size: int = 128, seed: int = 0) -> dict:
    """Train the residual BatchNorm conv net from scratch, phase by phase ((epochs, learning rate) with Adam; the
    last phase at a low rate settles the BatchNorm statistics), and save it (.keras)."""
    from bench.models import resnet_bn

    keras.utils.set_random_seed(seed)
    x, y, _, _ = data()
    model = resnet_bn(keras, width=width)
    sw = Stopwatch()
    for epochs, lr in phases:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=batch_size, epochs=int(epochs), verbose=0, shuffle=True)
    sw.mark("fitted")
    model.save(out)
    return {
        "path": out,
        "accuracy": held_out_accuracy(model),
        "params": int(model.count_params()),
        "train_s": sw.between(None, "fitted"),
        "phases": phases,
    }


def structured_job(
    model_file: str,
    keep_ratio: float,
    finetune: list,
    criterion: str = "l1",
    scope: str = "layer",
    round_to: int = 1,
    latency_rounds: int = 5,
    latency_runs: int = 30,
    batch_size: int = 128,
    seed: int = 0,
) -> dict:
    """structured_prune the model (engine defaults unless given), fine-tune, and measure before and after.

    Latency: `latency_rounds` alternating rounds of `metrics.latency` (compiled forward pass, warm-up, median of
    `latency_runs`) on the original and the pruned model; the speedup is the median over rounds of the per-round
    ratio of medians.
    """
    from workers.engine import metrics
    from workers.engine.structured import structured_prune

    original = keras.saving.load_model(model_file)
    before = _measure_model(original, _TMP / "before.keras")
    x = data()[0]
    sw = Stopwatch()
    pruned, report = structured_prune(
        original, criterion=criterion, keep_ratio=keep_ratio, scope=scope, round_to=round_to, x_calib=x[:512]
    )
    sw.mark("surgery")
    accuracy_before_finetune = held_out_accuracy(pruned)
    finetune_s = _finetune(pruned, finetune, batch_size, seed) if finetune else 0.0
    after = _measure_model(pruned, _TMP / "after.keras")
    after["accuracy_before_finetune"] = accuracy_before_finetune
    rounds = []
    for _ in range(latency_rounds):
        lb = metrics.latency(original, batch_sizes=(1, 32), runs=latency_runs)
        la = metrics.latency(pruned, batch_sizes=(1, 32), runs=latency_runs)
        rounds.append(
            {
                k: {
                    "before_ms": lb[k]["median"],
                    "after_ms": la[k]["median"],
                    "speedup": lb[k]["median"] / la[k]["median"],
                }
                for k in lb
            }
        )
    out = {
        "keep_ratio": keep_ratio,
        "criterion": criterion,
        "scope": scope,
        "round_to": round_to,
        "before": before,
        "after": after,
        "latency_rounds": rounds,
        "surgery_s": sw.between(None, "surgery"),
        "finetune_s": finetune_s,
        "finetune": finetune,
        "groups": [
            {"layers": g.layers, "units_before": g.units_before, "units_after": g.units_after} for g in report.groups
        ],
    }
    return out


def finetune_reference(model_file: str, finetune: list, batch_size: int = 128, seed: int = 0) -> dict:
    """The unpruned model fine-tuned as long as the pruned ones: separates the pruning loss from extra training."""
    reference = keras.saving.load_model(model_file)
    seconds = _finetune(reference, finetune, batch_size, seed)
    return {"accuracy": held_out_accuracy(reference), "finetune_s": seconds, "finetune": finetune}


TASKS.update(
    {
        "structured_pretrain": structured_pretrain,
        "structured_job": structured_job,
        "finetune_reference": finetune_reference,
    }
)


# --------------------------------------------------------------------------- mask-update cost (profiling aid)


def mask_update_cost(model_file: str, epochs: int, target: float, batch_size: int = 128, seed: int = 0) -> dict:
    """One gradual-pruning fit with the engine's callback, timing every mask update (`PruningCallback._update`)
    separately from the fit, plus one plain fit of the same epochs for scale."""
    import time

    from workers.engine import config, pruning
    from workers.engine.registry import prunable_weights

    x, y, _, _ = data()
    spent: list[float] = []
    original = pruning.PruningCallback._update

    def timed(self, t):
        t0 = time.perf_counter()
        original(self, t)
        spent.append(time.perf_counter() - t0)

    keras.utils.set_random_seed(seed)
    plain = keras.saving.load_model(model_file)
    _compile_plain(plain, 1e-3, {})
    sw = Stopwatch()
    plain.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    sw.mark("plain")
    keras.utils.set_random_seed(seed)
    model = keras.saving.load_model(model_file)
    pruner = pruning.Pruner(model, prunable_weights(model))
    callback = pruner.callback(config.prune_settings(prune_step(target, epochs)), int(np.ceil(len(x) / batch_size)))
    _compile_plain(model, 1e-3, {})
    pruning.PruningCallback._update = timed
    try:
        sw.mark("compiled")
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True, callbacks=[callback])
        sw.mark("pruned")
    finally:
        pruning.PruningCallback._update = original
        pruner.detach()
    return {
        "plain_fit_s": sw.between(None, "plain"),
        "prune_fit_s": sw.between("compiled", "pruned"),
        "updates": len(spent),
        "update_total_s": sum(spent),
        "update_median_ms": 1000 * float(np.median(spent)),
        "update_max_ms": 1000 * max(spent),
        "sparsity": pruner.sparsity(),
    }


TASKS["mask_update_cost"] = mask_update_cost


from bench.sides.zoo_secateurs import TASKS as _ZOO_TASKS  # noqa: E402 - part 5 (bench.zoo)

TASKS.update(_ZOO_TASKS)
from bench.sides.budget_secateurs import TASKS as _BUDGET_TASKS  # noqa: E402 - bench.budget

TASKS.update(_BUDGET_TASKS)
