"""workers/engine/inspection/hdf5.py: HDF5 links are examined without being followed; Keras writes every object once."""

from __future__ import annotations

import io
import time
import zipfile

import h5py
import pytest

from tests import hostile
from tests.hostile import write_zip
from workers.engine.errors import ModelRejected
from workers.engine.inspection import inspect_model_file


def test_soft_link_even_to_an_object_inside_the_file_is_refused(saved, tmp_path):
    """Keras writes no links: a soft link is refused wherever it points (its target is named when short)."""
    path = tmp_path / "soft.h5"
    path.write_bytes(saved["sequential", "h5"][0].read_bytes())
    with h5py.File(path, "r+") as f:
        f["alias"] = h5py.SoftLink("/model_weights/fc1")
    with pytest.raises(ModelRejected, match=r"HDF5 soft link '/alias' \(to '/model_weights/fc1'\) is not accepted"):
        inspect_model_file(path)


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_a_second_hard_link_to_a_dataset_is_refused(saved, ext, tmp_path):
    path = tmp_path / f"alias.{ext}"
    src = saved["sequential", ext][0]
    if ext == "h5":
        path.write_bytes(src.read_bytes())
        with h5py.File(path, "r+") as f:
            f["alias"] = f["model_weights/fc1/seq/fc1/kernel"]
        expected = "'/model_weights/fc1/seq/fc1/kernel' is a second hard link to '/alias'"
    else:
        with zipfile.ZipFile(src) as zf:
            members = {info.filename: zf.read(info) for info in zf.infolist()}
        buf = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buf, "r+") as f:
            f["alias"] = f["layers/dense/vars/0"]
        members["model.weights.h5"] = buf.getvalue()
        write_zip(path, list(members.items()))
        expected = "'/layers/dense/vars/0' is a second hard link to '/alias'"
    with pytest.raises(ModelRejected) as info:
        inspect_model_file(path)
    assert expected in info.value.message


def test_a_link_maze_is_refused_without_walking_it(tmp_path, canary):
    """A self-linked group plus soft links 100,000 levels deep into it: refused from the link records alone, in
    well under a second (following the targets took 180 s per inspection)."""
    path = hostile.keras_weights_link_maze(tmp_path, canary)
    started = time.perf_counter()
    with pytest.raises(ModelRejected, match="HDF5 soft link '/maze_0' \\(to a 500019-byte target"):
        inspect_model_file(path)
    assert time.perf_counter() - started < 1.0
