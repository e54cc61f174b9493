"""Run a JobSpec end to end: load, evaluate, run the ordered steps, evaluate again, export, report.

`compress()` is the one entry point used by the CLI and by the service's runner. It reports progress through a
callback, checks for cancellation at every batch, and returns the metrics manifest (also written to
`out_dir/manifest.json`, with `report.html` beside it: `report.render_report`).

Invariant between steps: once any prune step has run, every later training step holds the zeros of the
prunable weights (masks = w != 0, applied inside the compiled train step), including after a structured
rebuild. Each training step compiles the model afresh, so masks and penalties attached for the step are traced
into that step's train function and nothing leaks into the next step or the exported model.

BatchNorm statistics (`training.batchnorm_reestimation`, on by default): after every structured rebuild and at
the end of every step, each BatchNormalization layer's moving mean and variance are replaced by the population
statistics of its input over `training.batchnorm_samples` training samples (`batchnorm.reestimate_batchnorm`); the
step's record holds {"layers", "samples", "batches", "before", "after"} under "batchnorm", with the held-out
metrics before and after the re-estimation. The summary (`summary.summarize`) claims no win when the held-out
metric fell beyond the spec's tolerance.

This facade reads the JobSpec; the modules below it take plain values, which `config` builds from the spec
(training settings, the layer selection, each prune step's settings).

Sensitivity and budget steps (the work is in `sensitivity`, `allocation` and `budget`, on plain values): an
analysis is kept per method and written as sensitivity.json / .csv; allocation "sensitivity" and the budget step
use the latest one or run one first. Budget trials (prune with the allocation, ramped over the first half of the
trial's epochs, or rebuild; fine-tune; re-estimate BatchNorm; measure) are judged against manifest.before.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from workers.engine import allocation as allocation_mod
from workers.engine import batchnorm as batchnorm_mod
from workers.engine import budget as budget_mod
from workers.engine import config, model_io
from workers.engine import data as data_mod
from workers.engine import export as export_mod
from workers.engine import metrics as metrics_mod
from workers.engine import report as report_mod
from workers.engine import sensitivity as sensitivity_mod
from workers.engine.errors import Cancelled, SpecError
from workers.engine.fileio import atomic_write
from workers.engine.masks import MaskParams
from workers.engine.model_io import TrainingSettings
from workers.engine.progress import CancelFn, Progress, ProgressFn, never_cancel, no_progress
from workers.engine.pruning import Pruner, PruneSettings
from workers.engine.registry import prunable_weights
from workers.engine.regularizers import attach_regularization
from workers.engine.schedules import ScheduleSettings
from workers.engine.selection import LayerSelection, override_for
from workers.engine.structured import structured_prune
from workers.engine.summary import MANIFEST_NAME
from workers.engine.summary import summarize as _summary
from workers.spec import (
    DEFAULT_SENSITIVITY_LEVELS,
    BudgetStep,
    FinetuneStep,
    JobSpec,
    PruneStep,
    RegularizeStep,
    SensitivityStep,
    StructuredStep,
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
    if cb.cancelled:
        raise Cancelled(f"the job was cancelled during step {index} ({phase})")
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _pruner(run: _Run) -> Pruner:
    weights = prunable_weights(run.model, run.layers)
    return Pruner(run.model, weights, run.layers.overrides)


def _train_holding_zeros(run: _Run, phase: str, index: int, epochs: int, setup=None) -> dict:
    """Train `epochs` with zeros held when a prune step ran before; `setup(weights)` may attach penalties."""
    pruner = _pruner(run) if run.hold_zeros else None
    if pruner is not None:
        pruner.hold_zeros()
    handle = setup(prunable_weights(run.model, run.layers)) if setup else None
    try:
        return _fit(run, phase, index, epochs, pruner)
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


# --------------------------------------------------------------------------- steps


def _run_regularize(run: _Run, index: int, step: RegularizeStep) -> dict:
    history = _train_holding_zeros(
        run,
        "regularize",
        index,
        step.epochs,
        setup=lambda weights: attach_regularization(weights, step.l1, step.l2, step.group_lasso),
    )
    return _with_batchnorm({"history": history}, run, "regularize", index)


def _check_threshold(run: _Run, step: PruneStep) -> None:
    """Refuse a threshold that zeroes every selected weight (it is above the largest |w|)."""
    largest = max(
        (float(np.max(np.abs(w.variable.numpy()))) for w in prunable_weights(run.model, run.layers) if w.size),
        default=0.0,
    )
    if step.threshold > largest:
        raise SpecError(
            f"prune threshold {step.threshold:g} is above the largest |w| of the selected kernels "
            f"({largest:.4g}): it would zero every weight"
        )


def _run_prune(run: _Run, index: int, step: PruneStep) -> dict:
    if step.method == "threshold":
        _check_threshold(run, step)
    pruner = _pruner(run)
    if run.hold_zeros:
        pruner.hold_zeros()
    schedule = step.effective_schedule
    try:
        targets = None
        if step.allocation == "sensitivity":
            result = _sensitivity_for(run, index, "magnitude")
            targets = pruner.sensitivity_targets(
                step.target_sparsity,
                sensitivity_mod.curves(result),
                hold=run.hold_zeros,
                field=f"steps.{index}.target_sparsity",
            )
        history = None
        if schedule.kind == "one_shot":
            pruner.prune(config.prune_settings(step), targets)
            run.progress(
                Progress(
                    phase="prune", step_index=index, sparsity=pruner.sparsity(), message=f"pruned once ({step.method})"
                )
            )
            if step.epochs:
                history = _fit(run, "prune", index, step.epochs, pruner)
        else:
            data = _require_data(run, f"step {index} (gradual prune)")
            steps_per_epoch = int(np.ceil(len(data.x_train) / run.spec.training.batch_size))
            history = _fit(
                run,
                "prune",
                index,
                step.epochs,
                pruner,
                extra_callbacks=[pruner.callback(config.prune_settings(step), steps_per_epoch, targets)],
            )
        layer_sparsity = pruner.layer_sparsity()
        sparsity = pruner.sparsity()
    finally:
        pruner.detach()
    run.hold_zeros = True
    record = {
        "history": history,
        "sparsity": sparsity,
        "layer_sparsity": layer_sparsity,
        "spared": list(pruner.spared),
        "allocation": getattr(pruner, "allocation", None),
    }
    return _with_batchnorm(record, run, "prune", index)


def _run_structured(run: _Run, index: int, step: StructuredStep) -> dict:
    if step.criterion in ("mean_activation", "apoz"):
        _require_data(run, f"step {index} (structured, criterion {step.criterion})")
    # with data, every criterion also folds the removed channels' mean contribution back (rebuild.compensation)
    x_calib = run.data.x_train[: step.calibration_samples] if run.data is not None else None
    overrides: dict = dict(run.layers.overrides)
    out: dict[str, Any] = {}
    if step.allocation == "sensitivity":
        result = _sensitivity_for(
            run, index, "structured", criterion=step.criterion if step.criterion in ("l1", "l2") else "l1"
        )
        keeps = allocation_mod.keep_overrides(
            result["units"], sensitivity_mod.curves(result), step.keep_ratio, step.round_to
        )
        overrides.update(keeps)
        out["allocation"] = {name: o["keep_ratio"] for name, o in keeps.items()}
    run.progress(Progress(phase="structured", step_index=index, message=f"ranking units by {step.criterion}"))
    new_model, report = structured_prune(
        run.model,
        criterion=step.criterion,
        keep_ratio=step.keep_ratio,
        scope=step.scope,
        round_to=step.round_to,
        selection=run.layers,
        x_calib=x_calib,
        overrides=overrides,
    )
    run.model = new_model
    out["report"] = _jsonable(report)
    if not step.epochs:
        return _with_batchnorm(out, run, "structured", index)
    rebuilt = _reestimate_batchnorm(run, "structured", index, evaluate=False)  # train from matching statistics
    if rebuilt is not None:
        out["batchnorm_after_rebuild"] = rebuilt
    out["history"] = _train_holding_zeros(run, "structured", index, step.epochs)
    return _with_batchnorm(out, run, "structured", index)


def _run_finetune(run: _Run, index: int, step: FinetuneStep) -> dict:
    return _with_batchnorm(
        {"history": _train_holding_zeros(run, "finetune", index, step.epochs)}, run, "finetune", index
    )


# --------------------------------------------------------------------------- sensitivity and budget


BUDGET_MAGNITUDE_LEVELS = (*DEFAULT_SENSITIVITY_LEVELS, 0.98)  # a budget search often ends past 0.95
HIGHEST_SPARSITY = 0.995  # the budget search never goes further
LOWEST_KEEP = 0.02
TRIAL_RAMP_END = 0.5  # a magnitude trial ramps its sparsity over this fraction of its epochs (Zhu & Gupta)
FIRST_AT_LEAST = 0.2  # the first trial removes at least this (the prediction, without fine-tuning, is cautious)


def _metric_names(run: _Run) -> list[str]:
    return list(_evaluate(run) or {})


def _sensitivity(
    run: _Run,
    index: int,
    method: str,
    *,
    levels,
    criterion: str = "l1",
    metric: str | None = None,
    samples: int = 2000,
    batchnorm_samples: int = 512,
    field_prefix: str = "",
) -> dict:
    """Run a sensitivity analysis of the current model, keep it for later steps and write its artifacts."""
    data = _require_data(run, f"step {index} (sensitivity)")
    metric = sensitivity_mod.resolve_metric(_metric_names(run), metric, f"{field_prefix}metric")  # compiles
    if method == "magnitude":
        weights = [
            w
            for w in prunable_weights(run.model, run.layers)
            if not ((o := override_for(run.layers.overrides, w.path, w.name)) and o.skip)
        ]
        units = sensitivity_mod.magnitude_units(run.model, weights)
    else:
        units = sensitivity_mod.structured_units(
            run.model, criterion=criterion, selection=run.layers, overrides=run.layers.overrides
        )
    if not units:
        raise SpecError(f"step {index}: the model has nothing to prune by {method} (no selected prunable layer)")

    def progress(i: int, n: int, unit) -> None:
        run.progress(
            Progress(
                phase="sensitivity",
                step_index=index,
                step=i + 1,
                steps=n,
                layer=unit.name,
                message=f"{method} sensitivity: {unit.name} ({i + 1}/{n})",
            )
        )

    result = sensitivity_mod.analyze(
        run.model,
        units,
        levels,
        method=method,
        metric=metric,
        x_val=data.x_val,
        y_val=data.y_val,
        x_train=data.x_train if run.training.batchnorm_reestimation else None,
        samples=samples,
        batchnorm_samples=batchnorm_samples,
        batch_size=max(run.training.batch_size, 256),
        seed=run.spec.seed,
        progress=progress,
        should_cancel=run.should_cancel,
    )
    other = next((m for m in run.sensitivity if m != method), None)
    if run.out_dir is not None:
        name = "sensitivity" if other is None else f"sensitivity_{method}"
        sensitivity_mod.write_artifacts(result, run.out_dir, name)
        result = {**result, "artifacts": [f"{name}.json", f"{name}.csv"]}
    run.sensitivity[method] = result
    return result


def _sensitivity_for(run: _Run, index: int, method: str, criterion: str = "l1") -> dict:
    """The job's latest analysis of `method`, or a new one with the default levels."""
    if method in run.sensitivity:
        return run.sensitivity[method]
    levels = (
        BUDGET_MAGNITUDE_LEVELS
        if method == "magnitude"
        else sorted(round(1.0 - x, 6) for x in DEFAULT_SENSITIVITY_LEVELS)
    )
    return _sensitivity(run, index, method, levels=levels, criterion=criterion)


