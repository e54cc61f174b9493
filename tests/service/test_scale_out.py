"""Scale-out topology: an API that only saves jobs (`--workers 0`, dispatcher `none`) and a standalone
`secateurs worker` process, on SQLite and on real PostgreSQL — the same run_job path as the embedded workers."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.service.conftest import Server, submit, wait_status
from tests.workers.jobfiles import QUICK_SPEC
from tests.workers.pg import fresh_database
from workers.testing.servers import start_worker


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store_env(request):
    if request.param == "sqlite":
        yield {}
    else:
        with fresh_database("secateurs_service") as url:
            yield {"SECATEURS_STORE__URL": url}


@pytest.mark.slow
def test_a_standalone_worker_runs_jobs_saved_by_an_api_without_workers(tmp_path, job_files, store_env):
    api = Server(tmp_path / "data", workers=0, env={**store_env, "SECATEURS_WORKER__DISPATCHER": "none"}).start()
    worker = None
    try:
        with api.client() as c:
            assert c.get("/readyz").json()["checks"]["dispatcher"] == {"kind": "none", "workers": 0}
            job = submit(c, job_files, QUICK_SPEC).json()
            assert c.get(f"/v1/jobs/{job['id']}", params={"wait": 1}).json()["status"] == "queued"
            worker = start_worker(
                "--name", "standalone", env=api.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            done = wait_status(c, job["id"], "succeeded", timeout=180)
            assert done["manifest"]["summary"]["sparsity_after"] == pytest.approx(0.5, abs=0.02)
            running = [
                line for line in c.get(f"/v1/jobs/{job['id']}/logs").text.splitlines() if "status=running" in line
            ]
            assert running and "worker=standalone@" in running[0]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        api.stop()
