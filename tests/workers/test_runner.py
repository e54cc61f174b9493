"""run_job end to end on real MNIST in a real sandboxed child: success, failures named, limits, cancel, release."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import time

import numpy as np
import pytest

from tests.workers.jobfiles import LONG_SPEC, QUICK_SPEC
from workers.jobs import EventKind, InputFile, JobStatus, NewJob, worker_identity
from workers.runner import RunContext, run_job
from workers.settings import Settings
from workers.spec import JobSpec


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_ctx(tmp_path, **overrides) -> RunContext:
    groups = {"worker": {"heartbeat_interval": 0.5, "heartbeat_timeout": 3.0, "poll_interval": 0.1}}
    for key, value in overrides.items():
        group, _, field = key.partition("__")
        groups.setdefault(group, {})[field] = value
    return RunContext.from_settings(Settings(data_dir=tmp_path / "data", **groups), worker_identity("test"))


def submit(ctx: RunContext, tmp_path, model, data=None, spec: dict = QUICK_SPEC, webhook_url=None) -> str:
    inputs = {"model": InputFile("model", "model.keras", model.name, model.stat().st_size, sha256(model))}
    if data is not None:
        inputs["data"] = InputFile("data", "data.npz", data.name, data.stat().st_size, sha256(data))
    new = NewJob(tenant="t", spec=JobSpec.model_validate(spec).model_dump(mode="json"), inputs=inputs,
                 webhook_url=webhook_url)
    for role, src in (("model.keras", model), ("data.npz", data)):
        if src is not None:
            copy = tmp_path / f"upload-{new.id}-{role}"
            shutil.copy(src, copy)
            ctx.artifacts.adopt_input(new.id, role, copy)
    job, _ = ctx.store.create_job(new, max_attempts=ctx.settings.worker.max_attempts)
    return job.id


def outputs_dir(ctx, job_id):
    return ctx.settings.artifacts_root / job_id / "outputs"


@pytest.mark.slow
def test_a_job_runs_in_a_child_publishes_hashed_artifacts_and_writes_nothing_outside_the_data_dir(
        tmp_path, job_files, monkeypatch):
    import keras

    ctx = make_ctx(tmp_path)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    # the worker's home (Keras creates ~/.keras/keras.json there when it is missing) and temp directory: the job
    # process must leave both alone, and create nothing next to the data directory either
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    assert run_job(job_id, ctx) is JobStatus.SUCCEEDED
    assert list(home.rglob("*")) == [] and list(tmp.rglob("*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "home", "tmp"]
    job = ctx.store.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1 and job.error is None
    names = {a.name for a in job.artifacts}
    assert {"model.keras", "manifest.json"} <= names
    for art in job.artifacts:
        path = outputs_dir(ctx, job_id) / art.name
        assert art.sha256 == sha256(path) and art.bytes == path.stat().st_size
    manifest_file = json.loads((outputs_dir(ctx, job_id) / "manifest.json").read_text())
    assert job.manifest == manifest_file
    assert job.manifest["summary"]["sparsity_after"] == pytest.approx(0.5, abs=0.02)
    model = keras.saving.load_model(outputs_dir(ctx, job_id) / "model.keras")
    kernel = model.get_layer("hidden").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)
    progress = [e.data for e in ctx.store.events(job_id) if e.kind is EventKind.PROGRESS]
    assert any(p.get("phase") == "prune" and p.get("epoch") == 1 for p in progress)
    assert progress[-1]["phase"] == "done"
    assert not list(ctx.settings.scratch_dir.iterdir())  # the attempt's scratch directory is gone
    assert run_job(job_id, ctx) is None  # safe to run twice: the claim refuses a finished job


@pytest.mark.slow
def test_a_dataset_that_does_not_fit_fails_with_the_array_named(tmp_path, job_files):
    ctx = make_ctx(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((64, 7), "float32"), y_train=np.zeros(64, "int64"))
    job_id = submit(ctx, tmp_path, job_files.model, bad)
    assert run_job(job_id, ctx) is JobStatus.FAILED
    job = ctx.store.get_job(job_id)
    assert job.error["type"] == "data_error" and "x_train" in job.error["message"]
    assert job.artifacts == [] and not outputs_dir(ctx, job_id).exists()


@pytest.mark.slow
def test_a_write_over_the_file_size_limit_fails_the_job_and_leaves_no_files(tmp_path, job_files):
    ctx = make_ctx(tmp_path, limits__job_file_bytes=50_000)  # the model alone is ~200 kB
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    assert run_job(job_id, ctx) is JobStatus.FAILED
    error = ctx.store.get_job(job_id).error
    assert error["type"] == "resource_limit"
    assert "limits.job_file_bytes" in error["message"] and "50000" in error["message"]
    assert not outputs_dir(ctx, job_id).exists()
    assert not list(ctx.settings.scratch_dir.iterdir())


@pytest.mark.slow
def test_a_full_artifact_store_fails_the_job_and_removes_partial_outputs(tmp_path, job_files):
    inputs = job_files.model.stat().st_size + job_files.data.stat().st_size
    ctx = make_ctx(tmp_path, artifacts__max_total_bytes=inputs + 10_000)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    assert run_job(job_id, ctx) is JobStatus.FAILED
    error = ctx.store.get_job(job_id).error
    assert error["type"] == "resource_limit"
    assert "artifacts.max_total_bytes" in error["message"] and "artifact store full" in error["message"]
    assert not outputs_dir(ctx, job_id).exists()
    leftovers = [p for p in (ctx.settings.artifacts_root / job_id).rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def _run_in_thread(job_id, ctx):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", run_job(job_id, ctx)))
    thread.start()
    return thread, result


def _wait_for_training(ctx, job_id, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.kind is EventKind.PROGRESS and e.data.get("step") for e in ctx.store.events(job_id)):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not start training in {timeout} s")


@pytest.mark.slow
def test_cancel_while_running_stops_the_child_at_a_batch_boundary(tmp_path, job_files):
    ctx = make_ctx(tmp_path)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data, spec=LONG_SPEC)
    thread, result = _run_in_thread(job_id, ctx)
    _wait_for_training(ctx, job_id)
    asked = time.monotonic()
    assert ctx.store.request_cancel(job_id).cancel_requested
    thread.join(60)
    assert result["status"] is JobStatus.CANCELLED
    assert time.monotonic() - asked < 15
    job = ctx.store.get_job(job_id)
    assert job.status is JobStatus.CANCELLED and job.error["type"] == "cancelled" and job.artifacts == []


@pytest.mark.slow
def test_a_worker_shutting_down_releases_the_job_without_spending_an_attempt(tmp_path, job_files):
    ctx = make_ctx(tmp_path, worker__max_attempts=1)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data, spec=LONG_SPEC)
    thread, result = _run_in_thread(job_id, ctx)
    _wait_for_training(ctx, job_id)
    ctx.stop.set()
    thread.join(30)
    assert result["status"] is None
    job = ctx.store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0
    statuses = [e.data for e in ctx.store.events(job_id) if e.kind is EventKind.STATUS]
    assert statuses[-1]["status"] == "queued" and "shut down" in statuses[-1]["reason"]


def test_the_wall_time_limit_stops_the_job_and_names_the_limit(tmp_path, job_files):
    ctx = make_ctx(tmp_path, limits__job_wall_seconds=1.0)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    started = time.monotonic()
    assert run_job(job_id, ctx) is JobStatus.FAILED
    assert time.monotonic() - started < 10
    error = ctx.store.get_job(job_id).error
    assert error["type"] == "resource_limit" and "limits.job_wall_seconds" in error["message"]


def test_the_memory_limit_fails_the_job_with_the_limit_named(tmp_path, job_files):
    ctx = make_ctx(tmp_path, limits__job_memory_bytes=256 * 2**20)  # TensorFlow cannot even start in this
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    assert run_job(job_id, ctx) is JobStatus.FAILED
    error = ctx.store.get_job(job_id).error
    assert error["type"] in ("resource_limit", "crashed")
    assert "memory" in error["message"] and "limits.job_memory_bytes" in error["message"]
    logs = [e.data["message"] for e in ctx.store.events(job_id) if e.kind is EventKind.LOG]
    assert logs and "job process output" in logs[-1]


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_finished_job_posts_a_signed_webhook(tmp_path, job_files):
    from workers import webhooks

    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    try:
        ctx = make_ctx(tmp_path, limits__job_wall_seconds=1.0, webhooks__allow_private=True,
                       webhooks__secret="s3cret")
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job_id = submit(ctx, tmp_path, job_files.model, job_files.data, webhook_url=url)
        assert run_job(job_id, ctx) is JobStatus.FAILED
        assert webhooks.drain(30)  # sent by this process's sender thread, not by run_job
    finally:
        server.shutdown()
    [(headers, payload)] = _Receiver.received
    assert payload["event"] == "job.failed" and payload["job"]["id"] == job_id
    assert payload["job"]["error"]["type"] == "resource_limit"
    assert "X-Secateurs-Signature" in headers


def _job_process(scratch_root, job_id, timeout=30.0) -> int:
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    line = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if "workers.sandbox" in line and f"{scratch_root}/{job_id}." in line:
                    return int(p.name)
        time.sleep(0.1)
    raise AssertionError("no job process found")


@pytest.mark.slow
def test_a_job_process_that_dies_fails_the_job_with_the_signal_named_and_the_worker_carries_on(tmp_path, job_files):
    import os
    import signal

    ctx = make_ctx(tmp_path)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data, spec=LONG_SPEC)
    thread, result = _run_in_thread(job_id, ctx)
    _wait_for_training(ctx, job_id)
    os.kill(_job_process(ctx.settings.scratch_dir, job_id), signal.SIGKILL)
    thread.join(30)
    assert result["status"] is JobStatus.FAILED
    error = ctx.store.get_job(job_id).error
    assert error["type"] == "crashed" and "SIGKILL" in error["message"]
    assert "limits.job_memory_bytes" in error["message"]
    second = submit(ctx, tmp_path, job_files.model, job_files.data)  # the same worker runs the next job
    assert run_job(second, ctx) is JobStatus.SUCCEEDED


def _swap_for_hostile(path, tmp_path, canary):
    from tests.hostile import keras_lambda

    shutil.copy(keras_lambda(tmp_path, canary), path)


def _swap_for_pickle(path, tmp_path, canary):
    from tests.hostile import npz_pickle_file

    shutil.copy(npz_pickle_file(tmp_path, canary), path)


def _flip_a_byte(path, tmp_path, canary):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path, tmp_path, canary):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _remove(path, tmp_path, canary):
    path.unlink()


@pytest.mark.parametrize("role, stored, damage, kind, says", [
    ("model", "model.keras", _swap_for_hostile, "model_rejected", "changed after it was submitted"),
    ("model", "model.keras", _flip_a_byte, "model_rejected", "changed after it was submitted"),
    ("model", "model.keras", _truncate, "model_rejected", "changed after it was submitted"),
    ("model", "model.keras", _remove, "model_rejected", "cannot be read"),
    ("data", "data.npz", _swap_for_pickle, "data_error", "changed after it was submitted"),
])
def test_an_input_changed_after_submit_fails_the_job_before_anything_loads_it(tmp_path, job_files, role, stored,
                                                                               damage, kind, says):
    ctx = make_ctx(tmp_path)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    canary = tmp_path / "canary"
    (tmp_path / "attack").mkdir()
    damage(ctx.artifacts.input_path(job_id, stored), tmp_path / "attack", canary)
    started = time.monotonic()
    assert run_job(job_id, ctx) is JobStatus.FAILED
    assert time.monotonic() - started < 5  # refused before a job process (and TensorFlow) was started
    job = ctx.store.get_job(job_id)
    assert job.error["type"] == kind and job.error["field"] == role
    assert says in job.error["message"] and f"({stored})" in job.error["message"]
    assert job.artifacts == [] and not canary.exists()
    assert not list(ctx.settings.scratch_dir.iterdir())
