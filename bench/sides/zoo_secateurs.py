"""The zoo's tasks on the Secateurs side (Keras 3): pretraining, the engine run as a user runs it
(`workers.engine.pipeline.compress` with a JobSpec), plain fine-tuning, and BatchNorm re-estimation of any weights.

Registered into `bench.sides.secateurs.TASKS` (the worker imports that module).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from bench.models import build, digits
from bench.sides._shared import halves_accuracy
from bench.sides.zoo_common import accuracy, sparsity_report

_TMP = Path(tempfile.mkdtemp(prefix="bench-zoo-secateurs-"))


def _compile(model, lr: float = 1e-3) -> None:
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def settle_batchnorm(model, x: np.ndarray, batch_size: int = 128) -> int:
    """Set every BatchNorm layer's moving mean and variance to the average of its batch statistics over `x` (a
    pass in training mode with momentum k/(k+1) at batch k, dropout off): the baseline's statistics as a long
    training would have left them. The bench's own, so the baseline does not change with the engine."""
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [(layer, layer.rate) for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dropout)]
    momenta = [layer.momentum for layer in bns]
    for layer, _ in drops:
        layer.rate = 0.0
    try:
        for k, start in enumerate(range(0, len(x), batch_size)):
            for layer in bns:
                layer.momentum = k / (k + 1)
            model(x[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(bns, momenta):
            layer.momentum = momentum
        for layer, rate in drops:
            layer.rate = rate
    return len(bns)


def zoo_pretrain(
    model: str, n_train: int, n_test: int, epochs: int, out: str, batch_size: int = 128, seed: int = 0
) -> dict:
    """Train `model` from scratch (Adam 1e-3) on the digits, settle its BatchNorm statistics (`settle_batchnorm`);
    save `out` (.keras), its weights (.npz, w0..wn) and a data file for the engine (`<out>-data.npz`: x_train,
    y_train and the held-out digits as x_val, y_val)."""
    from workers.engine import counting

    keras.utils.set_random_seed(seed)
    x, y, xt, yt = digits(model, n_train, n_test)
    m = build(model, keras)
    _compile(m)
    t0 = time.perf_counter()
    m.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    train_s = time.perf_counter() - t0
    accuracy_trained = accuracy(m, xt, yt)
    settled = settle_batchnorm(m, x, batch_size)
    m.save(out)
    stem = str(Path(out).with_suffix(""))
    np.savez(f"{stem}.npz", **{f"w{i}": w for i, w in enumerate(m.get_weights())})
    np.savez(f"{stem}-data.npz", x_train=x, y_train=y, x_val=xt, y_val=yt)
    return {
        "keras": out,
        "weights": f"{stem}.npz",
        "data": f"{stem}-data.npz",
        "accuracy": accuracy(m, xt, yt),
        "accuracy_before_settling": accuracy_trained,
        "batchnorm_layers": settled,
        "params": int(m.count_params()),
        "macs": int(counting.macs(m)["macs"]),
        "train_s": train_s,
        "epoch_s": train_s / epochs,
        "layers": len(m.layers),
        "layer_classes": sorted({type(layer).__name__ for layer in m.layers}),
    }


def _reestimate(model, x: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> dict:
    """BatchNorm re-estimation by the engine (`workers.engine.batchnorm`), imported here so that the zoo runs
    before that module exists: {"accuracy", "record", "seconds", "module"} or {"skipped": why}."""
    try:
        from workers.engine import batchnorm
    except ImportError as exc:
        return {"skipped": f"workers.engine.batchnorm is not importable: {exc}"}
    t0 = time.perf_counter()
    record = batchnorm.reestimate_batchnorm(model, x, batch_size=128)
    seconds = time.perf_counter() - t0
    split = halves_accuracy(model, xt, yt, batch_size=250)
    return {
        "accuracy": split["all"],
        "split_accuracy": split,
        "record": _jsonable(record),
        "seconds": seconds,
        "stand_in": bool(getattr(batchnorm, "STAND_IN", False)),
    }


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def zoo_plain(
    model: str, model_file: str, n_train: int, n_test: int, epochs: int, batch_size: int = 128, seed: int = 0
) -> dict:
    """The reference: `model.fit` for `epochs` (Adam 1e-3), no pruning; then the same model with its BatchNorm
    statistics re-estimated on the training digits."""
    keras.utils.set_random_seed(seed)
    x, y, xt, yt = digits(model, n_train, n_test)
    m = keras.saving.load_model(model_file)
    _compile(m)
    t0 = time.perf_counter()
    history = m.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    wall = time.perf_counter() - t0
    # all held-out digits (part 5b), and the halves of parts 6b and 6h
    split = halves_accuracy(m, xt, yt, batch_size=250)
    out = {
        "accuracy": split["all"],
        "split_accuracy": split,
        "train_accuracy": float(history.history["accuracy"][-1]),
        "wall_s": wall,
        **sparsity_report(m),
    }
    out["reestimated"] = _reestimate(m, x, xt, yt)
    return out


def zoo_engine(model: str, model_file: str, data_file: str, spec: dict, n_train: int, n_test: int) -> dict:
    """Run `spec` (a JobSpec as JSON) through `pipeline.compress` as a user would, then load the exported
    model.keras in this process and score it on the held-out digits."""
    from workers.engine.pipeline import compress
    from workers.spec import JobSpec

    _, _, xt, yt = digits(model, n_train, n_test)
    out_dir = _TMP / "job"
    shutil.rmtree(out_dir, ignore_errors=True)
    job = JobSpec.model_validate(spec)
    t0 = time.perf_counter()
    manifest = compress(model_file, data_file, job, out_dir)
    wall = time.perf_counter() - t0
    exported = keras.saving.load_model(out_dir / "model.keras")
    before, after = manifest["before"], manifest["after"]
    steps = [
        {k: v for k, v in s.items() if k not in ("history", "layer_sparsity", "report")} for s in manifest["steps"]
    ]
    out = {
        "accuracy": accuracy(exported, xt, yt),
        "wall_s": wall,
        "macs_before": before["compute"]["macs"],
        "macs_after": after["compute"]["macs"],
        "macs_ratio": after["compute"]["macs"] / before["compute"]["macs"],
        "params_before": before["params"]["total"],
        "params_after": after["params"]["total"],
        "manifest_evaluation": {"before": before.get("evaluation"), "after": after.get("evaluation")},
        "summary": {k: manifest["summary"].get(k) for k in ("win", "notes", "sparsity_after", "evaluation_delta")},
        "steps": _jsonable(steps),
        **sparsity_report(exported),
    }
    history = manifest["steps"][-1].get("history") or {}
    if history.get("accuracy"):
        out["train_accuracy"] = float(history["accuracy"][-1])
    shutil.rmtree(out_dir, ignore_errors=True)
    return out


def zoo_reestimate(model: str, weights: str, n_train: int, n_test: int) -> dict:
    """Weights trained elsewhere (tfmot's stripped model, .npz in Keras order) into the Keras 3 model: the held-out
    accuracy as they are (a check of the transfer) and after BatchNorm re-estimation."""
    x, _, xt, yt = digits(model, n_train, n_test)
    m = build(model, keras)
    with np.load(weights) as f:
        m.set_weights([f[f"w{i}"] for i in range(len(f.files))])
    return {"accuracy_transferred": accuracy(m, xt, yt), **_reestimate(m, x, xt, yt)}


TASKS = {
    "zoo_pretrain": zoo_pretrain,
    "zoo_plain": zoo_plain,
    "zoo_engine": zoo_engine,
    "zoo_reestimate": zoo_reestimate,
}
