"""Artifact stores: the local directory and the S3-compatible bucket (against a real moto S3 server started on
127.0.0.1): atomic hashed writes, streamed reads, size limits, a full disk or an unreachable server named clearly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.servers import MotoServer
from workers.artifacts import ArtifactStoreUnavailable, open_artifacts
from workers.errors import ResourceLimit, SecateursError
from workers.settings import Settings
from workers.store import StoreUnavailable

MiB = 2**20


@pytest.fixture(scope="module")
def moto():
    server = MotoServer().start()
    yield server
    server.stop()


def s3_settings(moto, data_dir, bucket: str = "secateurs-test", s3: dict | None = None, **artifacts) -> Settings:
    return Settings(
        data_dir=data_dir,
        artifacts={
            "url": f"s3://{bucket}/some/prefix",
            **artifacts,
            "s3": {
                "endpoint_url": moto.endpoint_url,
                "region": "us-east-1",
                "access_key_id": "testing",
                "secret_access_key": "testing",
                **(s3 or {}),
            },
        },
    )


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    """Each protocol test runs on both implementations; returns a factory taking max_total_bytes."""

    def make(max_total_bytes: int = 0):
        if request.param == "local":
            return open_artifacts(Settings(data_dir=tmp_path / "data", artifacts={"max_total_bytes": max_total_bytes}))
        bucket = f"b-{os.urandom(4).hex()}"  # a fresh bucket per test
        return open_artifacts(
            s3_settings(request.getfixturevalue("moto"), tmp_path / "data", bucket, max_total_bytes=max_total_bytes)
        )

    return make


def temp_files(root):
    return [p for p in root.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]


def random_file(path, size: int):
    path.write_bytes(os.urandom(size))
    return path


# -- the protocol, on both stores ---------------------------------------------------------------------------------


def test_put_output_stores_the_file_and_reports_size_and_sha256(any_store, tmp_path):
    store = any_store()
    src = random_file(tmp_path / "model.keras", 300_000)
    info = store.put_output("job_1", "model.keras", src)
    assert info.name == "model.keras"
    assert info.bytes == 300_000 and info.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert b"".join(store.open_output("job_1", "model.keras", chunk_size=4096)) == src.read_bytes()
    assert store.output_path("job_1", "model.keras").read_bytes() == src.read_bytes()
    assert src.exists(), "an output is copied, the job's file stays where it was"
    assert temp_files(tmp_path) == []


def test_adopt_input_takes_the_upload_and_input_path_gives_a_readable_local_file(any_store, tmp_path):
    store = any_store()
    upload = tmp_path / "upload"
    upload.write_bytes(b"model bytes")
    dest = store.adopt_input("job_1", "model.keras", upload)
    assert not upload.exists() and dest == store.input_path("job_1", "model.keras")
    assert dest.read_bytes() == b"model bytes"
    assert store.job_ids() == {"job_1"}
    store.delete_job("job_1")
    assert store.job_ids() == set()


def test_delete_outputs_keeps_the_inputs(any_store, tmp_path):
    store = any_store()
    store.adopt_input("job_1", "model.keras", random_file(tmp_path / "upload", 1000))
    store.put_output("job_1", "report.json", random_file(tmp_path / "out", 1000))
    store.delete_outputs("job_1")
    assert store.output_path("job_1", "report.json") is None
    assert store.input_path("job_1", "model.keras").stat().st_size == 1000 and store.job_ids() == {"job_1"}


def test_a_stale_attempt_writing_late_never_replaces_the_served_outputs_of_a_newer_attempt(any_store, tmp_path):
    """Attempt 1 lost its claim (its worker was cut off), attempt 2 finished the job; then attempt 1 uploads its
    outputs under the same names. The served bytes stay attempt 2's, which its recorded sha256 describes."""
    store = any_store()
    winner = store.put_output("job_1", "model.keras", random_file(tmp_path / "winner", 5000), attempt=2)
    stale_src = random_file(tmp_path / "stale", 7000)
    stale = store.put_output("job_1", "model.keras", stale_src, attempt=1)  # after the winner: a late upload
    assert stale.sha256 != winner.sha256
    served = b"".join(store.open_output("job_1", "model.keras"))
    assert hashlib.sha256(served).hexdigest() == winner.sha256 and len(served) == winner.bytes
    assert hashlib.sha256(store.output_path("job_1", "model.keras").read_bytes()).hexdigest() == winner.sha256
    assert store.published_attempt("job_1") == 2 and store.output_attempts("job_1") == [1, 2]
    assert b"".join(store.open_output("job_1", "model.keras", attempt=1)) == stale_src.read_bytes()
    store.delete_outputs("job_1", attempt=1)  # the stale attempt removes what it wrote
    assert store.output_attempts("job_1") == [2] and store.output_path("job_1", "model.keras", attempt=1) is None
    assert hashlib.sha256(b"".join(store.open_output("job_1", "model.keras"))).hexdigest() == winner.sha256
    store.delete_outputs("job_1")
    assert store.output_attempts("job_1") == [] and store.output_path("job_1", "model.keras") is None
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("attempt", [0, -1, True, "1"])
def test_an_invalid_attempt_number_is_refused(any_store, tmp_path, attempt):
    store = any_store()
    with pytest.raises(ValueError, match="attempt"):
        store.put_output("job_1", "model.keras", random_file(tmp_path / "f", 10), attempt=attempt)


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "x" * 200, "..", "a..b"])
def test_names_that_are_not_plain_file_names_are_refused(any_store, tmp_path, name):
    store = any_store()
    src = tmp_path / "f"
    src.write_bytes(b"1")
    with pytest.raises(ValueError):
        store.put_output("job_1", name, src)
    assert store.output_path("job_1", name) is None
    with pytest.raises(FileNotFoundError):
        store.open_output("job_1", name)


