"""Write the compressed model in the requested formats and check what each file really holds.

Public API::

    export_model(model, out_dir, formats) -> dict[format, ArtifactInfo]
    save_model_file(model, path)            # an optimizer-free .keras / .h5, written atomically
    FORMATS: dict[name, ExportFormat]       # keras, h5, tflite, tflite_int8

=============  ==================  =================================================================
format         file                what it is
=============  ==================  =================================================================
keras          model.keras         Keras 3 zip; compile config kept, optimizer *state* dropped
h5             model.h5            legacy Keras HDF5 (same content)
tflite         model.tflite        TFLite flatbuffer, float32 weights
tflite_int8    model_int8.tflite   TFLite with dynamic-range quantization (int8 weights, float I/O)
=============  ==================  =================================================================

Every file is written to a temporary name in `out_dir`, fsynced, then renamed over the final name
(``os.replace``), so a reader never sees half a file and an interrupted export leaves the old file intact.

After writing, each file is read back and its zeros counted, with stock tools only:

* keras / h5: ``keras.saving.load_model(file, safe_mode=True)`` without custom objects. `params` and
  `nonzero_params` cover every weight; `sparsity` is the zero fraction of the prunable kernels;
  `sparsity_preserved` means every weight's zero pattern is exactly the in-memory model's.
* tflite / tflite_int8: ``tf.lite.Interpreter``. The weight operand of every FULLY_CONNECTED, CONV_2D,
  CONV_3D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, CONV_3D_TRANSPOSE, BATCH_MATMUL and GATHER op whose weights
  are constants (looked through a DEQUANTIZE op) is read back with ``get_tensor``. `params` and
  `nonzero_params` cover those kernels only (biases are not counted; the converter may fold
  BatchNormalization into them). `sparsity_preserved` means the file holds at least as many zero kernel
  weights as the model's prunable kernels: int8 quantization is symmetric, so a zero stays zero, and small
  weights may round to zero too (more zeros, never fewer).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from workers.engine.errors import SpecError
from workers.engine.metrics import file_size, param_stats, sha256_file

__all__ = ["ArtifactInfo", "ExportFormat", "FORMATS", "export_model", "save_model_file"]


@dataclass(frozen=True)
class ArtifactInfo:
    format: str
    file: str  # file name inside out_dir
    bytes: int
    gzip_bytes: int
    sha256: str
    params: int  # weight elements counted in the written file (see `measured`)
    nonzero_params: int
    sparsity: float  # fraction of zeros in the prunable kernels, as read back from the file
    sparsity_preserved: bool
    measured: str  # what was counted, and how
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Measured:
    params: int
    nonzero: int
    sparsity: float
    preserved: bool
    measured: str
    note: str = ""


@dataclass(frozen=True)
class ExportFormat:
    file_name: str
    write: Callable[[keras.Model, Path], None]  # writes the artifact to this (temporary) path
    measure: Callable[[keras.Model, Path], _Measured]  # reads the written file back


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(final: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a temporary path next to `final` (same suffix), fsync it, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


# --------------------------------------------------------------------------- keras / h5


def _without_optimizer_state(model: keras.Model) -> keras.Model:
    """A copy with the same weights and compile config but an unbuilt optimizer (no moments in the file) and
    `steps_per_execution` 1: the engine trains 8 steps per call (model_io.STEPS_PER_EXECUTION), a speed setting
    of its own that must not change when the user's batch callbacks run."""
    optimizer = getattr(model, "optimizer", None)
    config = model.get_compile_config()
    built = optimizer is not None and getattr(optimizer, "built", False)
    if not built and config.get("steps_per_execution", 1) == 1:
        return model
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if config:
        clone.compile(**keras.saving.deserialize_keras_object({**config, "steps_per_execution": 1}))
    return clone