def _run_sensitivity(run: _Run, index: int, step: SensitivityStep) -> dict:
    result = _sensitivity(
        run,
        index,
        step.method,
        levels=step.effective_levels,
        criterion=step.criterion,
        metric=step.metric,
        samples=step.samples,
        batchnorm_samples=step.batchnorm_samples,
        field_prefix=f"steps.{index}.",
    )
    return {
        k: result[k]
        for k in ("method", "metric", "baseline", "levels", "samples", "units", "rows", "artifacts")
        if k in result
    }


def _run_budget(run: _Run, index: int, step: BudgetStep) -> dict:
    data = _require_data(run, f"step {index} (budget)")
    field = f"steps.{index}.metric"
    metric = sensitivity_mod.resolve_metric(list(run.baseline or _metric_names(run)), step.metric, field)
    baseline = float((run.baseline or _evaluate(run))[metric])
    structured = step.method == "structured"
    result = _sensitivity_for(run, index, step.method, criterion=step.criterion)
    curves = [allocation_mod.Curve(u["size"], *sensitivity_mod.curves(result)[u["name"]]) for u in result["units"]]
    if structured:
        total = sum(u["size"] for u in result["units"])
        highest = 1.0 - LOWEST_KEEP
        sizes = {u["name"]: u["size"] for u in result["units"]}
        states: dict[int, tuple[keras.Model, dict[str, int]]] = {}
    else:
        probe = _pruner(run)
        pool = probe.pool()
        total, highest = sum(pool.values()), allocation_mod.highest_target(pool, probe.max_zeros, HIGHEST_SPARSITY)
        probe.detach()
        states: dict[int, list[np.ndarray]] = {}  # type: ignore[no-redef]
        original = [np.array(v) for v in run.model.get_weights()]
    predicted = allocation_mod.total_for_drop(curves, step.max_drop) / max(1, total)
    first = min(highest, math.floor(max(predicted, FIRST_AT_LEAST) * 100) / 100)
    original_model, x_calib = run.model, data.x_train[:512]

    def trial(removed: float, start: int | None) -> budget_mod.Trial:
        _check_cancel(run)
        level = 1.0 - removed if structured else removed
        run.progress(
            Progress(
                phase="budget",
                step_index=index,
                trial=len(trials) + 1,
                trials=step.max_trials,
                message=f"trial {len(trials) + 1}/{step.max_trials}: "
                f"{'keep ratio' if structured else 'sparsity'} {level:.4f}",
            )
        )
        if structured:
            model, current = states[start] if start is not None else (original_model, sizes)
            overrides = {
                **run.layers.overrides,
                **allocation_mod.keep_overrides(
                    result["units"], sensitivity_mod.curves(result), level, step.round_to, current
                ),
            }
            run.model, report = structured_prune(
                model,
                criterion=step.criterion,
                keep_ratio=1.0,
                round_to=step.round_to,
                selection=run.layers,
                x_calib=x_calib,
                overrides=overrides,
            )
            cut = {"+".join(g.layers): g.units_before - g.units_after for g in report.groups}
            current = {name: n - cut.get(name, 0) for name, n in current.items()}
            if step.epochs:
                _reestimate_batchnorm(run, "budget", index, evaluate=False)  # train from matching statistics
                _train_holding_zeros(run, "budget", index, step.epochs)
        else:
            run.model.set_weights(states[start] if start is not None else original)
            pruner = _pruner(run)
            pruner.hold_zeros()
            try:
                targets = pruner.sensitivity_targets(
                    removed, sensitivity_mod.curves(result), hold=True, field=f"steps.{index}"
                )
                if step.epochs:
                    spe = int(np.ceil(len(data.x_train) / run.training.batch_size))
                    ramp = PruneSettings(
                        params=MaskParams(sparsity=removed),
                        epochs=step.epochs,
                        schedule=ScheduleSettings("polynomial", end=TRIAL_RAMP_END),
                    )
                    _fit(
                        run, "budget", index, step.epochs, pruner, extra_callbacks=[pruner.callback(ramp, spe, targets)]
                    )
                else:
                    pruner.prune(PruneSettings(params=MaskParams(sparsity=removed)), targets)
            finally:
                pruner.detach()
        _reestimate_batchnorm(run, "budget", index, evaluate=False)
        value = float(_evaluate(run)[metric])
        drop = sensitivity_mod.metric_drop(metric, baseline, value)
        states[len(trials)] = (run.model, current) if structured else [np.array(v) for v in run.model.get_weights()]
        return budget_mod.Trial(
            level=level,
            metric=value,
            drop=drop,
            within_budget=drop <= step.max_drop + 1e-12,
            epochs=step.epochs,
            **budget_mod.measure(
                run.model,
                run.out_dir / ".work",
                method=step.method,
                latency_runs=(
                    run.spec.evaluation.latency_runs
                    if step.objective == "latency" or (structured and run.spec.evaluation.latency)
                    else 0
                ),
            ),
        )

    trials: list[budget_mod.Trial] = []

    def on_trial(i: int, t: budget_mod.Trial) -> None:
        trials.append(t)
        for j in set(states) - budget_mod.needed(trials, step.objective):
            del states[j]  # a model no later trial starts from and that cannot be chosen
        run.progress(
            Progress(
                phase="budget",
                step_index=index,
                trial=i + 1,
                trials=step.max_trials,
                message=f"trial {i + 1}: {metric} {t.metric:.4f} (drop {t.drop:+.4f}), "
                f"{'within' if t.within_budget else 'outside'} the budget",
            )
        )

    found = budget_mod.search(
        trial,
        first=first,
        highest=highest,
        max_trials=step.max_trials,
        objective=step.objective,
        should_cancel=run.should_cancel,
        on_trial=on_trial,
    )
    if structured:
        run.model = states[found.chosen][0]
    else:
        run.model.set_weights(states[found.chosen])
        run.hold_zeros = True
    chosen = found.trials[found.chosen]
    run.budget = {
        "metric": metric,
        "baseline": baseline,
        "max_drop": step.max_drop,
        "objective": step.objective,
        "method": step.method,
        "met": found.met,
        "chosen": found.chosen,
        "trials": [t.to_dict() for t in found.trials],
        "sensitivity": result.get("artifacts"),
        "note": None
        if found.met
        else (
            f"BUDGET NOT MET: no trial kept held-out {metric} within {step.max_drop:g} of the original "
            f"({baseline:.4g}); the closest trial (#{found.chosen}, {'keep ratio' if structured else 'sparsity'} "
            f"{chosen.level:.4f}, {metric} {chosen.metric:.4g}) is returned"
        ),
    }
    return {"budget": run.budget}


