"""The state of one job run and what every step shares: progress, cancellation, fitting with held zeros,
BatchNorm re-estimation, evaluation and measuring."""

from __future__ import annotations

import platform
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from workers.engine import batchnorm as batchnorm_mod
from workers.engine import counting, model_io
from workers.engine import export as export_mod
from workers.engine import metrics as metrics_mod
from workers.engine.errors import Cancelled, SpecError
from workers.engine.model_io import TrainingSettings
from workers.engine.progress import CancelFn, Progress, ProgressFn
from workers.engine.pruning import Pruner
from workers.engine.registry import prunable_weights
from workers.engine.selection import LayerSelection
from workers.spec import (
    JobSpec,
)

SENSITIVITY_NAME = "sensitivity.json"


@dataclass
class _Run:
    """Mutable state shared by the steps of one job."""

    spec: JobSpec
    training: TrainingSettings  # config.training_settings(spec.training)
    layers: LayerSelection  # config.layer_selection(spec.layers)
    model: keras.Model
    loss: str
    metrics: list[str]
    data: Any  # data_mod.Dataset | None
    progress: ProgressFn
    should_cancel: CancelFn
    hold_zeros: bool = False
    step_reports: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    baseline: dict | None = None  # held-out metrics of the uploaded model (the budget is relative to them)
    sensitivity: dict[str, dict] = field(default_factory=dict)  # method -> the latest analysis
    budget: dict | None = None  # manifest.budget
    training_s: float = 0.0  # wall seconds inside model.fit so far (manifest.timings)
    evaluated: tuple | None = None  # (model weakref, weights fingerprint, held-out metrics) of the latest evaluation


