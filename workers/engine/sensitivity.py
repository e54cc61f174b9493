"""Sensitivity analysis: prune one layer (or one structured group) alone at each level and measure the held-out
metric, without fine-tuning.

Public API (plain values; `pipeline` turns the spec into these calls)::

    resolve_metric(available, wanted, field) -> str          the metric measured: wanted, else accuracy-like, else loss
    higher_is_better(metric) -> bool                         accuracy-like names
    metric_drop(metric, baseline, value) -> float            absolute for accuracy-like, relative for losses
    magnitude_units(model, weights) -> list[Unit]            one unit per prunable layer (its kernels together)
    structured_units(model, *, criterion, selection, overrides) -> list[Unit]   one unit per group of coupled layers
    analyze(model, units, levels, ...) -> {"metric", "baseline", "method", "levels", "rows", "units"}
    curves(result) -> {unit: (fractions removed, drops)}     what `allocation` reads
    write_artifacts(result, out_dir, name) -> [file names]   sensitivity.json and sensitivity.csv

How it stays fast. One model, one traced forward pass (`HeldOutScorer`) and one traced BatchNorm re-estimation
(`batchnorm.BatchNormEstimator`) serve every measurement: a unit's weights are set in place for a level, BatchNorm
statistics are re-estimated on at most `batchnorm_samples` training samples (models with BatchNorm only), at most
`samples` held-out samples (a seeded subset) are predicted in batches and scored by Keras's own loss and metrics,
then the unit's weights and the BatchNorm statistics are restored. The baseline is measured the same way with no
unit pruned. Cancellation is checked before every measurement.

Rows: {"layer", "level", "metric", "drop", "params", "macs"} per unit and level. `layer` is the layer's path (a
structured group: its layers joined by "+"), `level` the sparsity (magnitude) or keep ratio (structured), `drop`
`metric_drop(baseline, metric)`; `params` and `macs` describe the whole model with only that unit pruned: non-zero
parameters and zero-skipping MACs for magnitude, parameters and MACs of the rebuilt model for structured.
Structured units are measured through the surgery's own masked twin (`masked_reference`): the removed channels'
inputs are zeroed where they are consumed, which computes what the rebuilt model computes.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from workers.engine import counting
from workers.engine import metrics as metrics_mod
from workers.engine.batchnorm import BatchNormEstimator, batchnorm_layers
from workers.engine.errors import Cancelled, SpecError
from workers.engine.masks import magnitude_mask
from workers.engine.structured import masked_reference, structured_prune

__all__ = [
    "HeldOutScorer",
    "Unit",
    "analyze",
    "higher_is_better",
    "magnitude_units",
    "metric_drop",
    "resolve_metric",
    "structured_units",
    "write_artifacts",
]

ROW_FIELDS = ("layer", "level", "metric", "drop", "params", "macs")


# --------------------------------------------------------------------------- metrics


def higher_is_better(metric: str) -> bool:
    return "accuracy" in metric


def resolve_metric(available: Sequence[str], wanted: str | None, field: str) -> str:
    """The metric to measure: `wanted` when the model reports it; by default the first accuracy-like one, else
    "loss". A name the model does not report is refused (SpecError on `field`, listing the names it has)."""
    names = list(available)
    if wanted is not None:
        if wanted not in names:
            raise SpecError(
                f"{field} '{wanted}' is not one of the model's held-out metrics: {', '.join(names)}", field=field
            )
        return wanted
    for name in names:
        if higher_is_better(name):
            return name
    if "loss" in names:
        return "loss"
    raise SpecError(f"no held-out metric to measure; the model reports {names}", field=field)


def metric_drop(metric: str, baseline: float, value: float) -> float:
    """How much worse `value` is than `baseline`: absolute for accuracy-like metrics (0.01 = 1 point), relative
    for losses and errors (0.05 = 5% higher). Non-finite values are infinitely worse."""
    if not np.isfinite(value):
        return float("inf")
    if higher_is_better(metric):
        return float(baseline - value)
    if baseline == 0:
        return 0.0 if value <= 0 else float("inf")
    return float((value - baseline) / abs(baseline))


class HeldOutScorer:
    """One metric of a compiled model on (a seeded subset of) held-out data, through one traced forward pass;
    the model's weights may change in place between calls."""

    def __init__(
        self,
        model: keras.Model,
        x,
        y,
        metric: str,
        *,
        batch_size: int = 256,
        max_samples: int | None = None,
        seed: int = 0,
    ):
        import tensorflow as tf

        n = _length(y)
        if max_samples is not None and n > max_samples:
            index = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
            x, y = _take(x, index), _take(y, index)
        self.model, self.x, self.y, self.metric, self.batch_size = model, x, y, metric, batch_size
        self.samples = _length(y)
        self.config = model.get_compile_config()
        self._predict = None
        if len(model.outputs) == 1 and not model.losses:  # else: the compiled model.evaluate (metrics.evaluate)
            signature = tf.nest.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)), x)
            self._predict = tf.function(
                lambda batch: model(batch, training=False), input_signature=[signature], autograph=False
            )

    def __call__(self) -> float:
        if self._predict is None:
            return float(metrics_mod.evaluate(self.model, self.x, self.y, self.batch_size)[self.metric])
        y_pred = metrics_mod.predict_batched(self._predict, self.x, self.batch_size)
        scores = metrics_mod.score_predictions(self.config, y_pred, self.y, self.batch_size)
        return float(scores[self.metric])


