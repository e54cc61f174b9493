"""Hostile files that are not Keras models at all, and hostile datasets (.npz)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from tests.hostile.base import OpenCanary, write_zip

# ---------------------------------------------------------------------------------------------------------------
# Files that are not models at all
# ---------------------------------------------------------------------------------------------------------------


def pickle_model(tmp_dir: Path, canary: Path) -> Path:
    """A pickle (e.g. a joblib/torch-style model) that opens the canary when unpickled."""
    path = Path(tmp_dir) / "model.pkl"
    path.write_bytes(pickle.dumps(OpenCanary(canary)))
    return path


def saved_model_dir(tmp_dir: Path, canary: Path) -> Path:
    """A TensorFlow SavedModel directory."""
    path = Path(tmp_dir) / "saved_model"
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    return path


def tflite_model(tmp_dir: Path, canary: Path) -> Path:
    """A TensorFlow Lite flatbuffer."""
    path = Path(tmp_dir) / "model.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Dataset (.npz) attacks
# ---------------------------------------------------------------------------------------------------------------


def npz_object_array(tmp_dir: Path, canary: Path) -> Path:
    """An object array: np.load(allow_pickle=True) unpickles it and opens the canary."""
    path = Path(tmp_dir) / "object.npz"
    x = np.empty(1, dtype=object)
    x[0] = OpenCanary(canary)
    np.savez(path, x=x, y=np.zeros(1, dtype="int64"))
    return path


def npz_parent_path_member(tmp_dir: Path, canary: Path) -> Path:
    """A member named ../...: extraction writes outside the folder."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, dtype="float32"))
    name = os.path.relpath(canary, Path(tmp_dir) / "extracted")
    return write_zip(Path(tmp_dir) / "traversal.npz", [("x.npy", buf.getvalue()), (name, buf.getvalue())])


def npz_bomb(tmp_dir: Path, canary: Path) -> Path:
    """np.savez_compressed of 64 MiB of zeros: ~1000x inflation."""
    path = Path(tmp_dir) / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(64 << 20, dtype="uint8"), y=np.zeros(4, dtype="int64"))
    return path


def npz_oversized_shape(tmp_dir: Path, canary: Path) -> Path:
    """A .npy header declaring 2**40 float64 elements over a few bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    return write_zip(Path(tmp_dir) / "oversized.npz", [("x.npy", buf.getvalue() + bytes(64))])


def npz_pickle_file(tmp_dir: Path, canary: Path) -> Path:
    """A pickle renamed to .npz."""
    path = Path(tmp_dir) / "data.npz"
    path.write_bytes(pickle.dumps(OpenCanary(canary)))
    return path