STEP_RUNNERS: dict[str, Callable[[_Run, int, Any], dict]] = {
    "regularize": _run_regularize,
    "prune": _run_prune,
    "structured": _run_structured,
    "finetune": _run_finetune,
    "sensitivity": _run_sensitivity,
    "budget": _run_budget,
}

# --------------------------------------------------------------------------- measuring


def _evaluate(run: _Run, compile: bool = True) -> dict | None:
    if run.data is None:
        return None
    if compile:  # compile=False reuses the compiled evaluation of the previous call (same model, new values)
        model_io.compile_model(run.model, run.training, run.loss, run.metrics)
    return metrics_mod.evaluate(
        run.model, run.data.x_val, run.data.y_val, batch_size=max(run.spec.training.batch_size, 256)
    )


def _measure(run: _Run, phase: str, scratch: Path) -> dict:
    run.progress(Progress(phase=phase, message="evaluating"))
    out: dict[str, Any] = {"evaluation": _evaluate(run)}
    out["params"] = _jsonable(metrics_mod.param_stats(run.model))
    out["compute"] = _jsonable(metrics_mod.macs(run.model))
    if run.spec.evaluation.latency:
        out["latency_ms"] = _jsonable(
            metrics_mod.latency(run.model, batch_sizes=(1, 32), runs=run.spec.evaluation.latency_runs)
        )
    path = scratch / f"{phase}.keras"
    export_mod.save_model_file(run.model, path)  # weights and config only, like the exported artifact
    out["file"] = _jsonable(metrics_mod.file_size(path))
    path.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- entry point