def test_a_missing_output_is_file_not_found_before_any_byte_is_read(any_store):
    store = any_store()
    assert store.output_path("job_1", "model.keras") is None
    with pytest.raises(FileNotFoundError):
        store.open_output("job_1", "model.keras")


def test_the_store_size_limit_refuses_an_artifact_and_names_the_limit(any_store, tmp_path):
    store = any_store(max_total_bytes=100_000)
    src = random_file(tmp_path / "big", 150_000)
    with pytest.raises(ResourceLimit) as e:
        store.put_output("job_1", "model.keras", src)
    assert "artifacts.max_total_bytes" in e.value.message and "model.keras" in e.value.message
    assert "100000 bytes" in e.value.message
    assert store.output_path("job_1", "model.keras") is None and temp_files(tmp_path) == []
    assert store.usage_bytes() == 0


def test_usage_age_and_writability_describe_the_store(any_store, tmp_path):
    store = any_store()
    assert store.usage_bytes() == 0 and store.job_age_seconds("job_1") is None
    store.put_output("job_1", "a.bin", random_file(tmp_path / "a", 1234))
    store.put_output("job_2", "b.bin", random_file(tmp_path / "b", 766))
    assert store.usage_bytes() == 2000
    assert 0 <= store.job_age_seconds("job_1") < 60
    store.check_writable()
    assert store.job_ids() == {"job_1", "job_2"} and store.usage_bytes() == 2000  # the probe leaves nothing


# -- local directory ----------------------------------------------------------------------------------------------


def test_a_full_disk_while_writing_an_artifact_is_a_resource_limit_and_leaves_no_temp_file(tmp_path):
    """RLIMIT_FSIZE in a child process makes the write fail exactly like a full disk (EFBIG)."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2_000_000))
    code = f"""
import json, resource, signal, sys
from pathlib import Path
from workers.artifacts import open_artifacts
from workers.errors import ResourceLimit
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
    assert error["code"] == "resource_limit"
    assert "disk full while writing artifact big.bin" in error["message"]
    assert temp_files(tmp_path / "store") == []
    assert not (tmp_path / "store" / "job_1" / "outputs" / "big.bin").exists()


# -- S3 -----------------------------------------------------------------------------------------------------------


def test_open_artifacts_picks_the_store_from_the_url_scheme(moto, tmp_path):
    from workers.artifacts.local import LocalArtifactStore
    from workers.artifacts.s3 import S3ArtifactStore

    assert isinstance(open_artifacts(Settings(data_dir=tmp_path)), LocalArtifactStore)
    assert isinstance(open_artifacts(Settings(artifacts={"url": f"file://{tmp_path}/a"})), LocalArtifactStore)
    s3 = open_artifacts(s3_settings(moto, tmp_path / "data", "picked"))
    assert isinstance(s3, S3ArtifactStore) and (s3.bucket, s3.prefix) == ("picked", "some/prefix/")
    with pytest.raises(ValueError, match="unsupported scheme 'ftp'"):
        open_artifacts(Settings(artifacts={"url": "ftp://host/x"}))


@pytest.mark.parametrize(
    "url, message",
    [("s3://", "no bucket name"), ("s3:///prefix", "no bucket name"), ("s3://b/a/../c", "'..' are not allowed")],
)
def test_a_malformed_s3_url_is_refused_naming_the_setting(url, message):
    from workers.artifacts.s3 import parse_s3_url

    with pytest.raises(ValueError, match=message) as e:
        parse_s3_url(url)
    assert "artifacts.url" in str(e.value)


def test_s3_url_prefixes_are_normalised():
    from workers.artifacts.s3 import parse_s3_url

    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket//a/b/") == ("bucket", "a/b/")


