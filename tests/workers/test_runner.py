"""run_job end to end on real MNIST in a real sandboxed child: success, failures named, limits, cancel, release."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from tests.workers.jobfiles import LONG_SPEC, QUICK_SPEC
from workers.jobs import EventKind, InputFile, JobStatus, NewJob
from workers.runner import RunContext, run_job
from workers.settings import Settings
from workers.spec import JobSpec
from workers.store import StoreUnavailable
from workers.worker import worker_identity


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
    new = NewJob(
        tenant="t", spec=JobSpec.model_validate(spec).model_dump(mode="json"), inputs=inputs, webhook_url=webhook_url
    )
    for role, src in (("model.keras", model), ("data.npz", data)):
        if src is not None:
            copy = tmp_path / f"upload-{new.id}-{role}"
            shutil.copy(src, copy)
            ctx.artifacts.adopt_input(new.id, role, copy)
    job, _ = ctx.store.create_job(new, max_attempts=ctx.settings.worker.max_attempts)
    return job.id


def outputs_dir(ctx, job_id):
    """Where the served outputs of a job lie (its newest attempt's); None when no attempt wrote any."""
    attempt = ctx.artifacts.published_attempt(job_id)
    return None if attempt is None else ctx.settings.artifacts_root / job_id / "attempts" / str(attempt)


@pytest.mark.slow
def test_a_job_runs_in_a_child_publishes_hashed_artifacts_and_writes_nothing_outside_the_data_dir(
    tmp_path, job_files, monkeypatch
):
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
    assert job.error["code"] == "data_error" and "x_train" in job.error["message"]
    assert job.artifacts == [] and outputs_dir(ctx, job_id) is None


@pytest.mark.slow
def test_a_write_over_the_file_size_limit_fails_the_job_and_leaves_no_files(tmp_path, job_files):
    ctx = make_ctx(tmp_path, limits__job_file_bytes=50_000)  # the model alone is ~200 kB
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    assert run_job(job_id, ctx) is JobStatus.FAILED
    error = ctx.store.get_job(job_id).error
    assert error["code"] == "resource_limit"
    assert "limits.job_file_bytes" in error["message"] and "50000" in error["message"]
    assert outputs_dir(ctx, job_id) is None
    assert not list(ctx.settings.scratch_dir.iterdir())


@pytest.mark.slow
def test_a_full_artifact_store_fails_the_job_and_removes_partial_outputs(tmp_path, job_files):
    inputs = job_files.model.stat().st_size + job_files.data.stat().st_size
    ctx = make_ctx(tmp_path, artifacts__max_total_bytes=inputs + 10_000)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    assert run_job(job_id, ctx) is JobStatus.FAILED
    error = ctx.store.get_job(job_id).error
    assert error["code"] == "resource_limit"
    assert "artifacts.max_total_bytes" in error["message"] and "artifact store full" in error["message"]
    assert outputs_dir(ctx, job_id) is None
    leftovers = [
        p for p in (ctx.settings.artifacts_root / job_id).rglob("*") if p.name.startswith(".") and ".tmp" in p.name
    ]
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
    assert job.status is JobStatus.CANCELLED and job.error["code"] == "cancelled" and job.artifacts == []


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
    assert error["code"] == "resource_limit" and "limits.job_wall_seconds" in error["message"]


def test_the_memory_limit_fails_the_job_with_the_limit_named(tmp_path, job_files):
    ctx = make_ctx(tmp_path, limits__job_memory_bytes=256 * 2**20)  # TensorFlow cannot even start in this
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    assert run_job(job_id, ctx) is JobStatus.FAILED
    error = ctx.store.get_job(job_id).error
    assert error["code"] in ("resource_limit", "crashed")
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
    from workers import notify

    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    try:
        ctx = make_ctx(tmp_path, limits__job_wall_seconds=1.0, webhooks__allow_private=True, webhooks__secret="s3cret")
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job_id = submit(ctx, tmp_path, job_files.model, job_files.data, webhook_url=url)
        assert run_job(job_id, ctx) is JobStatus.FAILED
        assert notify.drain(30)  # sent by this process's sender thread, not by run_job
    finally:
        server.shutdown()
    [(headers, payload)] = _Receiver.received
    assert payload["event"] == "job.failed" and payload["job"]["id"] == job_id
    error = payload["job"]["error"]
    assert error["code"] == "resource_limit" and error["type"] == "resource_limit"  # `type`: the deprecated alias
    assert "X-Secateurs-Signature" in headers


def _job_process(scratch_root, job_id, attempt=1, timeout=30.0) -> int:
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    line = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if "workers.sandbox" in line and f"{scratch_root}/{job_id}.{attempt}/" in line:
                    return int(p.name)
        time.sleep(0.1)
    raise AssertionError("no job process found")


@pytest.mark.slow
def test_a_job_process_killed_from_outside_is_retried_while_attempts_remain_and_the_worker_carries_on(
    tmp_path, job_files
):
    """A SIGKILL far from the memory limits (an operator's kill -9, not the out-of-memory killer) is named as such
    and the job runs again as its next attempt; the last attempt's death fails the job, saying it is not retried."""
    import os
    import signal

    ctx = make_ctx(tmp_path, worker__max_attempts=2)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data, spec=LONG_SPEC)
    thread, result = _run_in_thread(job_id, ctx)
    os.kill(_job_process(ctx.settings.scratch_dir, job_id, attempt=1), signal.SIGKILL)
    os.kill(_job_process(ctx.settings.scratch_dir, job_id, attempt=2, timeout=60), signal.SIGKILL)
    thread.join(60)
    assert result["status"] is JobStatus.FAILED
    job = ctx.store.get_job(job_id)
    assert job.attempts == 2
    assert job.error["code"] == "crashed" and "SIGKILL" in job.error["message"]
    assert "not by a memory limit" in job.error["message"] and "peak memory" in job.error["message"]
    assert "not retried: that was attempt 2 of 2 (worker.max_attempts)" in job.error["message"]
    statuses = [e.data for e in ctx.store.events(job_id) if e.kind is EventKind.STATUS]
    assert [e["status"] for e in statuses] == ["queued", "running", "running", "failed"]
    assert (
        statuses[2]["attempt"] == 2 and "attempt 1 ended: the job process was killed (SIGKILL)" in statuses[2]["reason"]
    )
    second = submit(ctx, tmp_path, job_files.model, job_files.data)  # the same worker runs the next job
    assert run_job(second, ctx) is JobStatus.SUCCEEDED