def _length(a) -> int:
    """Samples in an array, or in a list / dict of arrays (several inputs or outputs)."""
    if isinstance(a, dict):
        return len(next(iter(a.values())))
    return len(a[0]) if isinstance(a, (list, tuple)) else len(a)


def _take(a, index: np.ndarray):
    if isinstance(a, dict):
        return {k: np.asarray(v)[index] for k, v in a.items()}
    if isinstance(a, (list, tuple)):
        return [np.asarray(v)[index] for v in a]
    return np.asarray(a)[index]


# --------------------------------------------------------------------------- units


@dataclass
class Unit:
    """What is pruned alone: a layer (magnitude) or a group of coupled layers (structured)."""

    name: str
    layers: tuple[str, ...]
    size: int  # the levels are fractions of this: weights (magnitude) or units (structured)
    apply: Callable[[float], tuple[int, int]]  # prune in place at a level -> (params, macs) of the pruned model
    restore: Callable[[], None]

    def describe(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "size": self.size}


def magnitude_units(model: keras.Model, weights: Sequence) -> list[Unit]:
    """One unit per layer path of `weights` (registry.PrunableWeight): its kernels pruned by magnitude to the level
    (a SeparableConv's two kernels each to the level)."""
    by_path: dict[str, list] = {}
    for w in weights:
        by_path.setdefault(w.path, []).append(w)
    base_nonzero = counting.param_stats(model)["nonzero"]

    def unit(path: str, ws: list) -> Unit:
        originals = [np.array(w.variable.numpy()) for w in ws]
        nonzero = sum(int(np.count_nonzero(v)) for v in originals)

        def apply(level: float) -> tuple[int, int]:
            left = 0
            for w, value in zip(ws, originals):
                pruned = value * magnitude_mask(value, level)
                w.variable.assign(pruned.astype(value.dtype))
                left += int(np.count_nonzero(pruned))
            return base_nonzero - (nonzero - left), int(counting.macs(model)["effective_macs"])

        def restore() -> None:
            for w, value in zip(ws, originals):
                w.variable.assign(value)

        return Unit(path, (path,), sum(w.size for w in ws), apply, restore)

    return [unit(path, ws) for path, ws in by_path.items()]


def structured_units(
    model: keras.Model, *, criterion: str, selection=None, overrides: Mapping[str, object] | None = None
) -> list[Unit]:
    """One unit per group of coupled producers the structured surgery would prune (its `selection` and the
    `skip` of `overrides` honoured); a level is the group's keep ratio. `size` counts the group's prunable units."""
    skip = {name: {"skip": True} for name, o in (overrides or {}).items() if getattr(o, "skip", False)}
    _, report = structured_prune(model, criterion=criterion, keep_ratio=1.0, selection=selection, overrides=skip)
    originals = [np.array(v) for v in model.get_weights()]

    def prune(layers: Sequence[str], keep: float):
        ratios = {**skip, **{name: {"keep_ratio": keep} for name in layers}}
        return structured_prune(model, criterion=criterion, keep_ratio=1.0, selection=selection, overrides=ratios)

    def restore() -> None:
        model.set_weights(originals)

    def unit(group) -> Unit:
        layers = tuple(group.layers)
        _, smallest = prune(layers, 1e-6)  # keeps one of the group's prunable units
        kept = next(g.units_after for g in smallest.groups if tuple(g.layers) == layers)
        prunable = group.units_before - kept + 1

        def apply(keep: float) -> tuple[int, int]:
            restore()  # the surgery reads the model's weights: the unit's earlier level must not be in them
            rebuilt, rep = prune(layers, keep)
            model.set_weights(masked_reference(model, rep).get_weights())
            return int(rep.params_after), int(counting.macs(rebuilt)["macs"])

        return Unit("+".join(layers), layers, int(prunable), apply, restore)

    return [unit(g) for g in report.groups]


