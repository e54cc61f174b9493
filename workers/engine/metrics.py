"""Measure a model: parameters and zeros, multiply-accumulates, compiled CPU latency, file size and hash.

Public API::

    param_stats(model) -> dict
    macs(model) -> dict
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
* Parameters are the elements of every model variable (trainable and not: BatchNormalization statistics count),
  each variable once even when a layer is shared. `sparsity` is the fraction of zeros in the *prunable kernels*
  (`registry.prunable_weights`: Dense/Conv/Depthwise/Separable/Embedding kernels), the number pruning moves;
  `overall_sparsity` is the fraction of zeros among all parameters.
* MACs are counted per sample (batch size 1) for every call of a layer (a layer shared twice counts twice; a
  nested model called twice counts twice), from the layer's symbolic output shapes: a kernel applied at P
  positions costs ``P * kernel.size`` MACs, where P is the product of the output's spatial / sequence
  dimensions (the *input's* for transposed convolutions, whose kernel is applied once per input position).
  That covers Dense (on any rank), Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D and both kernels of
  SeparableConv1D/2D. `effective_macs` uses the number of non-zero kernel weights instead of ``kernel.size``:
  what a sparse kernel would cost. Bias additions, activations, normalization and pooling are not counted.
  FLOPs = 2 * MACs. A layer whose spatial size is unknown (None) is listed in `unknown` and left out of totals.
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
import math
import os
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

from workers.engine.registry import prunable_weights, walk_layers

__all__ = [
    "MAC_RULES",
    "cpu_copy",
    "evaluate",
    "file_size",
    "forward",
    "latency",
    "macs",
    "param_stats",
    "predict_batched",
    "score_predictions",
    "sha256_file",
    "weights_fingerprint",
]

L = keras.layers

# --------------------------------------------------------------------------- parameters


def _count(values: np.ndarray) -> tuple[int, int]:
    return int(values.size), int(np.count_nonzero(values))


def param_stats(model: keras.Model) -> dict:
    """Totals and zeros of every variable, per leaf layer (nested models included, paths 'outer/inner')."""
    layers: dict[str, dict] = {}
    seen: set[int] = set()
    total = nonzero = trainable = 0
    for path, _prefix, layer in walk_layers(model):
        if isinstance(layer, keras.Model):
            continue  # its layers are walked with their own paths
        own = [v for v in layer.weights if id(v) not in seen]
        if not own:
            continue
        n = nz = 0
        for v in own:
            seen.add(id(v))
            size, count = _count(np.asarray(v.numpy()))
            n, nz = n + size, nz + count
            if v.trainable:
                trainable += size
        total, nonzero = total + n, nonzero + nz
        layers[path] = {
            "class": type(layer).__name__,
            "params": n,
            "nonzero": nz,
            "sparsity": (n - nz) / n if n else 0.0,
        }
    k_total = k_nonzero = 0
    for w in prunable_weights(model):
        size, count = _count(np.asarray(w.variable.numpy()))
        k_total, k_nonzero = k_total + size, k_nonzero + count
    return {
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
        "nonzero": nonzero,
        "zeros": total - nonzero,
        "overall_sparsity": (total - nonzero) / total if total else 0.0,
        "prunable": {"total": k_total, "nonzero": k_nonzero},
        "sparsity": (k_total - k_nonzero) / k_total if k_total else 0.0,
        "layers": layers,
    }


# --------------------------------------------------------------------------- MACs

Shape = tuple
# A rule returns [(positions, kernel variable)] for one call of a layer, given its input and output shapes.
MacRule = Callable[[keras.layers.Layer, Shape, Shape], list]


def _spatial(layer, shape: Shape) -> Shape:
    """The dimensions a kernel slides over (all but batch and channel axes)."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return tuple(shape[2:])
    return tuple(shape[1:-1])


def _at_output(*names: str) -> MacRule:
    def rule(layer, in_shape, out_shape):
        return [(_spatial(layer, out_shape), getattr(layer, n)) for n in names]

    return rule


