"""Sensitivity analysis on real Keras models: rows, baseline, in-place restore, structured equivalence, cancel."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest

from tests.engine.structured.models import cnn_sequential, residual_functional
from workers.engine import counting
from workers.engine import metrics as metrics_mod
from workers.engine.batchnorm import reestimate_batchnorm
from workers.engine.errors import Cancelled, SpecError
from workers.engine.registry import prunable_weights
from workers.engine.sensitivity import (
    analyze,
    curves,
    magnitude_units,
    metric_drop,
    resolve_metric,
    structured_units,
    write_artifacts,
)
from workers.engine.structured import structured_prune

L = keras.layers
LEVELS = [0.5, 0.9, 0.98]


@pytest.fixture(scope="module")
def trained_mlp(mnist):
    """784-48-10 on 3,000 real digits: the big first layer is redundant, the small output layer is not."""
    x, y, xv, yv = mnist
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            L.Flatten(name="flat"),
            L.Dense(48, activation="relu", name="fc"),
            L.Dense(10, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:3000], y[:3000], epochs=3, batch_size=64, verbose=0)
    return model, (x[:3000], y[:3000], xv[:1000], yv[:1000])


def test_metric_helpers_name_the_field_and_measure_drops_in_the_right_direction():
    assert resolve_metric(["loss", "accuracy"], None, "steps.0.metric") == "accuracy"
    assert resolve_metric(["loss", "mae"], None, "steps.0.metric") == "loss"
    assert resolve_metric(["loss", "mae"], "mae", "steps.0.metric") == "mae"
    with pytest.raises(SpecError) as e:
        resolve_metric(["loss", "accuracy"], "auc", "steps.1.metric")
    assert e.value.field == "steps.1.metric" and "loss, accuracy" in e.value.message
    assert metric_drop("accuracy", 0.9, 0.88) == pytest.approx(0.02)  # absolute points
    assert metric_drop("loss", 0.2, 0.22) == pytest.approx(0.1)  # relative increase
    assert metric_drop("accuracy", 0.9, float("nan")) == float("inf")


def test_magnitude_rows_measure_each_layer_alone_and_leave_the_model_unchanged(trained_mlp, tmp_path):
    model, (x, y, xv, yv) = trained_mlp
    before = [w.copy() for w in model.get_weights()]
    expected = metrics_mod.evaluate(model, xv, yv)["accuracy"]
    seen = []
    units = magnitude_units(model, prunable_weights(model))
    result = analyze(
        model,
        units,
        LEVELS,
        method="magnitude",
        metric="accuracy",
        x_val=xv,
        y_val=yv,
        x_train=x,
        samples=None,
        progress=lambda i, n, u: seen.append((i, n, u.name)),
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert result["baseline"] == pytest.approx(expected, abs=1e-6)
    assert seen == [(0, 2, "fc"), (1, 2, "out")]
    rows = result["rows"]
    assert [(r["layer"], r["level"]) for r in rows] == [(u, lv) for u in ("fc", "out") for lv in LEVELS]
    by = {(r["layer"], r["level"]): r for r in rows}
    # the numbers are what pruning that layer alone gives: redo one by hand
    kernel = model.get_layer("out").kernel
    saved = kernel.numpy()
    flat = np.abs(saved).ravel()
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[: int(np.floor(0.9 * flat.size + 0.5))]] = False
    kernel.assign(saved * keep.reshape(saved.shape))
    by_hand = metrics_mod.evaluate(model, xv, yv)["accuracy"]
    kernel.assign(saved)
    assert by[("out", 0.9)]["metric"] == pytest.approx(by_hand, abs=1e-6)
    total_nonzero = counting.param_stats(model)["nonzero"]
    assert by[("out", 0.9)]["params"] == total_nonzero - int(np.floor(0.9 * 480 + 0.5))
    for r in rows:
        assert r["drop"] == pytest.approx(result["baseline"] - r["metric"])
    # the small output layer is more sensitive than the big redundant hidden layer, level for level
    assert by[("out", 0.98)]["drop"] > by[("fc", 0.98)]["drop"]
    assert by[("out", 0.98)]["drop"] > by[("out", 0.5)]["drop"]
    fractions, drops = curves(result)["out"]
    assert fractions == tuple(LEVELS) and len(drops) == 3

    names = write_artifacts(result, tmp_path)
    assert names == ["sensitivity.json", "sensitivity.csv"]
    loaded = json.loads((tmp_path / "sensitivity.json").read_text())
    assert loaded["metric"] == "accuracy" and len(loaded["rows"]) == 6
    with open(tmp_path / "sensitivity.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["layer", "level", "metric", "drop", "params", "macs"] and len(table) == 6


def test_the_held_out_subset_and_cancellation_within_the_sweep(trained_mlp):
    model, (x, y, xv, yv) = trained_mlp
    before = [w.copy() for w in model.get_weights()]
    units = magnitude_units(model, prunable_weights(model))
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3  # the baseline and two measurements, then cancelled mid-layer

    with pytest.raises(Cancelled):
        analyze(
            model,
            units,
            LEVELS,
            method="magnitude",
            metric="loss",
            x_val=xv,
            y_val=yv,
            samples=200,
            should_cancel=cancel,
        )
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "weights not restored"
    result = analyze(model, units[:1], [0.5], method="magnitude", metric="loss", x_val=xv, y_val=yv, samples=200)
    assert result["samples"] == 200 and result["rows"][0]["drop"] == pytest.approx(
        (result["rows"][0]["metric"] - result["baseline"]) / result["baseline"]
    )


@pytest.mark.parametrize("builder", [cnn_sequential, residual_functional])
def test_structured_rows_equal_the_rebuilt_model_with_batchnorm_reestimated(builder):
    model = builder()
    rng = np.random.default_rng(0)
    shape = tuple(model.inputs[0].shape[1:])
    x = rng.normal(size=(96, *shape)).astype("float32")
    y = rng.normal(size=(96, model.outputs[0].shape[-1])).astype("float32")
    model.compile("adam", "mse")
    weights = [w.copy() for w in model.get_weights()]
    units = structured_units(model, criterion="l1")
    _, report = structured_prune(model, criterion="l1", keep_ratio=1.0)
    assert [u.layers for u in units] == [tuple(g.layers) for g in report.groups]
    result = analyze(
        model,
        units,
        [0.25, 0.5],
        method="structured",
        metric="loss",
        x_val=x,
        y_val=y,
        x_train=x,
        samples=None,
        batchnorm_samples=64,
    )
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    row = next(r for r in result["rows"] if r["level"] == 0.5 and r["layer"] == units[0].name)
    rebuilt, rep = structured_prune(
        model, criterion="l1", keep_ratio=1.0, overrides={n: {"keep_ratio": 0.5} for n in units[0].layers}
    )
    rebuilt.compile("adam", "mse")
    reestimate_batchnorm(rebuilt, x, batch_size=256, max_samples=64)
    assert row["params"] == rebuilt.count_params() == rep.params_after
    assert row["macs"] == counting.macs(rebuilt)["macs"]
    assert row["metric"] == pytest.approx(metrics_mod.evaluate(rebuilt, x, y)["loss"], rel=1e-4)
    assert curves(result)[units[0].name][0] == (0.75, 0.5)  # fractions removed = 1 - keep ratio


def test_a_model_with_two_outputs_is_scored_by_its_compiled_evaluation():
    inp = keras.Input((8,))
    hidden = L.Dense(16, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, [L.Dense(1, name="a")(hidden), L.Dense(2, name="b")(hidden)])
    model.compile("adam", loss=["mse", "mse"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = [rng.normal(size=(64, 1)).astype("float32"), rng.normal(size=(64, 2)).astype("float32")]
    result = analyze(
        model,
        magnitude_units(model, prunable_weights(model)),
        [0.9],
        method="magnitude",
        metric="loss",
        x_val=x,
        y_val=y,
        samples=None,
    )
    assert result["samples"] == 64
    assert result["baseline"] == pytest.approx(model.evaluate(x, y, verbose=0, return_dict=True)["loss"], rel=1e-5)
    subset = analyze(
        model,
        magnitude_units(model, prunable_weights(model))[:1],
        [0.9],
        method="magnitude",
        metric="loss",
        x_val=x,
        y_val=y,
        samples=20,
    )
    assert subset["samples"] == 20 and np.isfinite(subset["baseline"])
    assert [r["layer"] for r in result["rows"]] == ["hidden", "a", "b"]
    assert all(np.isfinite(r["metric"]) for r in result["rows"])
