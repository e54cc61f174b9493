"""The reference side: tf_keras 2 + tensorflow-model-optimization, run with TF_USE_LEGACY_KERAS=1.

The pruning job follows the tfmot guide: `prune_low_magnitude(model, pruning_schedule=PolynomialDecay(...))`,
compile, `fit(..., callbacks=[UpdatePruningStep()])`, `strip_pruning`, save.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":  # pragma: no cover - launched by bench.worker
    raise RuntimeError("the tfmot side must run with TF_USE_LEGACY_KERAS=1 (use bench.worker.Side('tfmot'))")

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from bench.models import build
from bench.sides._shared import (
    Stopwatch,
    data,
    held_out_accuracy,
    kernel_sparsity,
    nonzero_weights,
    seed_everything,
    split_accuracy,
    weights_gzip_bytes,
)

_TMP = Path(tempfile.mkdtemp(prefix="bench-tfmot-"))


def prepare(model: str, weights: str, out: str) -> dict:
    """Build `model` in tf_keras, load the shared pretrained weights (.npz, Keras 3 order), save to `out` (.keras)."""
    m = build(model, keras)
    with np.load(weights) as f:
        m.set_weights([f[f"w{i}"] for i in range(len(f.files))])
    acc = held_out_accuracy(m)
    m.save(out)
    return {"path": out, "accuracy": acc}


def _compile(model, lr: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _schedule(
    kind: str,
    target: float,
    total_steps: int,
    frequency: int,
    begin_step: int = 0,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
):
    if kind == "polynomial":
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=initial_sparsity,
            final_sparsity=target,
            begin_step=begin_step,
            end_step=total_steps,
            power=power,
            frequency=frequency,
        )
    if kind == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(target, begin_step=begin_step, frequency=frequency)
    raise ValueError(f"unknown tfmot schedule '{kind}'")


def _finish(model, sw: Stopwatch, extra: dict) -> dict:
    model.save(_TMP / "out.keras")
    sw.mark("saved")
    split = split_accuracy(model)  # all 2,000 held-out digits (parts 1-2), and the halves of the budget parts
    sizes = {"weights_gzip_bytes": weights_gzip_bytes(model), "nonzero_weights": nonzero_weights(model)}
    return {
        **sw.report(),
        "accuracy": split["all"],
        "split_accuracy": split,
        "sparsity": kernel_sparsity(model),
        **sizes,
        **extra,
    }


def plain_job(model_file: str, epochs: int, batch_size: int, lr: float = 1e-3, seed: int = 0) -> dict:
    """Load, compile, fit `epochs` without pruning, save."""
    seed_everything(seed)
    x, y, _, _ = data()
    sw = Stopwatch()
    model = keras.models.load_model(model_file)
    _compile(model, lr)
    sw.mark("compiled")
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    sw.mark("fitted")
    return _finish(model, sw, {})


def prune_job(
    model_file: str,
    epochs: int,
    batch_size: int,
    target: float,
    schedule: str = "polynomial",
    frequency: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    initial_sparsity: float = 0.0,
) -> dict:
    """Load, wrap with prune_low_magnitude, compile, fit with UpdatePruningStep, strip_pruning, save."""
    seed_everything(seed)
    x, y, _, _ = data()
    steps = int(np.ceil(len(x) / batch_size)) * epochs
    sw = Stopwatch()
    model = keras.models.load_model(model_file)
    sched = _schedule(schedule, target, steps, frequency, initial_sparsity=initial_sparsity)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=sched)
    _compile(pruned, lr)
    sw.mark("compiled")
    pruned.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        shuffle=True,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    sw.mark("fitted")
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    sw.mark("stripped")
    return _finish(stripped, sw, {"strip_s": sw.between("fitted", "stripped")})


def info() -> dict:
    return {
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "tfmot": tfmot.__version__.__str__() if hasattr(tfmot, "__version__") else None,
        "threads": {
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads(),
        },
    }


TASKS = {"prepare": prepare, "plain_job": plain_job, "prune_job": prune_job, "info": info}


from bench.sides.zoo_tfmot import TASKS as _ZOO_TASKS  # noqa: E402 - part 5 (bench.zoo)

TASKS.update(_ZOO_TASKS)