def _at_input(*names: str) -> MacRule:
    def rule(layer, in_shape, out_shape):
        return [(_spatial(layer, in_shape), getattr(layer, n)) for n in names]

    return rule


def _dense(layer, in_shape, out_shape):
    return [(tuple(out_shape[1:-1]), layer.kernel)]


MAC_RULES: dict[type, MacRule] = {
    L.Dense: _dense,
    L.Conv1D: _at_output("kernel"),
    L.Conv2D: _at_output("kernel"),
    L.Conv3D: _at_output("kernel"),
    L.Conv1DTranspose: _at_input("kernel"),
    L.Conv2DTranspose: _at_input("kernel"),
    L.Conv3DTranspose: _at_input("kernel"),
    L.DepthwiseConv1D: _at_output("kernel"),
    L.DepthwiseConv2D: _at_output("kernel"),
    L.SeparableConv1D: _at_output("depthwise_kernel", "pointwise_kernel"),
    L.SeparableConv2D: _at_output("depthwise_kernel", "pointwise_kernel"),
}


def _rule_for(layer) -> MacRule | None:
    for cls in type(layer).__mro__:
        rule = MAC_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def _graph(model: keras.Model):
    """The functional graph of a model (a Sequential keeps its graph in `_functional`)."""
    functional = getattr(model, "_functional", None)
    return model if functional is None else functional


def _calls(model: keras.Model) -> Iterator[tuple[keras.layers.Layer, list]]:
    """(layer, [nodes]) for each operation of `model`'s graph: the calls of that layer inside this model."""
    graph = _graph(model)
    keys = getattr(graph, "_nodes", None)
    for op in getattr(graph, "operations", None) or model.layers:
        if isinstance(op, L.InputLayer):
            continue
        nodes = list(getattr(op, "_inbound_nodes", None) or [])
        if keys is not None:
            in_graph = [n for i, n in enumerate(nodes) if f"{id(op)}_ib-{i}" in keys]  # keras' node key
            nodes = in_graph or nodes[:1]
        yield op, nodes


def _known(shape) -> bool:
    return all(d is not None for d in shape)


def _macs_into(model: keras.Model, prefix: str, times: int, out: dict, unknown: list) -> None:
    for layer, nodes in _calls(model):
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            _macs_into(layer, f"{path}/", times * max(1, len(nodes)), out, unknown)
            continue
        rule = _rule_for(layer)
        if rule is None:
            continue
        dense = effective = 0
        known = True
        for node in nodes:
            in_shape = tuple(node.input_tensors[0].shape) if node.input_tensors else ()
            out_shape = tuple(node.outputs[0].shape)
            for positions, kernel in rule(layer, in_shape, out_shape):
                if not _known(positions):
                    known = False
                    continue
                p = math.prod(positions)
                size = math.prod(kernel.shape)
                dense += p * size
                effective += p * int(np.count_nonzero(np.asarray(kernel.numpy())))
        if not known:
            unknown.append(path)
            continue
        entry = out.setdefault(path, {"class": type(layer).__name__, "calls": 0, "macs": 0, "effective_macs": 0})
        entry["calls"] += len(nodes) * times
        entry["macs"] += dense * times
        entry["effective_macs"] += effective * times


def macs(model: keras.Model) -> dict:
    """Dense and effective (zero-skipping) MACs and FLOPs per sample, per layer path and in total."""
    layers: dict[str, dict] = {}
    unknown: list[str] = []
    _macs_into(model, "", 1, layers, unknown)
    for entry in layers.values():
        entry["flops"] = 2 * entry["macs"]
        entry["effective_flops"] = 2 * entry["effective_macs"]
    total = sum(e["macs"] for e in layers.values())
    effective = sum(e["effective_macs"] for e in layers.values())
    return {
        "macs": total,
        "flops": 2 * total,
        "effective_macs": effective,
        "effective_flops": 2 * effective,
        "layers": layers,
        "unknown": unknown,
    }


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
