"""Re-estimate BatchNormalization statistics as exact population statistics over training samples.

Public API::

    reestimate_batchnorm(model, x, *, batch_size=128, max_samples=None) -> {"layers", "samples", "batches"}
    BatchNormEstimator(model, x, ...)() -> the same, traced once and reusable (weights may change in between)

Why: a BatchNormalization layer normalizes with the statistics of the current mini-batch while training and with
its moving averages (momentum 0.99 by default) at inference. After pruning, a structured rebuild or a few epochs of
fine-tuning, the weights feeding a BN layer changed faster than its moving averages follow, so the model predicts
well in training mode and badly in inference mode (docs/BENCHMARKS.md part 5 measures it on MobileNetV2).
Re-estimating replaces every moving mean / variance by the population statistics of the
layer's input over up to `max_samples` training samples.

Method (as PyTorch's ``torch.optim.swa_utils.update_bn``): one pass over the samples in batches, through one
compiled function, with every BN layer normalizing with the *batch* statistics (as in training, so a layer sees
the inputs it was trained on) while its per-channel count, mean and centred sum of squares are returned for the
batch; every other layer runs in inference mode (Dropout, GaussianNoise, ...). The batches' moments are combined
in float64 (Chan et al.'s parallel update), so the result is the exact population mean and (biased, as Keras's
``moving_variance``) variance of the inputs seen during the pass, not a momentum average. Every BN layer is
re-estimated: nested models, layers inside custom layers, frozen (``trainable=False``) layers and shared layers
(a layer called several times pools the samples of all its calls). A mask passed to a BN layer is honoured.

The samples are a seeded random subset (the same for the same data) when `x` holds more than `max_samples`, in a
seeded random order either way, so sorted training data still gives mixed batches.
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["BatchNormEstimator", "batchnorm_layers", "reestimate_batchnorm"]

ops = keras.ops


def batchnorm_layers(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer below `model` (nested models and custom layers included), once each."""
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def _take(x, index: np.ndarray):
    if isinstance(x, dict):
        return {k: np.asarray(v)[index] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [np.asarray(v)[index] for v in x]
    return np.asarray(x)[index]


def _length(x) -> int:
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    if isinstance(x, (list, tuple)):
        return len(x[0])
    return len(x)


def _recording_call(layer, records: list):
    """A replacement for `layer.call`: normalize with the batch moments and append (count, mean, m2) per channel."""

    def call(inputs, training=None, mask=None):
        x = ops.cast(inputs, backend_float(inputs))
        rank = len(x.shape)
        axes = [a for a in range(rank) if a != layer.axis % rank]
        if mask is None:
            mean, variance = ops.moments(x, axes=axes, keepdims=True)
            count = ops.cast(ops.prod(ops.take(ops.shape(x), axes)), x.dtype) * ops.ones_like(mean)
            m2 = variance * count
        else:
            weight = ops.broadcast_to(ops.cast(ops.expand_dims(mask, -1), x.dtype), ops.shape(x))
            count = ops.sum(weight, axis=axes, keepdims=True)
            mean = ops.sum(weight * x, axis=axes, keepdims=True) / ops.maximum(count, 1.0)
            m2 = ops.sum(weight * ops.square(x - mean), axis=axes, keepdims=True)
            variance = m2 / ops.maximum(count, 1.0)
        records.append((layer, ops.reshape(count, (-1,)), ops.reshape(mean, (-1,)), ops.reshape(m2, (-1,))))
        out = (x - mean) * ops.rsqrt(variance + layer.epsilon)
        shape = [1] * rank
        shape[layer.axis % rank] = -1
        if layer.scale:
            out = out * ops.reshape(ops.cast(layer.gamma, x.dtype), shape)
        if layer.center:
            out = out + ops.reshape(ops.cast(layer.beta, x.dtype), shape)
        return ops.cast(out, layer.compute_dtype)

    return call


def backend_float(tensor) -> str:
    """float32 for low-precision inputs (BN statistics overflow in float16), the input's dtype otherwise."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    return "float64" if dtype == "float64" else "float32"


class _Moments:
    """Per-channel population count, mean and centred sum of squares, combined in float64 (Chan et al. 1979)."""

    def __init__(self):
        self.n = self.mean = self.m2 = None

    def add(self, n, mean, m2) -> None:
        n, mean, m2 = (np.asarray(a, dtype=np.float64) for a in (n, mean, m2))
        if self.n is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        safe = np.maximum(total, 1.0)
        delta = mean - self.mean
        self.mean = self.mean + delta * n / safe
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / safe
        self.n = total

    def variance(self) -> np.ndarray:
        return self.m2 / np.maximum(self.n, 1.0)


def reestimate_batchnorm(
    model: keras.Model, x, *, batch_size: int = 128, max_samples: int | None = None, seed: int = 0
) -> dict:
    """Set every BN layer's moving mean / variance to the population statistics of its input over `x`.

    `x` is the model's input (an array, or a list / dict of arrays for several inputs); at most `max_samples`
    of them are used (None: all). Returns {"layers": BN layers re-estimated, "samples": samples used,
    "batches": forward passes}; a model without BatchNormalization (or empty `x`) is left untouched and gives
    {"layers": 0, ...}. A channel that saw no sample (all masked) keeps its old statistics.
    """
    return BatchNormEstimator(model, x, batch_size=batch_size, max_samples=max_samples, seed=seed)()


class BatchNormEstimator:
    """`reestimate_batchnorm` for repeated use on one model: the samples are drawn and the recording pass is traced
    once; every call re-estimates with the model's current weights (which may be changed in place between calls,
    as a sensitivity sweep does)."""

    def __init__(self, model: keras.Model, x, *, batch_size: int = 128, max_samples: int | None = None, seed: int = 0):
        self.model = model
        self.layers = batchnorm_layers(model)
        n_total = _length(x) if x is not None else 0
        if batch_size < 1 or (max_samples is not None and max_samples < 1):
            raise ValueError("reestimate_batchnorm needs batch_size >= 1 and max_samples >= 1 (or None)")
        self.batch_size = batch_size
        self.n = 0
        self._fn = None
        self._records: list = []
        if not self.layers or n_total == 0:
            return
        rng = np.random.default_rng(seed)
        order = rng.permutation(n_total)[: max_samples or n_total]
        self.x = _take(x, order)
        self.n = len(order)

    def _function(self):
        import tensorflow as tf

        if self._fn is None:
            records, model = self._records, self.model

            def step(batch):
                records.clear()
                model(batch, training=False)  # every other layer in inference mode; BN layers ignore the flag
                return [(c, m, s) for _layer, c, m, s in records]

            signature = tf.nest.map_structure(  # one trace for every batch size (the last batch may be shorter)
                lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)), self.x
            )
            self._fn = tf.function(step, input_signature=[signature], autograph=False)
        return self._fn

    def __call__(self) -> dict:
        if not self.layers or self.n == 0:
            return {"layers": 0, "samples": 0, "batches": 0}
        layers, records, n, batch_size = self.layers, self._records, self.n, self.batch_size
        saved = {id(layer): layer.__dict__.get("call") for layer in layers}
        for layer in layers:  # patched for every call, so a retrace (if any) records again
            layer.call = _recording_call(layer, records)
        try:
            fn = self._function()
            moments = {id(layer): _Moments() for layer in layers}
            batches = 0
            for start in range(0, n, batch_size):
                batch = _take(self.x, np.arange(start, min(start + batch_size, n)))
                out = fn(batch)  # `records` holds the layers in the call order of the last trace (the same every trace)
                for (layer, *_), (c, m, s) in zip(records, out, strict=True):
                    moments[id(layer)].add(c.numpy(), m.numpy(), s.numpy())
                batches += 1
        finally:
            for layer in layers:
                if saved[id(layer)] is None:
                    layer.__dict__.pop("call", None)
                else:  # pragma: no cover - a layer whose call was already an instance attribute
                    layer.call = saved[id(layer)]

        updated = 0
        for layer in layers:
            acc = moments[id(layer)]
            if acc.n is None:
                continue  # not called by the model's forward pass (e.g. a BN layer on an unused branch)
            seen = acc.n > 0
            mean = np.where(seen, acc.mean, np.asarray(layer.moving_mean.numpy(), np.float64))
            var = np.where(seen, acc.variance(), np.asarray(layer.moving_variance.numpy(), np.float64))
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(var.astype(layer.moving_variance.dtype))
            updated += 1
        return {"layers": updated, "samples": int(n), "batches": batches}
