"""Write the compressed model in the requested formats, check what each file really holds, and evaluate each file.

Public API::

    export_model(model, out_dir, formats, *, calibration=None, held_out=None) -> dict[format, ExportedFile]
    HeldOut(x, y, batch_size=256, max_samples=10_000, min_samples=256, mac_budget=2e11)  # from export_records
    save_model_file(model, path)            # .keras / .h5 with a fresh optimizer, written atomically
    FORMATS: dict[name, ExportFormat]       # keras, h5, tflite, tflite_int8

This module writes and reads back the Keras files (.keras, .h5); the TFLite files are converted, read back and run
by export_tflite.py (reading a .tflite back: `tflite.tflite_interpreter`, `tflite.tflite_kernels`).

=============  ==================  =================================================================
format         file                what it is
=============  ==================  =================================================================
keras          model.keras         Keras 3 zip; compile config kept, a fresh optimizer (no trained
                                   state; its zero slots take no room): loads without a warning
h5             model.h5            legacy Keras HDF5 (same content, not compressed)
tflite         model.tflite        TFLite flatbuffer, float32; kernels with zeros stored in TFLite's
                                   sparse format (``Optimize.EXPERIMENTAL_SPARSITY``, read through DENSIFY)
tflite_int8    model_int8.tflite   with `calibration` (training samples): full-integer quantization,
                                   every op int8, float32 input and output (a drop-in for model.tflite),
                                   calibrated on CALIBRATION_SAMPLES (export_tflite) samples; without:
                                   dynamic-range quantization (int8 weights, float activations), said in
                                   `note`
=============  ==================  =================================================================

Every file is written to a temporary name in `out_dir`, fsynced, then renamed over the final name
(`fileio.atomic_write`), so a reader never sees half a file and an interrupted export leaves the old file intact.

After writing, each file is read back and its zeros counted, with stock tools only:

* keras / h5: ``keras.saving.load_model(file, safe_mode=True)`` without custom objects. `params` and
  `nonzero_params` cover every weight; `sparsity` is the zero fraction of the prunable kernels;
  `sparsity_preserved` means every weight's zero pattern is exactly the in-memory model's.
* tflite / tflite_int8: the LiteRT interpreter (``ai_edge_litert``). The weight operand of every
  FULLY_CONNECTED, CONV_2D, CONV_3D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, CONV_3D_TRANSPOSE, BATCH_MATMUL and
  GATHER op whose weights are constants (looked through DEQUANTIZE and DENSIFY ops) is read back. `params` and
  `nonzero_params` cover those kernels only (biases are not counted; the converter may fold
  BatchNormalization into them). `sparsity_preserved` means the file holds at least as many zero kernel
  weights as the model's prunable kernels: int8 quantization is symmetric, so a zero stays zero, and small
  weights may round to zero too (more zeros, never fewer).

With `held_out`, every file is then *run* on the held-out samples and scored with the in-memory model's compiled
loss and metrics; the result is the artifact's `evaluation` ({metric: value, "samples": n, "how": ...}). Keras
files are reloaded with their compile config and evaluated with ``evaluate()``; TFLite files run batched through
the interpreter's default signature. The sample count is bounded by a MAC budget (`HeldOut`), so a big model's
evaluation stays a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from workers.engine.counting import param_stats
from workers.engine.errors import SpecError
from workers.engine.export_records import HeldOut, _head, _Measured, _sample_count, _Written
from workers.engine.export_tflite import _measure_tflite, _writer
from workers.engine.fileio import atomic_write
from workers.engine.metrics import file_size, predict_batched, score_predictions, sha256_file

__all__ = [
    "ExportedFile",
    "ExportFormat",
    "FORMATS",
    "HeldOut",
    "export_model",
    "save_model_file",
]


@dataclass(frozen=True)
class ExportedFile:
    """One exported model file and what was measured in it (not a job's stored artifact: workers.jobs.ArtifactInfo)."""

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
    encoding: str = ""  # how the weights are stored (tflite: dense / sparse, float32 / int8)
    evaluation: dict | None = None  # the held-out metrics of this file, computed by running it (see HeldOut)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExportFormat:
    file_name: str
    # writes the artifact to this (temporary) path, given calibration inputs (or None)
    write: Callable[[keras.Model, Path, Any], _Written]
    # reads the written file back: what it holds, and its held-out metrics when given held-out data
    measure: Callable[[keras.Model, Path, "HeldOut | None"], tuple[_Measured, dict | None]]


# --------------------------------------------------------------------------- keras / h5


def _fresh_optimizer(model: keras.Model, build: bool):
    """A new optimizer of the model's class and config, no state; built for the model's trainable variables."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not model.get_compile_config():
        return None
    fresh = type(optimizer).from_config(optimizer.get_config())
    if build:
        fresh.build(model.trainable_variables)
    return fresh


@contextlib.contextmanager
def _optimizer_swapped(model: keras.Model, optimizer):
    """`model.optimizer` is `optimizer` inside the block and the caller's own again after it."""
    if optimizer is None:
        yield
        return
    own = model.optimizer
    model.optimizer = optimizer
    try:
        yield
    finally:
        model.optimizer = own


def _h5_copy(model: keras.Model) -> keras.Model:
    """A copy with the same weights and compile config, an unbuilt fresh optimizer (the legacy loader builds it
    without complaint) and `steps_per_execution` 1."""
    config = model.get_compile_config()
    if getattr(model, "optimizer", None) is None or not config:
        return model
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(**keras.saving.deserialize_keras_object({**config, "steps_per_execution": 1}))
    return clone


def save_model_file(model: keras.Model, path: str | Path) -> Path:
    """Save `model` with its compile config and a fresh optimizer (no trained state) to a .keras or .h5 path,
    atomically; `steps_per_execution` is written as 1. Returns the path.

    .keras: Keras builds the optimizer of a compiled model when it loads the file and refuses (with a warning)
    saved optimizer state whose variable count differs, so the file carries a fresh *built* optimizer whose
    zero slots are HDF5 datasets with no data written: they take no room. The model is saved as it is, with a
    fresh optimizer swapped in for the save (no copy of the model: a copy of a big functional model costs
    seconds); `config.json` and `model.weights.h5` are then edited in the zip.
    """
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ValueError(f"save_model_file writes .keras or .h5 files, not {path.name!r}")
    if path.suffix == ".h5":
        copy = _h5_copy(model)
        atomic_write(path, lambda tmp: _save_h5(copy, tmp))
    else:
        atomic_write(path, lambda tmp: _save_keras(model, tmp))
    return path


def _save_h5(model: keras.Model, tmp: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is legacy"
        keras.saving.save_model(model, tmp)


def _save_keras(model: keras.Model, tmp: Path) -> None:
    if _fresh_optimizer(model, build=False) is None:  # not compiled: no optimizer in the file
        keras.saving.save_model(model, tmp)
        _rewrite_zip(tmp, _one_step_per_execution)
        return
    built = _fresh_optimizer(model, build=True)
    with _optimizer_swapped(model, _fresh_optimizer(model, build=False)):
        keras.saving.save_model(model, tmp)  # the unbuilt optimizer: its step and learning rate only
    _rewrite_zip(tmp, _one_step_per_execution, lambda h5: _store_optimizer(h5, built))


def _store_optimizer(h5, optimizer) -> bool:
    """Write the fresh built `optimizer`'s variables into the weights file in place of the unbuilt one's: an
    all-zero slot is an HDF5 dataset with no chunk written (it reads as zeros and takes no room; Keras' loader
    accepts it below its 4 GiB expansion floor). Returns False when the file has no optimizer group."""
    if "optimizer" not in h5 or "vars" not in h5["optimizer"]:
        return False
    group = h5["optimizer"]["vars"]
    for key in list(group.keys()):
        del group[key]
    for i, variable in enumerate(optimizer.variables):
        value = np.asarray(variable.numpy())
        if value.ndim and value.size and value.nbytes < (1 << 31) and not value.any():
            group.create_dataset(str(i), shape=value.shape, dtype=value.dtype, chunks=True, fillvalue=0)
        else:
            group.create_dataset(str(i), data=value)
    return True


def _one_step_per_execution(config_json: bytes) -> bytes:
    """The engine trains 8 steps per call (model_io.STEPS_PER_EXECUTION), a speed setting of its own that must not
    change when the user's batch callbacks run: the file says 1."""
    config = json.loads(config_json)
    compile_config = config.get("compile_config")
    if isinstance(compile_config, dict) and compile_config.get("steps_per_execution", 1) != 1:
        compile_config["steps_per_execution"] = 1
        return json.dumps(config).encode()
    return config_json


def _rewrite_zip(path: Path, edit_config: Callable[[bytes], bytes], edit_weights=None) -> None:
    """Rewrite the .keras zip with `config.json` passed through `edit_config` and `model.weights.h5` opened
    read-write as `edit_weights(h5py.File)`; members stay uncompressed, as Keras writes them."""
    import h5py

    packed = path.with_name(path.name + ".rewrite")
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                if info.filename == "config.json":
                    dst.writestr("config.json", edit_config(src.read(info)))
                elif info.filename == "model.weights.h5" and edit_weights is not None:
                    buffer = io.BytesIO(src.read(info))
                    with h5py.File(buffer, "r+") as h5:
                        if not edit_weights(h5):
                            raise RuntimeError(f"{path.name}: no optimizer variables in model.weights.h5")
                    with dst.open("model.weights.h5", "w", force_zip64=True) as fout:
                        fout.write(buffer.getbuffer())
                else:
                    with (
                        src.open(info) as fin,
                        dst.open(info.filename, "w", force_zip64=info.file_size > (1 << 31)) as fout,
                    ):
                        shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(packed, path)
    finally:
        packed.unlink(missing_ok=True)


def _write_keras_file(model: keras.Model, tmp: Path, calibration=None) -> _Written:
    if tmp.suffix == ".h5":
        _save_h5(_h5_copy(model), tmp)
    else:
        _save_keras(model, tmp)
    return _Written(encoding="float32")


def _archive_compile_config(path: Path) -> dict | None:
    """The compile config (loss, metrics, ...) a .keras archive's config.json stores; None when it has none."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    compile_config = config.get("compile_config") if isinstance(config, dict) else None
    return compile_config if isinstance(compile_config, dict) and compile_config else None


def _measure_keras_file(model: keras.Model, path: Path, held_out: HeldOut | None) -> tuple[_Measured, dict | None]:
    # A .keras file is reloaded uncompiled and scored with the loss and metrics of its own config.json: compiling
    # it would also build its optimizer (two slots per weight for Adam), which scoring does not use and which
    # cost a ResNet50 0.4 s (docs/BENCHMARKS.md part 5d). A legacy .h5 file keeps its compile config in
    # HDF5 attributes: it is reloaded compiled.
    archive = path.suffix == ".keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy .h5: the "compiled metrics not built" notice
        reloaded = keras.saving.load_model(path, compile=held_out is not None and not archive, safe_mode=True)
    ours, theirs = model.get_weights(), reloaded.get_weights()
    stats = param_stats(reloaded)
    note = ""
    preserved = len(ours) == len(theirs) and all(
        a.shape == b.shape and np.array_equal(a == 0, b == 0) for a, b in zip(ours, theirs)
    )
    if not preserved:
        note = "the reloaded weights do not have the in-memory model's zero pattern"
    measured = _Measured(
        params=stats["total"],
        nonzero=stats["nonzero"],
        sparsity=stats["sparsity"],
        preserved=preserved,
        note=note,
        measured="all weights, reloaded with keras.saving.load_model(safe_mode=True)",
    )
    evaluation = None
    if held_out is not None:
        if archive:
            config = _archive_compile_config(path)
        else:
            config = reloaded.get_compile_config() if reloaded.compiled else None
        if len(reloaded.outputs) != 1:
            evaluation = {"samples": 0, "note": "not evaluated: only single-output models are scored"}
        elif not config:
            evaluation = {"samples": 0, "note": "not evaluated: the file holds no compile config (loss, metrics)"}
        else:
            n = _sample_count(model, held_out)
            y_pred = predict_batched(
                lambda batch: reloaded(batch, training=False), _head(held_out.x, n), held_out.batch_size
            )
            evaluation = {
                **score_predictions(config, y_pred, held_out.y[:n], held_out.batch_size),
                "samples": n,
                "how": "the file reloaded, run eagerly (batched), scored with the loss and metrics of its "
                "compile config",
            }
    return measured, evaluation


FORMATS: dict[str, ExportFormat] = {
    "keras": ExportFormat("model.keras", _write_keras_file, _measure_keras_file),
    "h5": ExportFormat("model.h5", _write_keras_file, _measure_keras_file),
    "tflite": ExportFormat("model.tflite", _writer("tflite"), _measure_tflite),
    "tflite_int8": ExportFormat("model_int8.tflite", _writer("tflite_int8"), _measure_tflite),
}


# --------------------------------------------------------------------------- entry point


def export_model(
    model: keras.Model, out_dir: str | Path, formats, *, calibration=None, held_out: HeldOut | None = None
) -> dict[str, ExportedFile]:
    """Write `model` to `out_dir` in each of `formats`, then read every file back and describe it.

    `calibration`: training inputs (an array, or a list per model input); tflite_int8 then calibrates
    full-integer quantization on the first `export_tflite.CALIBRATION_SAMPLES` of them. `held_out`: every file is
    run on these samples and its metrics recorded as the artifact's `evaluation` (None: not evaluated).
    """
    out_dir = Path(out_dir)
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SpecError(
            f"export.formats {unknown} are not supported; allowed: {', '.join(FORMATS)}", field="export.formats"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, ExportedFile] = {}
    for name in dict.fromkeys(formats):
        fmt = FORMATS[name]
        final = out_dir / fmt.file_name
        written: list[_Written] = []
        atomic_write(final, lambda tmp, fmt=fmt, written=written: written.append(fmt.write(model, tmp, calibration)))
        m, evaluation = fmt.measure(model, final, held_out)
        size = file_size(final)
        artifacts[name] = ExportedFile(
            format=name,
            file=fmt.file_name,
            bytes=size["bytes"],
            gzip_bytes=size["gzip_bytes"],
            sha256=sha256_file(final),
            params=m.params,
            nonzero_params=m.nonzero,
            sparsity=m.sparsity,
            sparsity_preserved=m.preserved,
            measured=m.measured,
            note="; ".join(n for n in (written[0].note, m.note) if n),
            encoding=written[0].encoding,
            evaluation=evaluation,
        )
    return artifacts