# -- fencing: an attempt that lost its claim publishes nothing ----------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    from tests.e2e.servers import MotoServer

    server = MotoServer().start()
    yield server
    server.stop()


def _artifact_settings(kind: str, request) -> dict:
    if kind == "local":
        return {}
    moto = request.getfixturevalue("moto")
    return {
        "artifacts__url": f"s3://fence-{os.urandom(4).hex()}/jobs",
        "artifacts__s3": {
            "endpoint_url": moto.endpoint_url,
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
    }


class _RevokedBeforeItPublishes:
    """The artifact store of worker A, whose job is taken from it just before its first output write: the sweep
    re-queues the job (as when A is cut off from the job store and its heartbeats stop) and worker B runs it to
    the end. A then goes on writing its own outputs, marked so that their bytes differ from B's."""

    def __init__(self, inner, take_over):
        self.inner, self.take_over, self.stale_digests = inner, take_over, set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_output(self, job_id, name, src, **kw):
        if self.take_over is not None:
            take_over, self.take_over = self.take_over, None
            take_over()
        src.write_bytes(src.read_bytes() + b"\n(stale attempt)\n")
        self.stale_digests.add(sha256(src))
        return self.inner.put_output(job_id, name, src, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("artifacts", ["local", "s3"])  # s3: a real moto server on 127.0.0.1
def test_a_stale_attempt_that_lost_its_claim_never_replaces_the_served_artifacts(
    tmp_path, job_files, request, artifacts
):
    from datetime import timedelta

    from workers.jobs import utcnow

    ctx_a = make_ctx(tmp_path, **_artifact_settings(artifacts, request))
    ctx_b = RunContext.from_settings(ctx_a.settings, worker_identity("other"))
    job_id = submit(ctx_a, tmp_path, job_files.model, job_files.data)

    def take_over():
        swept = ctx_b.store.sweep_stale(utcnow() + timedelta(seconds=1))
        assert [(r.job_id, r.status) for r in swept] == [(job_id, JobStatus.QUEUED)]
        assert run_job(job_id, ctx_b) is JobStatus.SUCCEEDED

    ctx_a.artifacts = stale = _RevokedBeforeItPublishes(ctx_a.artifacts, take_over)
    assert run_job(job_id, ctx_a) is None  # A's attempt was fenced off
    assert stale.take_over is None and stale.stale_digests  # A did reach its publish step

    job = ctx_b.store.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 2 and job.worker_id == ctx_b.worker_id
    served = {a.name: b"".join(ctx_b.artifacts.open_output(job_id, a.name)) for a in job.artifacts}
    for art in job.artifacts:  # what the API serves is what finish recorded
        digest = hashlib.sha256(served[art.name]).hexdigest()
        assert digest == art.sha256 and len(served[art.name]) == art.bytes, art.name
        assert digest not in stale.stale_digests
    recorded = job.manifest["artifacts"]
    for entry in recorded.values() if isinstance(recorded, dict) else recorded:  # and what the manifest says
        assert hashlib.sha256(served[entry["file"]]).hexdigest() == entry["sha256"], entry["file"]
    assert ctx_b.artifacts.output_attempts(job_id) == [2]  # the stale attempt published nothing, left nothing
    assert run_job(job_id, ctx_a) is None


class _CutOff:
    """The job store as a worker cut off from it sees it: every heartbeat fails (the rest still works, so the test
    can look)."""

    def __init__(self, inner):
        self.inner, self.heartbeats = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def heartbeat(self, claim):
        self.heartbeats += 1
        raise StoreUnavailable("the job store is unavailable (postgresql): connection refused")


@pytest.mark.slow
def test_an_attempt_whose_heartbeats_keep_failing_is_stopped_and_publishes_nothing(tmp_path, job_files):
    ctx = make_ctx(tmp_path, worker__heartbeat_max_missed=3)  # heartbeats every 0.5 s
    ctx.store = cut_off = _CutOff(ctx.store)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    started = time.monotonic()
    assert run_job(job_id, ctx) is None
    assert time.monotonic() - started < 10 and cut_off.heartbeats == 3
    job = cut_off.inner.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.artifacts == []  # released, not spent
    assert outputs_dir(ctx, job_id) is None and not list(ctx.settings.scratch_dir.iterdir())
    reason = [e.data for e in cut_off.inner.events(job_id) if e.kind is EventKind.STATUS][-1]["reason"]
    assert "3 heartbeats in a row failed" in reason and "worker.heartbeat_max_missed" in reason


class _FlakyHeartbeats:
    def __init__(self, inner):
        self.inner, self.failing = inner, False

    def heartbeat(self, claim):
        if self.failing:
            raise StoreUnavailable("connection refused")
        return self.inner.heartbeat(claim)


def test_a_lease_survives_a_passing_outage_but_not_a_lasting_one_nor_a_lost_claim(store):
    from datetime import timedelta

    from tests.workers.test_store import new_job
    from workers.jobs import utcnow
    from workers.runner import ClaimLost, Lease

    job, _ = store.create_job(new_job(), max_attempts=2)
    claim = store.claim(job.id, "w1@h:1")
    now = [0.0]
    flaky = _FlakyHeartbeats(store)
    lease = Lease(flaky, claim, max_missed=3, timeout=30.0, clock=lambda: now[0])
    flaky.failing = True
    assert lease.renew() and lease.renew()  # two failures in a row: still held
    flaky.failing = False
    assert lease.renew() and lease.missed == 0  # a success resets the count
    flaky.failing = True
    assert lease.renew() and lease.renew() and not lease.renew()  # the third failure in a row loses it
    assert "3 heartbeats in a row failed" in lease.lost
    flaky.failing = False
    assert not lease.renew()  # lost for good
    with pytest.raises(ClaimLost):
        lease.check()

    slow = Lease(flaky, claim, max_missed=100, timeout=30.0, clock=lambda: now[0])
    assert slow.renew()
    flaky.failing, now[0] = True, 31.0
    assert not slow.renew()  # one failure, but no successful heartbeat for longer than the timeout

    flaky.failing = False
    gone = Lease(flaky, claim, max_missed=3, timeout=30.0, clock=lambda: now[0])
    assert gone.renew()
    store.sweep_stale(utcnow() + timedelta(seconds=1))  # the job is given to another worker
    assert not gone.renew() and "lost its claim" in gone.lost  # at once


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


@pytest.mark.parametrize(
    "role, stored, damage, kind, says",
    [
        ("model", "model.keras", _swap_for_hostile, "model_rejected", "changed after it was submitted"),
        ("model", "model.keras", _flip_a_byte, "model_rejected", "changed after it was submitted"),
        ("model", "model.keras", _truncate, "model_rejected", "changed after it was submitted"),
        ("model", "model.keras", _remove, "model_rejected", "cannot be read"),
        ("data", "data.npz", _swap_for_pickle, "data_error", "changed after it was submitted"),
    ],
)
def test_an_input_changed_after_submit_fails_the_job_before_anything_loads_it(
    tmp_path, job_files, role, stored, damage, kind, says
):
    ctx = make_ctx(tmp_path)
    job_id = submit(ctx, tmp_path, job_files.model, job_files.data)
    canary = tmp_path / "canary"
    (tmp_path / "attack").mkdir()
    damage(ctx.artifacts.input_path(job_id, stored), tmp_path / "attack", canary)
    started = time.monotonic()
    assert run_job(job_id, ctx) is JobStatus.FAILED
    assert time.monotonic() - started < 5  # refused before a job process (and TensorFlow) was started
    job = ctx.store.get_job(job_id)
    assert job.error["code"] == kind and job.error["field"] == role
    assert says in job.error["message"] and f"({stored})" in job.error["message"]
    assert job.artifacts == [] and not canary.exists()
    assert not list(ctx.settings.scratch_dir.iterdir())
