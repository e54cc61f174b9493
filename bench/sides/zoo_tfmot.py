"""The zoo's tasks on the tfmot side (tf_keras + tensorflow-model-optimization, TF_USE_LEGACY_KERAS=1).

tfmot per layer as its guide shows: `prune_low_magnitude(model, pruning_schedule=PolynomialDecay(0 -> s, begin 0,
end = the last step on which tfmot prunes, frequency))`. When tfmot refuses the whole model (a layer it has no
pruning rule for), the model is cloned with every layer tfmot accepts wrapped and the others left as they are
(`clone_model` with a `clone_function`, as the tfmot guide does for selected layers); the refused layers are recorded.

Registered into `bench.sides.tfmot.TASKS`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from bench.models import build, digits
from bench.sides._shared import seed_everything
from bench.sides.zoo_common import accuracy, sparsity_report

_TMP = Path(tempfile.mkdtemp(prefix="bench-zoo-tfmot-"))


def zoo_prepare(model: str, weights: str, out: str, n_train: int, n_test: int) -> dict:
    """Build `model` in tf_keras, load the shared pretrained weights (.npz, Keras 3 order), save to `out`."""
    _, _, xt, yt = digits(model, n_train, n_test)
    m = build(model, keras)
    with np.load(weights) as f:
        m.set_weights([f[f"w{i}"] for i in range(len(f.files))])
    m.save(out)
    return {"path": out, "accuracy": accuracy(m, xt, yt)}


def _wrap(model, schedule) -> tuple[keras.Model, dict]:
    """prune_low_magnitude on the whole model, or, where tfmot refuses it, on every layer it accepts."""
    prune = tfmot.sparsity.keras.prune_low_magnitude
    try:
        return prune(model, pruning_schedule=schedule), {"mode": "whole model"}
    except (ValueError, TypeError) as exc:
        whole_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    refused: dict[str, str] = {}

    def clone_function(layer):
        try:
            return prune(layer, pruning_schedule=schedule)
        except (ValueError, TypeError):
            refused[layer.name] = type(layer).__name__
            return layer

    wrapped = keras.models.clone_model(model, clone_function=clone_function)
    return wrapped, {
        "mode": "supported layers only (clone_model)",
        "whole_model_error": whole_error,
        "refused_classes": sorted(set(refused.values())),
        "refused_layers": len(refused),
    }


def zoo_prune(
    model: str,
    model_file: str,
    target: float,
    epochs: int,
    n_train: int,
    n_test: int,
    batch_size: int = 128,
    frequency: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict:
    """Prune to `target` per layer during `epochs` of fine-tuning, strip, score; the stripped weights are saved
    (.npz, Keras order) for re-estimation on the Keras 3 side."""
    seed_everything(seed)
    x, y, xt, yt = digits(model, n_train, n_test)
    steps = int(np.ceil(len(x) / batch_size)) * epochs
    # tfmot prunes at steps begin + k * frequency only: end on the last such step, so the target is reached
    end = (steps - 1) // frequency * frequency
    if end < frequency:
        raise ValueError(f"{steps} training steps leave tfmot no pruning step after the first at frequency {frequency}")
    t0 = time.perf_counter()
    base = keras.models.load_model(model_file)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=end, power=3, frequency=frequency
    )
    pruned, wrapping = _wrap(base, schedule)
    pruned.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = pruned.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        shuffle=True,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    wall = time.perf_counter() - t0
    weights = _TMP / f"{model}-{target:g}.npz"
    np.savez(weights, **{f"w{i}": w for i, w in enumerate(stripped.get_weights())})
    return {
        "accuracy": accuracy(stripped, xt, yt),
        "train_accuracy": float(history.history["accuracy"][-1]),
        "wall_s": wall,
        "schedule": {"begin_step": 0, "end_step": end, "frequency": frequency, "steps": steps},
        "wrapping": wrapping,
        "weights": str(weights),
        **sparsity_report(stripped),
    }


TASKS = {"zoo_prepare": zoo_prepare, "zoo_prune": zoo_prune}
