"""Helpers shared by the structured-pruning tests: inputs, outputs, unit counts and the prune call they use."""

from __future__ import annotations

import keras
import numpy as np

from workers.engine.structured import structured_prune

L = keras.layers


def sample_inputs(model, n=32, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, *t.shape[1:])).astype("float32") for t in model.inputs]
    return xs[0] if len(xs) == 1 else xs


def outputs(model, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_same_outputs(a, b, x, rel=1e-4):
    """Equal to float tolerance relative to the output scale."""
    ya, yb = outputs(a, x), outputs(b, x)
    scale = max(float(np.abs(yb).max()), 1e-6)
    np.testing.assert_allclose(ya, yb, rtol=0, atol=rel * scale)


def units(model) -> dict[str, int]:
    out = {}
    for layer in model.layers:
        if isinstance(layer, L.Dense):
            out[layer.name] = layer.units
        elif hasattr(layer, "filters"):
            out[layer.name] = layer.filters
    return out


def weights(layer) -> dict[str, np.ndarray]:
    return {v.name: np.asarray(w) for v, w in zip(layer.weights, layer.get_weights())}


def kept(report, layer) -> list[int]:
    for g in report.groups:
        if layer in g.kept_indices:
            return g.kept_indices[layer]
    raise AssertionError(f"{layer} was not pruned; skipped: {report.skipped}")


def prune(model, **kw):
    kw.setdefault("criterion", "l1")
    kw.setdefault("keep_ratio", 0.5)
    # calibration data for every criterion: data criteria rank on it, and all of them fold the removed channels'
    # mean contribution back (compensation), which masked_reference applies too
    kw.setdefault("x_calib", sample_inputs(model, n=48, seed=1))
    return structured_prune(model, **kw)


def l1_normalized(layer):
    s = np.abs(layer.get_weights()[0]).sum(axis=0)
    return s / s.mean()


def merged_model():
    inp = keras.Input((6,))
    a = L.Dense(16, name="a")(inp)
    b = L.Dense(16, name="b")(inp)
    x = L.ReLU(name="relu")(L.Add(name="add")([a, b]))
    x = L.Dense(16, activation="relu", name="c")(x)
    return keras.Model(inp, L.Dense(2, name="out")(x))