def compress(
    model_path: str | Path,
    data_path: str | Path | None,
    spec: JobSpec,
    out_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict:
    """Run `spec` on the model at `model_path`; write artifacts and manifest.json into `out_dir`."""
    started = time.perf_counter()
    progress = progress or no_progress
    should_cancel = should_cancel or never_cancel
    model_path = Path(model_path)
    data_path = Path(data_path) if data_path is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / ".work"
    scratch.mkdir(exist_ok=True)
    keras.utils.set_random_seed(spec.seed)

    progress(Progress(phase="load", message=f"loading {model_path.name}"))
    loaded = model_io.load_model(model_path)
    training = config.training_settings(spec.training)
    loss, metrics = model_io.resolve_training(loaded, training)
    data = None
    if data_path is not None:
        data = data_mod.load_dataset(data_path, loaded.model, loss, training.validation_fraction, spec.seed)
    elif spec.trains:
        raise SpecError("this spec trains or uses activations; it needs a dataset (.npz with x_train, y_train)")
    run = _Run(
        spec=spec,
        training=training,
        layers=config.layer_selection(spec.layers),
        model=loaded.model,
        loss=loss,
        metrics=list(metrics),
        data=data,
        progress=progress,
        should_cancel=should_cancel,
        out_dir=out_dir,
    )
    inputs = {
        "model": {
            "file": model_path.name,
            "sha256": metrics_mod.sha256_file(model_path),
            "bytes": model_path.stat().st_size,
            "format": loaded.format,
        }
    }
    if data_path is not None:
        inputs["data"] = {
            "file": data_path.name,
            "sha256": metrics_mod.sha256_file(data_path),
            "bytes": data_path.stat().st_size,
            "train_samples": int(len(data.x_train)),
            "val_samples": int(len(data.x_val)),
            "label_form": data.label_form,
        }

    before = _measure(run, "before", scratch)
    run.baseline = before["evaluation"]
    steps = []
    for index, step in enumerate(spec.steps):
        _check_cancel(run)
        t0 = time.perf_counter()
        progress(
            Progress(phase=step.kind, step_index=index, message=f"step {index + 1}/{len(spec.steps)}: {step.kind}")
        )
        report = STEP_RUNNERS[step.kind](run, index, step)
        steps.append({"index": index, "kind": step.kind, "wall_time_s": time.perf_counter() - t0, **_jsonable(report)})
    _check_cancel(run)
    after = _measure(run, "after", scratch)

    progress(Progress(phase="export", message=", ".join(spec.export.formats)))
    artifacts = _jsonable(
        export_mod.export_model(
            run.model,
            out_dir,
            spec.export.formats,
            calibration=None if data is None else data.x_train,
            held_out=None
            if data is None
            else export_mod.HeldOut(data.x_val, data.y_val, batch_size=max(spec.training.batch_size, 256)),
        )
    )
    shutil.rmtree(scratch, ignore_errors=True)

    manifest = {
        "secateurs": {"version": _package_version(), "created_at": datetime.now(timezone.utc).isoformat()},
        "versions": _versions(),
        "seed": spec.seed,
        "spec": spec.model_dump(mode="json"),
        "inputs": inputs,
        "task": {"loss": loss, "metrics": list(metrics), "loss_from": "spec" if spec.training.loss else "saved model"},
        "before": before,
        "after": after,
        "steps": steps,
        "artifacts": artifacts,
        "summary": _summary(before, after, artifacts, spec, budget=run.budget),
        "wall_time_s": time.perf_counter() - started,
    }
    if run.budget is not None:
        manifest["budget"] = run.budget
    manifest = _jsonable(manifest)
    manifest["report"] = _write_report(run, out_dir, manifest)
    text = json.dumps(manifest, indent=2, sort_keys=True)
    atomic_write(out_dir / MANIFEST_NAME, lambda tmp: tmp.write_text(text))
    progress(Progress(phase="done", message="finished"))
    return manifest


def _write_report(run: _Run, out_dir: Path, manifest: dict) -> dict:
    """Render report.html from the manifest (and sensitivity.json when a step wrote one) into `out_dir`; returns
    the manifest's "report" record. A report that cannot be drawn does not lose the finished job: the record
    then holds the error instead of the file."""
    run.progress(Progress(phase="report", message=f"writing {report_mod.REPORT_NAME}"))
    started = time.perf_counter()
    try:
        sensitivity_path = out_dir / SENSITIVITY_NAME
        sensitivity = json.loads(sensitivity_path.read_text()) if sensitivity_path.is_file() else None
        html = report_mod.render_report(manifest, sensitivity).encode("utf-8")
    except Exception as e:  # noqa: BLE001 - recorded in the manifest, the job's other outputs stand
        return {"file": None, "error": f"the report could not be rendered: {type(e).__name__}: {e}"}
    atomic_write(out_dir / report_mod.REPORT_NAME, lambda tmp: tmp.write_bytes(html))
    return {"file": report_mod.REPORT_NAME, "bytes": len(html), "render_s": time.perf_counter() - started}


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("secateurs")
    except Exception:  # pragma: no cover - running from a plain checkout
        return "0+unknown"
