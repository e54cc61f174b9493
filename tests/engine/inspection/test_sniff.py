"""workers/engine/inspection/sniff.py: a file that is not a Keras model is refused naming what it looks like."""

from __future__ import annotations

import pytest

from workers.engine.errors import UnsupportedFile
from workers.engine.inspection import inspect_model_file


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "is empty"),
        (b"\x00\x01garbage bytes here", "an unrecognised file (first bytes 00 01 67"),
        (b'{"class_name": "Sequential"}', "a JSON document"),
        (b"\x93NUMPY\x01\x00", "a NumPy .npy array"),
        (b"\x1f\x8b\x08\x00", "gzip-compressed data"),
    ],
)
def test_unsupported_files_are_named(content, fragment, tmp_path):
    path = tmp_path / "upload.bin"
    path.write_bytes(content)
    with pytest.raises(UnsupportedFile) as info:
        inspect_model_file(path)
    assert fragment in info.value.message
    assert info.value.code == "unsupported_file"