def test_a_large_file_goes_up_in_parts_with_its_sha256_as_metadata_and_comes_back_on_another_host(moto, tmp_path):
    """11 MiB with 5 MiB parts: a three-part upload. A second store with its own cache directory (another host)
    downloads the input and gets the same bytes; the keys sit under the configured prefix."""
    settings = s3_settings(moto, tmp_path / "api", "multipart", s3={"part_bytes": 5 * MiB})
    api = open_artifacts(settings)
    src = random_file(tmp_path / "upload", 11 * MiB)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    api.adopt_input("job_1", "data.npz", src)
    head = api.client.head_object(Bucket="multipart", Key="some/prefix/job_1/inputs/data.npz")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]
    assert head["Metadata"]["sha256"] == digest and head["ContentLength"] == 11 * MiB

    worker = open_artifacts(s3_settings(moto, tmp_path / "worker", "multipart", s3={"part_bytes": 5 * MiB}))
    local = worker.input_path("job_1", "data.npz")
    assert local.is_relative_to(tmp_path / "worker") and hashlib.sha256(local.read_bytes()).hexdigest() == digest
    info = worker.put_output("job_1", "model.keras", local)
    assert info.sha256 == digest and api.output_sha256("job_1", "model.keras") == digest
    assert hashlib.sha256(b"".join(api.open_output("job_1", "model.keras"))).hexdigest() == digest
    assert temp_files(tmp_path) == []


def test_a_corrupted_object_is_refused_when_downloaded_and_leaves_no_file(moto, tmp_path):
    store = open_artifacts(s3_settings(moto, tmp_path / "api", "corrupt"))
    store.adopt_input("job_1", "model.keras", random_file(tmp_path / "upload", 5000))
    key = "some/prefix/job_1/inputs/model.keras"
    metadata = store.client.head_object(Bucket="corrupt", Key=key)["Metadata"]
    store.client.put_object(Bucket="corrupt", Key=key, Body=b"tampered", Metadata=metadata)
    worker = open_artifacts(s3_settings(moto, tmp_path / "worker", "corrupt"))
    with pytest.raises(ArtifactStoreUnavailable, match=f"s3://corrupt/{key} is corrupt: its sha256"):
        worker.input_path("job_1", "model.keras")
    assert not any((tmp_path / "worker").rglob("model.keras")) and temp_files(tmp_path) == []


def test_delete_job_removes_objects_cache_and_unfinished_multipart_uploads(moto, tmp_path):
    store = open_artifacts(s3_settings(moto, tmp_path / "data", "deletes"))
    store.adopt_input("job_1", "model.keras", random_file(tmp_path / "upload", 1000))
    store.put_output("job_1", "model.keras", random_file(tmp_path / "out", 1000))
    store.put_output("job_2", "model.keras", random_file(tmp_path / "out2", 1000))
    store.client.create_multipart_upload(Bucket="deletes", Key="some/prefix/job_1/outputs/half.bin")  # a crash
    store.delete_job("job_1")
    assert store.job_ids() == {"job_2"}
    assert store.client.list_multipart_uploads(Bucket="deletes").get("Uploads", []) == []
    assert not (tmp_path / "data" / "cache" / "job_1").exists()


def test_input_cache_entries_of_other_jobs_expire(moto, tmp_path):
    store = open_artifacts(s3_settings(moto, tmp_path / "data", "cache"))
    store.cache_seconds = 60
    store.adopt_input("job_1", "model.keras", random_file(tmp_path / "u1", 100))
    old = time.time() - 120
    os.utime(tmp_path / "data" / "cache" / "job_1", (old, old))
    store._next_eviction = 0.0
    store.adopt_input("job_2", "model.keras", random_file(tmp_path / "u2", 100))
    assert sorted(p.name for p in (tmp_path / "data" / "cache").iterdir()) == ["job_2"]
    assert store.input_path("job_1", "model.keras").stat().st_size == 100  # downloaded again on demand


def test_an_unreachable_s3_server_is_named_and_answers_as_unavailable(tmp_path):
    from tests.e2e.servers import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        data_dir=tmp_path,
        artifacts={
            "url": "s3://nowhere/p",
            "s3": {"endpoint_url": closed, "region": "us-east-1", "access_key_id": "x", "secret_access_key": "y"},
        },
    )
    started = time.monotonic()
    with pytest.raises(ArtifactStoreUnavailable) as e:
        open_artifacts(settings)
    assert time.monotonic() - started < 20
    assert "s3://nowhere/" in str(e.value) and closed in str(e.value)
    # a StoreUnavailable: the API answers 503 (retry later); the runner names it where it fails a job
    assert isinstance(e.value, StoreUnavailable) and e.value.code == "store_unavailable"
    assert isinstance(e.value, SecateursError) and not isinstance(e.value, OSError)
