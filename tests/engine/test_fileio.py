"""workers/engine/fileio.py: a file is replaced whole or not at all, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from workers.engine.fileio import atomic_write


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    final = tmp_path / "model.tflite"
    final.write_bytes(b"previous")

    def crash(tmp):
        tmp.write_bytes(b"half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(final, crash)
    assert final.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_a_write_replaces_the_file_through_a_hidden_temporary_that_keeps_the_suffix(tmp_path):
    final = tmp_path / "out" / "model.keras"  # the directory is created
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not final.exists()  # nothing visible under the final name until the rename
        tmp.write_bytes(b"new")

    atomic_write(final, write)
    assert final.read_bytes() == b"new"
    assert seen[0].parent == final.parent and seen[0].name.startswith(".model.") and seen[0].suffix == ".keras"
    assert [p.name for p in final.parent.iterdir()] == ["model.keras"]


def test_a_failed_check_after_writing_leaves_neither_file_nor_temporary(tmp_path):
    final = tmp_path / "download.bin"

    def write_then_refuse(tmp):
        tmp.write_bytes(b"corrupt")
        raise ValueError("sha256 mismatch")

    with pytest.raises(ValueError, match="sha256 mismatch"):
        atomic_write(final, write_then_refuse)
    assert list(tmp_path.iterdir()) == []
