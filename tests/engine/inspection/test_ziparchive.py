"""workers/engine/inspection/ziparchive.py: zip directories are judged before members are read."""

from __future__ import annotations

import zipfile

import pytest

from tests.hostile import write_zip
from workers.engine.errors import ModelRejected
from workers.engine.inspection import InspectLimits, inspect_model_file


def test_compression_ratio_limit_applies_to_large_members_only(saved, tmp_path):
    src, _ = saved["sequential", "keras"]
    limits = InspectLimits(max_compression_ratio=1.0)
    with zipfile.ZipFile(src) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    small = write_zip(tmp_path / "small.keras", members, compression=zipfile.ZIP_DEFLATED)
    assert inspect_model_file(small, limits).format == "keras"  # members under 1 MiB are not judged by ratio
    padded = members + [("padding.bin", bytes(2 << 20))]
    with pytest.raises(ModelRejected, match="compression ratio"):
        inspect_model_file(write_zip(tmp_path / "big.keras", padded, zipfile.ZIP_DEFLATED), limits)


def test_truncated_archive_is_refused(saved, tmp_path):
    data = saved["sequential", "keras"][0].read_bytes()
    path = tmp_path / "cut.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelRejected, match="damaged zip archive"):
        inspect_model_file(path)
