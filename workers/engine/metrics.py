"""Measure a model: held-out metrics, compiled CPU latency, file size and hash (its parameters, zeros and
multiply-accumulates are counted by `counting`).

Public API::

    latency(model, batch_sizes=(1, 32), runs=30, warmup=1, input_fill=32) -> dict
    evaluate(model, x, y, batch_size=256) -> {loss and metric name: value}
    predict_batched(predict, x, batch_size) -> np.ndarray
    score_predictions(compile_config, y_pred, y) -> {loss and metric name: value}
    file_size(path) -> {"bytes", "gzip_bytes"}
    sha256_file(path) -> str
    weights_fingerprint(model) -> tuple      # equal tuples: bit-identical weights
    forward(model) -> tf.function            # model(x, training=False), traced once per model for any batch size

Conventions
-----------
* `evaluate` gives what ``model.evaluate`` gives for a compiled single-output model without added losses: the
  model's inference function (`forward`: one trace per model, shared with `latency`, reused while the model keeps
  its variables) runs on batches and its compiled loss and metrics score the predictions (an identity model
  compiled with them is evaluated on them). Other models go through ``model.evaluate``.
* Latency times `forward(model)` (``tf.function(lambda x: model(x, training=False))`` with the batch dimension
  left open, so every batch size shares one trace) on the CPU after `warmup` untimed calls, waiting for each
  result; never eager calls. On a host with a GPU the timed model is a copy whose variables live in host memory
  (`cpu_copy`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

__all__ = [
    "cpu_copy",
    "evaluate",
    "file_size",
    "forward",
    "latency",
    "predict_batched",
    "score_predictions",
    "sha256_file",
    "weights_fingerprint",
]

L = keras.layers

# --------------------------------------------------------------------------- held-out metrics


def predict_batched(predict: Callable, x, batch_size: int) -> np.ndarray:
    """`predict` on consecutive batches of `x` (an array or a list of arrays), outputs concatenated (float32)."""
    n = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
    parts = []
    for i in range(0, n, batch_size):
        batch = [a[i : i + batch_size] for a in x] if isinstance(x, (list, tuple)) else x[i : i + batch_size]
        parts.append(np.asarray(predict(batch), dtype=np.float32))
    return np.concatenate(parts)


def score_predictions(compile_config: dict, y_pred: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> dict:
    """The loss and metrics of a compile config (``model.get_compile_config()``) for predictions `y_pred` against
    `y`, computed by Keras itself: an identity model compiled with them is evaluated on the predictions."""
    config = {k: compile_config.get(k) for k in ("loss", "metrics", "loss_weights", "weighted_metrics")}
    scorer = _scorer(json.dumps(config, sort_keys=True, default=str), tuple(y_pred.shape[1:]))
    result = scorer.evaluate(y_pred, y, batch_size=max(batch_size, 1024), verbose=0, return_dict=True)
    return {k: float(v) for k, v in result.items()}


@functools.lru_cache(maxsize=8)
def _scorer(config_json: str, shape: tuple) -> keras.Model:
    """An identity model compiled with a loss and metrics; kept, so its evaluation is traced once per process."""
    compiled = keras.saving.deserialize_keras_object(json.loads(config_json))
    inp = keras.Input(shape=shape)
    scorer = keras.Model(inp, keras.layers.Identity()(inp))
    scorer.compile(
        loss=compiled.get("loss"),
        metrics=compiled.get("metrics"),
        loss_weights=compiled.get("loss_weights"),
        weighted_metrics=compiled.get("weighted_metrics"),
    )
    return scorer


def evaluate(model: keras.Model, x, y, batch_size: int = 256) -> dict:
    """``model.evaluate(x, y, return_dict=True)`` of a compiled model, without tracing it when it can (see above)."""
    if len(model.outputs) != 1 or model.losses:
        result = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        return {k: float(v) for k, v in result.items()}
    fn = forward(model)
    y_pred = predict_batched(lambda batch: fn(_as_inputs(model, batch)), x, batch_size)
    if model.losses:  # activity regularizers show up once called
        result = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        return {k: float(v) for k, v in result.items()}
    return score_predictions(model.get_compile_config(), y_pred, y, batch_size)


# --------------------------------------------------------------------------- the inference function

_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its variables' ids, fn)


def forward(model: keras.Model):
    """``tf.function(lambda x: model(x, training=False))`` traced once for this model, for every batch size (the
    batch dimension of its input signature is open). Kept per model and traced again when its variables are
    replaced (a rebuild); weights changed in place are read by the existing trace. Called with the model's inputs
    (one tensor, or a list for several inputs: `_as_inputs`)."""
    import tensorflow as tf

    key = tuple(id(v) for v in model.variables)
    cached = _FORWARD.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    inputs = getattr(model, "inputs", None)
    if inputs:
        specs = [tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(str(t.dtype))) for t in inputs]
        signature = [specs[0] if len(specs) == 1 else specs]
    ref = weakref.ref(model)  # the cache must not keep the model alive: the function holds it weakly

    def call(x):
        return ref()(x, training=False)

    if inputs:
        fn = tf.function(call, input_signature=signature)
    else:  # pragma: no cover - a subclassed model never called symbolically
        fn = tf.function(call, reduce_retracing=True)
    _FORWARD[model] = (key, fn)
    return fn


def _as_inputs(model: keras.Model, batch):
    """`batch` (an array, or a list per model input) as tensors of the model's input dtypes."""
    import tensorflow as tf

    inputs = getattr(model, "inputs", None) or []
    arrays = batch if isinstance(batch, (list, tuple)) else [batch]
    if len(inputs) != len(arrays):
        return batch
    tensors = [tf.convert_to_tensor(np.asarray(a, dtype=str(t.dtype))) for a, t in zip(arrays, inputs)]
    return tensors[0] if len(tensors) == 1 else tensors


