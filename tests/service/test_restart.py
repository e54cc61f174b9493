"""Durability and faults against real processes: restarts while a job is queued, running or uploading, killed
workers, the attempt limit, and a job that blows its limit without taking anything else down."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Server, alive, cmdline, submit, wait_gone, wait_status, wait_training
from tests.workers.jobfiles import QUICK_SPEC

MEDIUM_SPEC = {  # a few seconds of training: long enough to interrupt, short enough to run again
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 30}],
    "training": {"batch_size": 8},
    "evaluation": {"latency": False},
}


def sandbox_pids(data_dir: Path) -> list[int]:
    """Job processes (python -m workers.sandbox <data_dir>/scratch/...) of this data directory."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            line = cmdline(int(p.name))
            if "workers.sandbox" in line and str(data_dir) in line and alive(int(p.name)):
                pids.append(int(p.name))
    return pids


def status_events(client: httpx.Client, job_id: str) -> list[str]:
    return [line.split("status=")[1].split()[0] for line in client.get(f"/v1/jobs/{job_id}/logs").text.splitlines()
            if " status status=" in line]


@pytest.mark.slow
def test_a_job_queued_before_a_restart_runs_after_it(tmp_path, job_files):
    data = tmp_path / "data"
    first = Server(data, workers=0).start()
    with first.client() as c:
        job = submit(c, job_files, QUICK_SPEC).json()
    first.stop()
    second = Server(data, workers=1).start()
    try:
        with second.client() as c:
            before = c.get(f"/v1/jobs/{job['id']}").json()
            assert before["spec"] == job["spec"] and before["inputs"] == job["inputs"]
            done = wait_status(c, job["id"], "succeeded")
            assert done["attempts"] == 1
            assert c.get(f"/v1/jobs/{job['id']}/artifacts/model.keras").status_code == 200
    finally:
        second.stop()


@pytest.mark.slow
def test_a_job_running_when_everything_is_killed_is_rerun_after_restart(tmp_path, job_files):
    data = tmp_path / "data"
    first = Server(data, workers=1).start()
    with first.client() as c:
        job = submit(c, job_files, MEDIUM_SPEC).json()
        wait_training(c, job["id"])
    first.kill_group()  # API and worker die at once: nobody releases the job
    wait_gone(sandbox_pids(data), timeout=15)  # the orphaned job process notices and exits
    second = Server(data, workers=1).start()
    try:
        with second.client() as c:
            done = wait_status(c, job["id"], "succeeded", timeout=180)
            assert done["attempts"] == 2  # the interrupted attempt counted
            assert status_events(c, job["id"]) == ["queued", "running", "queued", "running", "succeeded"]
            assert "interrupted" in c.get(f"/v1/jobs/{job['id']}/logs").text
    finally:
        second.stop()


@pytest.mark.slow
def test_a_graceful_restart_while_running_requeues_the_job_without_spending_an_attempt(tmp_path, job_files):
    data = tmp_path / "data"
    first = Server(data, workers=1).start()
    with first.client() as c:
        job = submit(c, job_files, MEDIUM_SPEC).json()
        wait_training(c, job["id"])
    first.stop()  # SIGTERM: the worker stops the job process and releases the job
    assert sandbox_pids(data) == []
    second = Server(data, workers=1).start()
    try:
        with second.client() as c:
            done = wait_status(c, job["id"], "succeeded", timeout=180)
            assert done["attempts"] == 1
            assert status_events(c, job["id"]) == ["queued", "running", "queued", "running", "succeeded"]
    finally:
        second.stop()


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_job_rerun(tmp_path, job_files):
    srv = Server(tmp_path / "data", workers=1).start()
    try:
        with srv.client() as c:
            job = submit(c, job_files, MEDIUM_SPEC).json()
            wait_training(c, job["id"])
            [worker] = srv.worker_pids()
            job_procs = sandbox_pids(srv.data_dir)
            os.kill(worker, signal.SIGKILL)
            wait_gone(job_procs, timeout=15)
            done = wait_status(c, job["id"], "succeeded", timeout=180)
            assert done["attempts"] == 2
            [replacement] = srv.worker_pids()
            assert replacement != worker
            assert c.get("/readyz").json()["checks"]["dispatcher"]["restarts"] == 1
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_job_interrupted_on_its_last_attempt_is_failed_as_interrupted(tmp_path, job_files):
    srv = Server(tmp_path / "data", workers=1, env={"SECATEURS_WORKER__MAX_ATTEMPTS": "1"}).start()
    try:
        with srv.client() as c:
            job = submit(c, job_files, MEDIUM_SPEC).json()
            wait_training(c, job["id"])
            [worker] = srv.worker_pids()
            os.kill(worker, signal.SIGKILL)
            done = wait_status(c, job["id"], "failed", timeout=60)
            assert done["error"]["type"] == "interrupted"
            assert "attempt 1 of 1" in done["error"]["message"]
    finally:
        srv.stop()


def test_a_restart_mid_upload_leaves_no_temp_file_and_no_job(tmp_path, job_files):
    data = tmp_path / "data"
    first = Server(data, workers=0).start()
    boundary = "cut"
    started = threading.Event()

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m.keras\"\r\n\r\n"
               .encode())
        yield job_files.model.read_bytes()[:50_000]
        started.set()
        time.sleep(30)  # the server dies while we wait
        yield b"never sent"

    def upload():
        try:
            httpx.post(f"{first.url}/v1/jobs", content=body(), timeout=60,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    assert started.wait(30)
    deadline = time.monotonic() + 10
    while not list((data / "tmp").rglob("m.keras")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((data / "tmp").rglob("m.keras")), "the upload was not being streamed to a temp file"
    first.kill()
    second = Server(data, workers=0).start()
    try:
        assert list((data / "tmp").iterdir()) == []
        with second.client() as c:
            assert c.get("/v1/jobs").json()["items"] == []
        assert not any((data / "artifacts").iterdir())
    finally:
        second.stop()


def test_a_job_over_its_wall_time_fails_with_the_reason_and_the_worker_carries_on(tmp_path, job_files):
    srv = Server(tmp_path / "data", workers=1, env={"SECATEURS_LIMITS__JOB_WALL_SECONDS": "2"}).start()
    try:
        with srv.client() as c:
            workers = srv.worker_pids()
            first = submit(c, job_files, MEDIUM_SPEC).json()
            second = submit(c, job_files, MEDIUM_SPEC).json()
            for job in (first, second):
                done = wait_status(c, job["id"], "failed", timeout=60)
                assert done["error"]["type"] == "resource_limit"
                assert "wall-time limit of 2 s (limits.job_wall_seconds)" in done["error"]["message"]
            assert srv.worker_pids() == workers  # the same worker ran both: nothing else went down
            assert c.get("/readyz").status_code == 200
    finally:
        srv.stop()