# --------------------------------------------------------------------------- the sweep


def analyze(
    model: keras.Model,
    units: Sequence[Unit],
    levels: Sequence[float],
    *,
    method: str,
    metric: str,
    x_val,
    y_val,
    x_train=None,
    samples: int | None = 2000,
    batchnorm_samples: int = 512,
    batch_size: int = 256,
    seed: int = 0,
    progress: Callable[[int, int, Unit], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict:
    """Measure every unit alone at every level (see the module docstring); the model is left as it was.

    `model` must be compiled (its loss and metrics score the predictions); `x_train` (or None) re-estimates
    BatchNorm statistics before each measurement. `progress(i, n, unit)` is called before unit i of n.
    """
    should_cancel = should_cancel or (lambda: False)
    scorer = HeldOutScorer(model, x_val, y_val, metric, batch_size=batch_size, max_samples=samples, seed=seed)
    bn_vars = [v for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]
    bn_saved = [np.array(v.numpy()) for v in bn_vars]
    estimator = (
        BatchNormEstimator(model, x_train, batch_size=max(batch_size, 128), max_samples=batchnorm_samples, seed=seed)
        if bn_vars and x_train is not None
        else None
    )

    def measure() -> float:
        if should_cancel():
            raise Cancelled("the job was cancelled during the sensitivity analysis")
        if estimator is not None:
            estimator()
        return scorer()

    rows: list[dict] = []
    try:
        baseline = measure()
        for i, unit in enumerate(units):
            if progress is not None:
                progress(i, len(units), unit)
            try:
                for level in levels:
                    params, macs = unit.apply(float(level))
                    value = measure()
                    rows.append(
                        {
                            "layer": unit.name,
                            "level": float(level),
                            "metric": value,
                            "drop": metric_drop(metric, baseline, value),
                            "params": params,
                            "macs": macs,
                        }
                    )
            finally:
                unit.restore()
                for v, saved in zip(bn_vars, bn_saved):
                    v.assign(saved)
    finally:
        for v, saved in zip(bn_vars, bn_saved):
            v.assign(saved)
    return {
        "metric": metric,
        "baseline": baseline,
        "method": method,
        "levels": [float(x) for x in levels],
        "samples": scorer.samples,
        "units": [u.describe() for u in units],
        "rows": rows,
    }


def curves(result: dict) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per unit name: (fractions removed, drops) of an `analyze` result (structured levels are keep ratios)."""
    structured = result["method"] == "structured"
    out: dict[str, tuple[list, list]] = {}
    for row in result["rows"]:
        fractions, drops = out.setdefault(row["layer"], ([], []))
        fractions.append(1.0 - row["level"] if structured else row["level"])
        drops.append(row["drop"])
    return {name: (tuple(f), tuple(d)) for name, (f, d) in out.items()}


def write_artifacts(result: dict, out_dir: str | Path, name: str = "sensitivity") -> list[str]:
    """NAME.json ({"metric", "baseline", "method", "levels", "samples", "units", "rows"}) and NAME.csv (one row
    per unit and level)."""
    out_dir = Path(out_dir)
    json_name, csv_name = f"{name}.json", f"{name}.csv"
    result = _finite(result)
    (out_dir / json_name).write_text(json.dumps(result, indent=2, sort_keys=True, allow_nan=False))
    with open(out_dir / csv_name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in result["rows"]:
            writer.writerow(row)
    return [json_name, csv_name]


def _finite(obj):
    """JSON-ready: numpy scalars as Python numbers, non-finite floats as None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
