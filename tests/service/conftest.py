"""The real service under test: `secateurs serve` (uvicorn) in a subprocess with real worker processes, started by
the harness that the benchmarks share (workers/testing/servers.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from workers.testing import servers
from workers.testing.servers import alive, children, cmdline, free_port, wait_gone  # noqa: F401  (for the tests)

ROOT = Path(__file__).resolve().parents[2]

FAST_WORKERS = {  # quick heartbeats and polling so that interruption tests take seconds, not minutes
    "SECATEURS_WORKER__HEARTBEAT_INTERVAL": "0.5",
    "SECATEURS_WORKER__HEARTBEAT_TIMEOUT": "4",
    "SECATEURS_WORKER__POLL_INTERVAL": "0.2",
}


class Server(servers.Server):
    """The harness's server with quick heartbeats and polling (FAST_WORKERS) unless a test sets them."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None, **kw):
        super().__init__(data_dir, env={**FAST_WORKERS, **(env or {})}, **kw)


@pytest.fixture(scope="session")
def job_files(tmp_path_factory, mnist):
    from tests.workers.jobfiles import make_job_files

    return make_job_files(tmp_path_factory.mktemp("service-jobfiles"), mnist)


def submit(
    client: httpx.Client, job_files, spec: dict | str, *, data=True, headers=None, extra=None, model_path=None
) -> httpx.Response:
    files = {"model": ("mnist.keras", open(model_path or job_files.model, "rb"), "application/octet-stream")}
    if data:
        files["data"] = ("mnist.npz", open(job_files.data if data is True else data, "rb"), "application/octet-stream")
    fields = {"spec": spec if isinstance(spec, str) else __import__("json").dumps(spec), **(extra or {})}
    try:
        return client.post("/v1/jobs", files=files, data=fields, headers=headers or {})
    finally:
        for f in files.values():
            f[1].close()


@pytest.fixture
def client(request, server):
    """An HTTP client of the module's `server` fixture; after each test it removes every job when the module sets
    CLEAN_JOBS = True."""
    with server.client() as c:
        yield c
        if getattr(request.module, "CLEAN_JOBS", False):
            remove_all_jobs(c)


def remove_all_jobs(client: httpx.Client) -> None:
    """Cancel and delete every job the client can see (a fixture's clean-up between tests)."""
    for job in client.get("/v1/jobs", params={"limit": 200}).json()["items"]:
        client.post(f"/v1/jobs/{job['id']}/cancel")
        client.delete(f"/v1/jobs/{job['id']}")


def wait_status(client: httpx.Client, job_id: str, statuses, timeout: float = 120.0, **kw) -> dict:
    """Long-poll until the job is in one of `statuses`."""
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}, **kw)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job['status']} after {timeout} s, not {statuses}: {job}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            raise AssertionError(f"job {job_id} ended {job['status']}, not {statuses}: {job.get('error')}")


def wait_training(client: httpx.Client, job_id: str, timeout: float = 120.0, **kw) -> dict:
    """Until the job reports an optimizer step (it is inside model.fit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", **kw).json()
        if job["status"] == "running" and (job.get("progress") or {}).get("step"):
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start training in {timeout} s")


def keys(server: Server, *args) -> subprocess.CompletedProcess:
    """`secateurs keys ARGS` against `server`'s store, as an operator runs it."""
    return subprocess.run(
        servers.secateurs_command("keys", *args, root=server.root),
        cwd=server.root,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def key_headers(server: Server, tenant: str) -> dict[str, str]:
    """A new API key for `tenant` (`secateurs keys create`), as request headers."""
    made = keys(server, "create", "--tenant", tenant)
    assert made.returncode == 0, made.stderr
    return {"Authorization": f"Bearer {made.stdout.strip()}"}
