"""The local artifact store: atomic hashed writes, streamed reads, size limits, and a full disk named clearly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from workers.artifacts import open_artifacts
from workers.engine.errors import ResourceLimit


def temp_files(root):
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_put_output_copies_atomically_and_reports_size_and_sha256(tmp_path):
    store = open_artifacts(tmp_path / "store")
    src = tmp_path / "model.keras"
    src.write_bytes(os.urandom(300_000))
    info = store.put_output("job_1", "model.keras", src)
    assert info.bytes == 300_000 and info.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert b"".join(store.open_output("job_1", "model.keras", chunk_size=4096)) == src.read_bytes()
    assert store.output_path("job_1", "model.keras").read_bytes() == src.read_bytes()
    assert temp_files(tmp_path / "store") == []


def test_adopt_input_moves_the_upload_into_the_job(tmp_path):
    store = open_artifacts(tmp_path / "store")
    upload = tmp_path / "upload"
    upload.write_bytes(b"model bytes")
    dest = store.adopt_input("job_1", "model.keras", upload)
    assert not upload.exists() and dest == store.input_path("job_1", "model.keras")
    assert dest.read_bytes() == b"model bytes"
    assert store.job_ids() == {"job_1"}
    store.delete_job("job_1")
    assert store.job_ids() == set()


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "x" * 200, "..", "a..b"])
def test_names_that_are_not_plain_file_names_are_refused(tmp_path, name):
    store = open_artifacts(tmp_path / "store")
    src = tmp_path / "f"
    src.write_bytes(b"1")
    with pytest.raises(ValueError):
        store.put_output("job_1", name, src)
    assert store.output_path("job_1", name) is None
    with pytest.raises(FileNotFoundError):
        store.open_output("job_1", name)


def test_the_store_size_limit_refuses_an_artifact_and_names_the_limit(tmp_path):
    store = open_artifacts(tmp_path / "store", max_total_bytes=100_000)
    src = tmp_path / "big"
    src.write_bytes(b"\1" * 150_000)
    with pytest.raises(ResourceLimit) as e:
        store.put_output("job_1", "model.keras", src)
    assert "artifacts.max_total_bytes" in e.value.message and "model.keras" in e.value.message
    assert store.output_path("job_1", "model.keras") is None and temp_files(tmp_path / "store") == []


def test_a_full_disk_while_writing_an_artifact_is_a_resource_limit_and_leaves_no_temp_file(tmp_path):
    """RLIMIT_FSIZE in a child process makes the write fail exactly like a full disk (EFBIG)."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2_000_000))
    code = f"""
import json, resource, signal, sys
from pathlib import Path
from workers.artifacts import open_artifacts
from workers.engine.errors import ResourceLimit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, resource.RLIM_INFINITY))
store = open_artifacts({str(tmp_path / "store")!r})
try:
    store.put_output("job_1", "big.bin", Path({str(src)!r}))
except ResourceLimit as e:
    print(json.dumps(e.to_dict()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    error = json.loads(out.stdout.strip().splitlines()[-1])
    assert error["type"] == "resource_limit"
    assert "disk full while writing artifact big.bin" in error["message"]
    assert temp_files(tmp_path / "store") == []
    assert not (tmp_path / "store" / "job_1" / "outputs" / "big.bin").exists()
