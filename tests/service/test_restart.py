"""Durability and faults against real processes: restarts while a job is queued, running or uploading, killed
workers, the attempt limit, a job that blows its limit without taking anything else down, and the job store (the
queue) going away at submit."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import TcpProxy
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
    return [
        line.split("status=")[1].split()[0]
        for line in client.get(f"/v1/jobs/{job_id}/logs").text.splitlines()
        if " status status=" in line
    ]


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
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.keras"\r\n\r\n'.encode())
        yield job_files.model.read_bytes()[:50_000]
        started.set()
        time.sleep(30)  # the server dies while we wait
        yield b"never sent"

    def upload():
        try:
            httpx.post(
                f"{first.url}/v1/jobs",
                content=body(),
                timeout=60,
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
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


# --------------------------------------------------------------------------- the job store goes away at submit

ONE_SHOT = {
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5}],
    "evaluation": {"latency": False},
}


def assert_store_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json" and int(r.headers["retry-after"]) > 0
    body = r.json()
    assert body["code"] == "store_unavailable"
    assert "the job store is unavailable" in body["detail"] and "nothing was saved" in body["detail"]


def job_dirs(data: Path) -> list[str]:
    root = data / "artifacts"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_an_unreachable_sqlite_store_at_submit_is_503_and_keeps_nothing(tmp_path, job_files):
    """In-process app on a SQLite file: its pooled connections are dropped and the database file is put out of
    reach (a directory in its place), as when a volume goes away; then it comes back."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from workers.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    app = create_app(settings, workers=0)
    data = settings.data_dir
    with TestClient(app) as c:
        first = submit(c, job_files, ONE_SHOT, data=False)
        assert first.status_code == 202
        away = tmp_path / "away"
        away.mkdir()
        app.state.store.engine.dispose()
        for f in data.glob("jobs.db*"):
            f.rename(away / f.name)
        (data / "jobs.db").mkdir()

        assert_store_unavailable(submit(c, job_files, ONE_SHOT, data=False))
        assert list((data / "tmp").iterdir()) == []
        assert job_dirs(data) == [first.json()["id"]]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "store" in ready.json()["detail"]
        assert c.get("/healthz").status_code == 200

        (data / "jobs.db").rmdir()
        for f in away.iterdir():
            f.rename(data / f.name)
        again = submit(c, job_files, ONE_SHOT, data=False)
        assert again.status_code == 202
        assert [j["id"] for j in c.get("/v1/jobs").json()["items"]] == [again.json()["id"], first.json()["id"]]


@pytest.mark.services
def test_a_postgresql_store_lost_during_an_upload_is_503_and_leaves_no_upload_behind(tmp_path, job_files):
    """The API's store is PostgreSQL behind a TCP proxy; the network to it is cut while a submit streams its body
    (after the key and quota checks): the saved inputs are removed again, the answer is 503 with a clear message,
    and once the network is back the same server accepts jobs."""
    from sqlalchemy.engine import make_url

    from tests.workers.pg import fresh_database

    with fresh_database("secateurs_outage") as url:
        pg = make_url(url)
        proxy = TcpProxy(pg.host or "127.0.0.1", pg.port or 5432).up()
        via_proxy = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        srv = Server(tmp_path / "data", workers=0, env={"SECATEURS_STORE__URL": via_proxy}).start()
        try:
            with srv.client() as c:
                first = submit(c, job_files, ONE_SHOT, data=False)
                assert first.status_code == 202
                boundary = "outage"
                model = job_files.model.read_bytes()

                def body():
                    yield (
                        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.keras"\r\n\r\n'
                    ).encode() + model[:1000]
                    deadline = time.monotonic() + 20
                    while not list((srv.data_dir / "tmp").rglob("m.keras")) and time.monotonic() < deadline:
                        time.sleep(0.02)
                    proxy.down()  # the server is streaming the body: key and quota were checked
                    yield model[1000:]
                    yield (
                        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'
                        f"{json.dumps(ONE_SHOT)}\r\n--{boundary}--\r\n"
                    ).encode()

                r = c.post(
                    "/v1/jobs", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
                )
                assert_store_unavailable(r)
                assert list((srv.data_dir / "tmp").iterdir()) == []
                assert job_dirs(srv.data_dir) == [first.json()["id"]]
                assert c.get("/healthz").status_code == 200
                assert_store_unavailable(c.get("/v1/jobs"))

                proxy.up()
                again = submit(c, job_files, ONE_SHOT, data=False)
                assert again.status_code == 202, again.text
                listed = [j["id"] for j in c.get("/v1/jobs").json()["items"]]
                assert listed == [again.json()["id"], first.json()["id"]]
                assert job_dirs(srv.data_dir) == sorted(listed)
        finally:
            srv.stop()
            proxy.down()


def _small_disk() -> None:
    """In the server process: no file may grow past 2 MiB (Python ignores SIGXFSZ, so a write fails with EFBIG),
    as on a disk that fills up during an upload."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))


def test_a_disk_that_fills_up_during_an_upload_is_507_and_keeps_nothing(tmp_path, job_files):
    srv = Server(tmp_path / "data", workers=0, preexec_fn=_small_disk).start()
    try:
        with srv.client() as c:
            r = c.post(
                "/v1/jobs", files={"model": ("big.keras", os.urandom(3 * 2**20))}, data={"spec": json.dumps(ONE_SHOT)}
            )
            assert r.status_code == 507, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "insufficient_storage" and "no room to store the upload" in r.json()["detail"]
            assert list((srv.data_dir / "tmp").iterdir()) == []
            assert c.get("/healthz").status_code == 200
            small = submit(c, job_files, ONE_SHOT, data=False)  # a file that fits is still accepted
            assert small.status_code == 202, small.text
            assert [j["id"] for j in c.get("/v1/jobs").json()["items"]] == [small.json()["id"]]
    finally:
        srv.stop()