class _ProgressCallback(keras.callbacks.Callback):
    """Checks cancellation every batch; reports progress at most every `interval` seconds and per epoch."""

    def __init__(
        self,
        run: _Run,
        phase: str,
        index: int,
        epochs: int,
        steps_per_epoch: int,
        sparsity: Callable[[], float | None],
        interval: float = 0.5,
    ):
        super().__init__()
        self.run, self.phase, self.index = run, phase, index
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.sparsity, self.interval = sparsity, interval
        self.epoch = 0
        self.global_step = 0
        self.cancelled = False
        self._last = 0.0

    def _emit(self, loss, message=""):
        self.run.progress(
            Progress(
                phase=self.phase,
                step_index=self.index,
                epoch=self.epoch + 1,
                epochs=self.epochs,
                step=self.global_step,
                steps=self.epochs * self.steps_per_epoch,
                sparsity=self.sparsity(),
                loss=None if loss is None else float(loss),
                message=message,
            )
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the index of the last step run (several per call with steps_per_execution; Keras reports a
        # short last call of the epoch as a full one)
        self.global_step = self.epoch * self.steps_per_epoch + min(batch + 1, self.steps_per_epoch)
        if self.run.should_cancel():
            self.cancelled = True
            self.model.stop_training = True
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit((logs or {}).get("loss"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._emit(logs.get("loss"), message="epoch end " + _fmt_logs(logs))


def _fmt_logs(logs: dict) -> str:
    return " ".join(f"{k}={float(v):.4f}" for k, v in sorted(logs.items()) if np.isscalar(v) or np.ndim(v) == 0)


def _jsonable(obj):
    if hasattr(obj, "to_dict") and callable(obj.to_dict) and not isinstance(obj, type):
        obj = obj.to_dict()  # an object's own view first (StructuredReport leaves its arrays out)
    elif is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _versions() -> dict:
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------- training


def _check_cancel(run: _Run) -> None:
    if run.should_cancel():
        raise Cancelled("the job was cancelled")


def _require_data(run: _Run, what: str):
    if run.data is None:
        raise SpecError(f"{what} needs training data: pass a dataset (.npz with x_train, y_train)")
    return run.data


def _fit(
    run: _Run, phase: str, index: int, epochs: int, pruner: Pruner | None, extra_callbacks: list | None = None
) -> dict:
    """Compile afresh (so attached masks/penalties are traced in) and train; returns per-epoch history."""
    data = _require_data(run, f"step {index} ({phase})")
    spec = run.training
    model_io.compile_model(run.model, spec, run.loss, run.metrics)
    steps_per_epoch = int(np.ceil(len(data.x_train) / spec.batch_size))
    cb = _ProgressCallback(
        run, phase, index, epochs, steps_per_epoch, sparsity=(pruner.sparsity if pruner is not None else (lambda: None))
    )
    started = time.perf_counter()
    try:
        history = run.model.fit(
            data.x_train,
            data.y_train,
            batch_size=spec.batch_size,
            epochs=epochs,
            shuffle=spec.shuffle,
            validation_data=(data.x_val, data.y_val),
            verbose=0,
            callbacks=[*(extra_callbacks or []), cb],
        )
    finally:
        run.training_s += time.perf_counter() - started
    if cb.cancelled:
        raise Cancelled(f"the job was cancelled during step {index} ({phase})")
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _pruner(run: _Run) -> Pruner:
    weights = prunable_weights(run.model, run.layers)
    return Pruner(run.model, weights, run.layers.overrides)


def _train_holding_zeros(
    run: _Run, phase: str, index: int, epochs: int, setup=None, extra_callbacks: list | None = None
) -> dict:
    """Train `epochs` with zeros held when a prune step ran before; `setup(weights)` may attach penalties."""
    pruner = _pruner(run) if run.hold_zeros else None
    if pruner is not None:
        pruner.hold_zeros()
    handle = setup(prunable_weights(run.model, run.layers)) if setup else None
    try:
        return _fit(run, phase, index, epochs, pruner, extra_callbacks=extra_callbacks)
    finally:
        if handle is not None:
            handle.detach()
        if pruner is not None:
            pruner.detach()


def _reestimate_batchnorm(run: _Run, phase: str, index: int, *, evaluate: bool = True) -> dict | None:
    """Re-estimate BatchNorm statistics on training samples (`batchnorm` module) when the spec asks for it and the
    job has data; returns the step's record {"layers", "samples", "batches", "before", "after"} (held-out metrics
    around the re-estimation when `evaluate`), or None when nothing was done."""
    spec = run.spec.training
    if not spec.batchnorm_reestimation or run.data is None or not batchnorm_mod.batchnorm_layers(run.model):
        return None
    _check_cancel(run)
    run.progress(Progress(phase=phase, step_index=index, message="re-estimating BatchNorm statistics"))
    before = _evaluate(run) if evaluate else None
    record = batchnorm_mod.reestimate_batchnorm(
        run.model,
        run.data.x_train,
        batch_size=max(spec.batch_size, 128),
        max_samples=spec.batchnorm_samples,
        seed=run.spec.seed,
    )
    if evaluate:
        record.update(before=before, after=_evaluate(run, compile=False))
    return record


def _with_batchnorm(record: dict, run: _Run, phase: str, index: int) -> dict:
    bn = _reestimate_batchnorm(run, phase, index)
    return record if bn is None else {**record, "batchnorm": bn}


# --------------------------------------------------------------------------- measuring


def _evaluate(run: _Run, compile: bool = True) -> dict | None:
    """Held-out metrics of the run's model. The same model object with weights bit for bit those of the latest
    evaluation (`metrics.weights_fingerprint`) is not run again: the latest result is returned (a copy); a copy of
    the model is evaluated (and compiled) afresh."""
    if run.data is None:
        return None
    fingerprint = metrics_mod.weights_fingerprint(run.model)
    if run.evaluated is not None and run.evaluated[0]() is run.model and run.evaluated[1] == fingerprint:
        return dict(run.evaluated[2])
    if compile:  # compile=False reuses the compiled evaluation of the previous call (same model, new values)
        model_io.compile_model(run.model, run.training, run.loss, run.metrics)
    result = metrics_mod.evaluate(
        run.model, run.data.x_val, run.data.y_val, batch_size=max(run.spec.training.batch_size, 256)
    )
    run.evaluated = (weakref.ref(run.model), fingerprint, dict(result))
    return result


def _measure(run: _Run, phase: str, scratch: Path, save: bool = True) -> dict:
    """Held-out metrics (and the test metrics when the dataset has x_test), parameters, MACs, latency and (with
    `save`) the size of the model saved as .keras; without `save` the caller fills "file" in (the exported
    model.keras is the same file: `pipeline.compress`)."""
    run.progress(Progress(phase=phase, message="evaluating"))
    out: dict[str, Any] = {"evaluation": _evaluate(run)}
    if run.data is not None and run.data.x_test is not None:  # measured here only: nothing is decided on it
        # the model is compiled: _evaluate compiled it, or evaluated these very weights of it before
        out["test_evaluation"] = metrics_mod.evaluate(
            run.model, run.data.x_test, run.data.y_test, batch_size=max(run.spec.training.batch_size, 256)
        )
    out["params"] = _jsonable(counting.param_stats(run.model))
    out["compute"] = _jsonable(counting.macs(run.model))
    if run.spec.evaluation.latency:
        out["latency_ms"] = _jsonable(
            metrics_mod.latency(run.model, batch_sizes=(1, 32), runs=run.spec.evaluation.latency_runs)
        )
    if not save:
        return out
    path = scratch / f"{phase}.keras"
    export_mod.save_model_file(run.model, path)  # weights and config only, like the exported artifact
    out["file"] = _jsonable(metrics_mod.file_size(path))
    path.unlink(missing_ok=True)
    return out
