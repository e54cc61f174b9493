"""Assertion helpers shared by the test modules.

    layer_sparsity(model_or_weights) -> dict[str, float]     fraction of exact zeros per layer path
    assert_sparsity(model_or_weights, expected, tol=0.0)      overall fraction of exact zeros == expected +- tol

`model_or_weights` may be a Keras model (its prunable weights, found by `workers.engine.registry`), a list of
`PrunableWeight`, a mapping name -> array, or a list of arrays / Keras variables.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np


def _named_arrays(model_or_weights) -> list[tuple[str, np.ndarray]]:
    import keras

    from workers.engine.registry import PrunableWeight, prunable_weights

    obj = model_or_weights
    if isinstance(obj, keras.Model):
        obj = prunable_weights(obj)
    if isinstance(obj, Mapping):
        return [(str(k), np.asarray(v)) for k, v in obj.items()]
    out = []
    for i, item in enumerate(obj):
        if isinstance(item, PrunableWeight):
            out.append((item.path, np.asarray(item.variable.numpy())))
        elif hasattr(item, "numpy"):
            out.append((getattr(item, "path", f"#{i}"), np.asarray(item.numpy())))
        else:
            out.append((f"#{i}", np.asarray(item)))
    return out


def layer_sparsity(model_or_weights) -> dict[str, float]:
    """Fraction of exact zeros per name (a layer with several prunable weights counts them together)."""
    counts: dict[str, list[int]] = {}
    for name, a in _named_arrays(model_or_weights):
        zeros, size = counts.get(name, [0, 0])
        counts[name] = [zeros + int(np.count_nonzero(a == 0)), size + a.size]
    return {name: (z / n if n else 0.0) for name, (z, n) in counts.items()}


def overall_sparsity(model_or_weights) -> float:
    arrays = [a for _, a in _named_arrays(model_or_weights)]
    total = sum(a.size for a in arrays)
    return sum(int(np.count_nonzero(a == 0)) for a in arrays) / total if total else 0.0


def assert_sparsity(model_or_weights, expected: float, tol: float = 0.0) -> float:
    """Assert the overall fraction of exact zeros is `expected` within `tol`; returns the measured value."""
    measured = overall_sparsity(model_or_weights)
    assert abs(measured - expected) <= tol + 1e-12, (
        f"sparsity {measured:.6f} != expected {expected:.6f} (tol {tol}); per layer: {layer_sparsity(model_or_weights)}"
    )
    return measured


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned); AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true after {timeout} s: {predicate}")