def save_model_file(model: keras.Model, path: str | Path) -> Path:
    """Save `model` (optimizer state dropped) to a .keras or .h5 path, atomically. Returns the path."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ValueError(f"save_model_file writes .keras or .h5 files, not {path.name!r}")
    copy = _without_optimizer_state(model)
    _atomic_write(path, lambda tmp: _save(copy, tmp))
    return path


def _save(model: keras.Model, tmp: Path) -> None:
    if tmp.suffix == ".h5":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keras.saving.save_model(model, tmp)  # the copy's optimizer is unbuilt: config, no state
    else:
        keras.saving.save_model(model, tmp)


def _write_keras_file(model: keras.Model, tmp: Path) -> None:
    _save(_without_optimizer_state(model), tmp)


def _measure_keras_file(model: keras.Model, path: Path) -> _Measured:
    reloaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    ours, theirs = model.get_weights(), reloaded.get_weights()
    stats = param_stats(reloaded)
    note = ""
    preserved = len(ours) == len(theirs) and all(
        a.shape == b.shape and np.array_equal(a == 0, b == 0) for a, b in zip(ours, theirs))
    if not preserved:
        note = "the reloaded weights do not have the in-memory model's zero pattern"
    return _Measured(params=stats["total"], nonzero=stats["nonzero"], sparsity=stats["sparsity"],
                     preserved=preserved, measured="all weights, reloaded with keras.saving.load_model(safe_mode=True)",
                     note=note)


# --------------------------------------------------------------------------- tflite

# TFLite builtin op -> index of its weight operand.
TFLITE_WEIGHT_OPERAND = {
    "FULLY_CONNECTED": 1,
    "CONV_2D": 1,
    "CONV_3D": 1,
    "DEPTHWISE_CONV_2D": 1,
    "TRANSPOSE_CONV": 1,
    "CONV_3D_TRANSPOSE": 1,
    "BATCH_MATMUL": 1,
    "GATHER": 0,
}


def _tflite_bytes(model: keras.Model, quantize: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints the SavedModel it exports
            return converter.convert()
    except Exception as e:
        fmt = "tflite_int8" if quantize else "tflite"
        text = " ".join(str(e).split())[:300]
        raise SpecError(f"export.formats includes '{fmt}' but model '{model.name}' cannot be converted to "
                        f"TFLite: {type(e).__name__}: {text}", field="export.formats") from None


def _writer(quantize: bool) -> Callable[[keras.Model, Path], None]:
    def write(model: keras.Model, tmp: Path) -> None:
        tmp.write_bytes(_tflite_bytes(model, quantize))

    return write


def tflite_interpreter(path_or_bytes: str | Path | bytes):
    """A tf.lite.Interpreter with tensors allocated (the deprecation warning of TF >= 2.20 silenced)."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(path_or_bytes, bytes):
            interpreter = tf.lite.Interpreter(model_content=path_or_bytes)
        else:
            interpreter = tf.lite.Interpreter(model_path=str(path_or_bytes))
    interpreter.allocate_tensors()
    return interpreter


def tflite_kernels(interpreter) -> dict[str, np.ndarray]:
    """{tensor name: values} of the constant weight operands of the interpreter's weight ops."""
    ops = interpreter._get_ops_details()  # the only reader of op operands tf.lite offers
    produced = {int(t): op for op in ops for t in op["outputs"]}
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    kernels: dict[str, np.ndarray] = {}
    seen: set[int] = set()
    for op in ops:
        operand = TFLITE_WEIGHT_OPERAND.get(op["op_name"])
        if operand is None or operand >= len(op["inputs"]):
            continue
        index = int(op["inputs"][operand])
        source = produced.get(index)
        if source is not None and source["op_name"] == "DEQUANTIZE":
            index = int(source["inputs"][0])
        elif source is not None:
            continue  # computed at run time, not a stored weight
        if index < 0 or index in seen:
            continue
        seen.add(index)
        try:
            kernels[details[index]["name"] or str(index)] = np.array(interpreter.get_tensor(index))
        except ValueError:  # pragma: no cover - tensor without a buffer
            continue
    return kernels


def _measure_tflite(model: keras.Model, path: Path) -> _Measured:
    kernels = tflite_kernels(tflite_interpreter(path))
    params = sum(int(k.size) for k in kernels.values())
    nonzero = sum(int(np.count_nonzero(k)) for k in kernels.values())
    zeros = params - nonzero
    ref = param_stats(model)["prunable"]
    ref_zeros = ref["total"] - ref["nonzero"]
    measured = (f"{len(kernels)} constant kernel tensor(s) of the weight ops, read with tf.lite.Interpreter; "
                "biases not counted")
    note = ""
    if params == ref["total"]:
        preserved = zeros >= ref_zeros
    else:
        note = (f"the file's kernels hold {params} weights, the model's prunable kernels {ref['total']}: "
                "compared as fractions")
        preserved = params > 0 and zeros / params >= ref_zeros / max(1, ref["total"]) - 1e-9
    return _Measured(params=params, nonzero=nonzero, sparsity=zeros / params if params else 0.0,
                     preserved=bool(preserved), measured=measured, note=note)


FORMATS: dict[str, ExportFormat] = {
    "keras": ExportFormat("model.keras", _write_keras_file, _measure_keras_file),
    "h5": ExportFormat("model.h5", _write_keras_file, _measure_keras_file),
    "tflite": ExportFormat("model.tflite", _writer(quantize=False), _measure_tflite),
    "tflite_int8": ExportFormat("model_int8.tflite", _writer(quantize=True), _measure_tflite),
}


# --------------------------------------------------------------------------- entry point


def export_model(model: keras.Model, out_dir: str | Path, formats) -> dict[str, ArtifactInfo]:
    """Write `model` to `out_dir` in each of `formats`, then read every file back and describe it."""
    out_dir = Path(out_dir)
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SpecError(f"export.formats {unknown} are not supported; allowed: {', '.join(FORMATS)}",
                        field="export.formats")
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, ArtifactInfo] = {}
    for name in dict.fromkeys(formats):
        fmt = FORMATS[name]
        final = out_dir / fmt.file_name
        _atomic_write(final, lambda tmp, fmt=fmt: fmt.write(model, tmp))
        m = fmt.measure(model, final)
        size = file_size(final)
        artifacts[name] = ArtifactInfo(
            format=name, file=fmt.file_name, bytes=size["bytes"], gzip_bytes=size["gzip_bytes"],
            sha256=sha256_file(final), params=m.params, nonzero_params=m.nonzero, sparsity=m.sparsity,
            sparsity_preserved=m.preserved, measured=m.measured, note=m.note,
        )
    return artifacts
