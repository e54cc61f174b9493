"""workers/engine/inspection/npz.py: dataset archives are checked from their zip directory and .npy headers alone."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.hostile import DATASET_ATTACKS, write_zip
from workers.engine.errors import DataError
from workers.engine.inspection import InspectLimits, inspect_npz


@pytest.mark.parametrize("name", sorted(DATASET_ATTACKS))
def test_hostile_dataset_is_refused_naming_the_offender(name, tmp_path, canary):
    generate, error, fragment = DATASET_ATTACKS[name]
    canary.parent.mkdir()
    path = generate(tmp_path, canary)
    with pytest.raises(error) as info:
        inspect_npz(path)
    assert fragment in info.value.message
    assert not canary.exists()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_benign_npz_reports_shapes_and_dtypes_without_loading(save, tmp_path, mnist):
    x_train, y_train, _, _ = mnist
    path = tmp_path / "data.npz"
    save(
        path,
        x_train=x_train[:100],
        y_train=y_train[:100],
        mask=np.ones(3, dtype=bool),
        half=np.zeros((2, 2), dtype="float16"),
    )
    arrays = inspect_npz(path)
    assert arrays == {
        "x_train": ((100, 28, 28), np.dtype("float32")),
        "y_train": ((100,), np.dtype("int64")),
        "mask": ((3,), np.dtype(bool)),
        "half": ((2, 2), np.dtype("float16")),
    }
    with np.load(path, allow_pickle=False) as loaded:
        assert {k: (v.shape, v.dtype) for k, v in loaded.items()} == arrays


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.array(["a", "b"]), "has dtype <U1"),
        (np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), "has dtype"),
        (np.zeros(2, dtype="complex64"), "has dtype complex64"),
        (np.zeros(2, dtype="longdouble"), "has dtype float128"),
        (np.zeros(2, dtype="datetime64[s]"), "has dtype datetime64[s]"),
    ],
)
def test_npz_non_numeric_dtypes_are_refused(array, fragment, tmp_path):
    np.savez(tmp_path / "d.npz", x=array)
    with pytest.raises(DataError) as info:
        inspect_npz(tmp_path / "d.npz")
    assert "array 'x'" in info.value.message and fragment in info.value.message


@pytest.mark.parametrize(
    "member, fragment",
    [
        ("dir/x.npy", "not a plain NAME.npy"),
        ("x.pkl", "not a plain NAME.npy"),
        ("C:\\x.npy", "an absolute path"),
    ],
)
def test_npz_member_names_must_be_plain(member, fragment, tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros(2))
    with pytest.raises(DataError, match=fragment):
        inspect_npz(write_zip(tmp_path / "d.npz", [(member, buf.getvalue())]))


def test_npz_header_must_match_member_size(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros(10, dtype="float32"))
    path = write_zip(tmp_path / "d.npz", [("x.npy", buf.getvalue()[:-8])])
    with pytest.raises(DataError, match="array 'x' declares shape \\(10,\\) float32"):
        inspect_npz(path)


def test_npz_negative_dimensions_are_refused(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (-1, -1)})
    path = write_zip(tmp_path / "d.npz", [("x.npy", buf.getvalue() + bytes(8))])
    with pytest.raises(DataError, match="array 'x' declares shape \\(-1, -1\\)"):
        inspect_npz(path)


def test_npz_member_count_limit(tmp_path):
    np.savez(tmp_path / "d.npz", **{f"a{i}": np.zeros(1) for i in range(5)})
    with pytest.raises(DataError, match="5 members; the limit is 4 \\(max_members\\)"):
        inspect_npz(tmp_path / "d.npz", InspectLimits(max_members=4))