def weights_fingerprint(model: keras.Model) -> tuple:
    """(shape, dtype, CRC-32 of the bytes) of every variable of `model`, in order: equal fingerprints mean
    bit-identical weights (up to a CRC collision), so a measurement of the same weights can be reused."""
    out = []
    for v in model.variables:
        a = np.ascontiguousarray(np.asarray(v.numpy()))
        out.append((a.shape, str(a.dtype), zlib.crc32(a.view(np.uint8).reshape(-1)) if a.size else 0))
    return tuple(out)


# --------------------------------------------------------------------------- latency


LATENCY_BUDGET_S = 1.0  # seconds of timed runs per batch size, once LATENCY_MIN_RUNS are in
LATENCY_MIN_RUNS = 8  # enough for an interquartile range


def _example_inputs(model: keras.Model, batch: int, fill: int, rng: np.random.Generator) -> list:
    xs = []
    for t in model.inputs:
        shape = (batch, *(fill if d is None else int(d) for d in t.shape[1:]))
        dtype = str(t.dtype)
        if "float" in dtype:
            xs.append(rng.standard_normal(shape).astype(dtype))
        else:
            xs.append(np.zeros(shape, dtype=dtype))  # index 0 is valid for any embedding / lookup
    return xs


def latency(
    model: keras.Model,
    batch_sizes=(1, 32),
    runs: int = 30,
    warmup: int = 1,
    input_fill: int = 32,
    budget_s: float = LATENCY_BUDGET_S,
) -> dict:
    """Milliseconds of a compiled forward pass on the CPU, per batch size: median and spread of up to `runs` timings.

    Timing a batch size stops after `budget_s` seconds once LATENCY_MIN_RUNS timings are in (a big model would
    otherwise spend most of a job's overhead here); "runs" records how many were taken. `warmup` untimed calls per
    batch size come first (the trace itself is `forward`'s, made once per model and shared with `evaluate`).

    Returns {"batch_<b>": {"batch_size", "median", "p10", "p25", "p75", "p90", "mean", "min", "runs"}} (percentiles
    by linear interpolation; p25..p75 is the interquartile range the summary compares before claiming a speed win).
    Inputs are random (float) or zeros (integer inputs); a None dimension of the model's input is filled with
    `input_fill`.
    """
    import tensorflow as tf

    if runs < 1 or warmup < 1:
        raise ValueError("latency needs runs >= 1 and warmup >= 1")
    rng = np.random.default_rng(0)
    out: dict[str, dict] = {}
    if tf.config.list_logical_devices("GPU"):
        model = cpu_copy(model)  # weights on the GPU would be copied to the host at every call
    with tf.device("/CPU:0"):
        fn = forward(model)
        for b in batch_sizes:
            xs = [tf.constant(a) for a in _example_inputs(model, int(b), input_fill, rng)]
            x = xs[0] if len(xs) == 1 else xs
            for _ in range(warmup):
                _materialize(fn(x))
            times = []
            started = time.perf_counter()
            for _ in range(runs):
                t0 = time.perf_counter()
                _materialize(fn(x))
                times.append((time.perf_counter() - t0) * 1000.0)
                if len(times) >= LATENCY_MIN_RUNS and time.perf_counter() - started >= budget_s:
                    break
            out[f"batch_{int(b)}"] = latency_stats(times, int(b))
    return out


