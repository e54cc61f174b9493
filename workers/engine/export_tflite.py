"""TFLite export: convert with the stock converter (float32 sparse-encoded, or int8 quantized), read the file back
with the LiteRT interpreter, and run it on held-out samples. `export.FORMATS` writes and measures .tflite files through
`_writer` and `_measure_tflite` (the format table and the entry point, `export_model`, are in export.py).

The held-out samples and the measurement records both kinds of file use are in `export_records`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from workers.engine.counting import param_stats
from workers.engine.errors import SpecError
from workers.engine.export_records import HeldOut, _head, _length, _Measured, _sample_count, _Written
from workers.engine.metrics import predict_batched, score_predictions
from workers.engine.tflite import tflite_interpreter, tflite_kernels

__all__ = ["CALIBRATION_BATCH", "CALIBRATION_SAMPLES"]


# --------------------------------------------------------------------------- tflite

CALIBRATION_SAMPLES = 256  # training samples the int8 converter calibrates activation ranges on
CALIBRATION_BATCH = 16


def _tflite_bytes(model: keras.Model, fmt: str, calibration=None) -> tuple[bytes, _Written]:
    """Convert with the stock converter. tflite: float32, sparse-encoded when any prunable kernel holds zeros.
    tflite_int8: full-integer (every op int8, float32 input/output) calibrated on `calibration` samples; without
    them, dynamic-range (int8 weights, float activations)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if fmt == "tflite":
        sparse = param_stats(model)["sparsity"] > 0
        if sparse:
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        written = _Written(
            encoding="float32, sparse kernels (Optimize.EXPERIMENTAL_SPARSITY)" if sparse else "float32, dense"
        )
    elif calibration is not None:
        # sparse encoding is left out: XNNPACK, the default CPU runtime, fails to prepare sparse int8 kernels
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(model, calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        written = _Written(
            encoding="int8 weights and activations (full-integer), float32 input and output, "
            f"calibrated on {min(CALIBRATION_SAMPLES, _length(calibration))} training samples"
        )
    else:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        written = _Written(
            encoding="int8 weights, float32 activations (dynamic range)",
            note="dynamic-range quantization: the job has no training data to calibrate full-integer quantization on",
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter prints the SavedModel it exports and warns about it
            return converter.convert(), written
    except Exception as e:
        text = " ".join(str(e).split())[:300]
        raise SpecError(
            f"export.formats includes '{fmt}' but model '{model.name}' cannot be converted to "
            f"TFLite: {type(e).__name__}: {text}",
            field="export.formats",
        ) from None


def _representative(model: keras.Model, calibration):
    n = min(CALIBRATION_SAMPLES, _length(calibration))

    arrays = calibration if isinstance(calibration, (list, tuple)) else [calibration]

    def batches():
        for i in range(0, n, CALIBRATION_BATCH):
            yield [np.asarray(a[i : i + CALIBRATION_BATCH], dtype=str(t.dtype)) for a, t in zip(arrays, model.inputs)]

    return batches


def _writer(fmt: str) -> Callable[[keras.Model, Path, Any], _Written]:
    def write(model: keras.Model, tmp: Path, calibration=None) -> _Written:
        content, written = _tflite_bytes(model, fmt, calibration)
        tmp.write_bytes(content)
        return written

    return write


def _measure_tflite(model: keras.Model, path: Path, held_out: HeldOut | None) -> tuple[_Measured, dict | None]:
    interpreter = tflite_interpreter(path)
    kernels = tflite_kernels(interpreter)
    params = sum(k.size for k in kernels.values())
    nonzero = sum(k.nonzero for k in kernels.values())
    zeros = params - nonzero
    ref = param_stats(model)["prunable"]
    ref_zeros = ref["total"] - ref["nonzero"]
    n_sparse = sum(k.sparse for k in kernels.values())
    measured = (
        f"{len(kernels)} constant kernel tensor(s) of the weight ops ({n_sparse} sparse-encoded), read "
        "with the LiteRT interpreter; biases not counted"
    )
    note = ""
    if params == ref["total"]:
        preserved = zeros >= ref_zeros
    else:
        note = (
            f"the file's kernels hold {params} weights, the model's prunable kernels {ref['total']}: "
            "compared as fractions"
        )
        preserved = params > 0 and zeros / params >= ref_zeros / max(1, ref["total"]) - 1e-9
    m = _Measured(
        params=params,
        nonzero=nonzero,
        sparsity=zeros / params if params else 0.0,
        preserved=bool(preserved),
        measured=measured,
        note=note,
    )
    return m, (_evaluate_tflite(model, interpreter, held_out) if held_out is not None else None)


# --------------------------------------------------------------------------- evaluating a file


def _evaluate_tflite(model: keras.Model, interpreter, held_out: HeldOut) -> dict:
    """Run the file's default signature on the held-out inputs (batched) and score its outputs with the model's
    compiled loss and metrics."""
    if len(model.outputs) != 1:
        return {"samples": 0, "note": "not evaluated: only single-output models are scored"}
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if not config:
        return {"samples": 0, "note": "not evaluated: the model is not compiled (no loss or metrics)"}
    n = _sample_count(model, held_out)
    runner = interpreter.get_signature_runner()
    names = list(runner.get_input_details())
    inputs = _head(held_out.x, n)
    arrays = inputs if isinstance(inputs, list) else [inputs]
    by_name = dict(zip([t.name for t in model.inputs], arrays))
    feeds = [by_name.get(name) for name in names]
    if len(names) != len(arrays) or any(f is None for f in feeds):
        feeds = arrays if len(names) == len(arrays) == 1 else None
    if feeds is None:
        return {"samples": 0, "note": f"not evaluated: the file's inputs {names} do not match the model's"}
    dtypes = {name: detail["dtype"] for name, detail in runner.get_input_details().items()}

    def run(batch):
        batch = batch if isinstance(batch, list) else [batch]
        result = runner(**{name: np.asarray(b, dtype=dtypes[name]) for name, b in zip(names, batch)})
        return next(iter(result.values()))

    y_pred = predict_batched(run, feeds if len(feeds) > 1 else feeds[0], held_out.batch_size)
    return {
        **score_predictions(config, y_pred, held_out.y[:n], held_out.batch_size),
        "samples": n,
        "how": "the file run by the LiteRT interpreter (batched), scored with the model's compiled loss and metrics",
    }