def latency_stats(times_ms, batch_size: int) -> dict:
    """One batch size's latency entry from its repeated timings (ms): median, spread percentiles, mean, min, runs."""
    a = np.asarray(times_ms, dtype=float)
    p10, p25, p75, p90 = (float(v) for v in np.percentile(a, [10, 25, 75, 90]))
    return {
        "batch_size": batch_size,
        "median": float(np.median(a)),
        "p10": p10,
        "p25": p25,
        "p75": p75,
        "p90": p90,
        "mean": float(a.mean()),
        "min": float(a.min()),
        "runs": len(a),
    }


def cpu_copy(model: keras.Model) -> keras.Model:
    """A copy of `model` whose variables live in host memory (same weights)."""
    import tensorflow as tf

    with tf.device("/CPU:0"):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


def _materialize(result) -> None:
    """Wait for the computation: copy every output to host memory."""
    for t in keras.tree.flatten(result):
        np.asarray(t)


# --------------------------------------------------------------------------- files


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(size), b"")


# gzip's own default level: level 9 gave files barely smaller at several times the time on a large model, three
# times per job, so the size measure grew with the model (issue 9, item 6).
GZIP_LEVEL = 6
GZIP_BLOCK = 8 << 20  # files above one block are deflated in blocks on several threads (pigz's method)
GZIP_WINDOW = 32 << 10  # deflate's window: each block is primed with the 32 KiB before it


def file_size(path: str | Path) -> dict:
    """Size on disk and the size of the file as a gzip stream at GZIP_LEVEL (header and trailer included).

    A file of more than one GZIP_BLOCK is deflated in blocks of GZIP_BLOCK bytes on up to 4 threads, as ``pigz``
    does: every block is primed with the 32 KiB that precede it (deflate's whole window, so matches across a block
    boundary are still found) and ends on a sync flush; the blocks concatenated are one valid gzip stream
    (the tests assemble and decompress it), a few bytes per block larger than the single-threaded one. Smaller
    files: one stream.
    """
    path = Path(path)
    size = path.stat().st_size
    if size <= GZIP_BLOCK:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # wbits 16+: gzip container
        gz = 0
        for chunk in _chunks(path):
            gz += len(compressor.compress(chunk))
        gz += len(compressor.flush())
        return {"bytes": size, "gzip_bytes": gz}
    blocks = -(-size // GZIP_BLOCK)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, blocks))) as pool:
        deflated = sum(pool.map(lambda i: len(_deflate_block(path, i, blocks)), range(blocks)))
    return {"bytes": size, "gzip_bytes": _GZIP_HEADER + deflated + _GZIP_TRAILER}


_GZIP_HEADER, _GZIP_TRAILER = 10, 8  # zlib's gzip header (no name, no extra fields); CRC-32 and length


def _deflate_block(path: Path, index: int, blocks: int) -> bytes:
    """Raw deflate of block `index` of `blocks`, primed with the window before it; the last one ends the stream.
    (zlib releases the GIL while it compresses, so blocks run in parallel on threads.)"""
    start = index * GZIP_BLOCK
    with open(path, "rb") as f:
        f.seek(max(0, start - GZIP_WINDOW))
        window = f.read(start - max(0, start - GZIP_WINDOW))
        data = f.read(GZIP_BLOCK)
    if window:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=window)
    else:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if index == blocks - 1 else zlib.Z_SYNC_FLUSH)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    for chunk in _chunks(Path(path)):
        h.update(chunk)
    return h.hexdigest()
