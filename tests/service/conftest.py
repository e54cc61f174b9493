"""The real service under test: `secateurs serve` (uvicorn) in a subprocess with real worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]

FAST_WORKERS = {  # quick heartbeats and polling so that interruption tests take seconds, not minutes
    "SECATEURS_WORKER__HEARTBEAT_INTERVAL": "0.5",
    "SECATEURS_WORKER__HEARTBEAT_TIMEOUT": "4",
    "SECATEURS_WORKER__POLL_INTERVAL": "0.2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Server:
    """One `secateurs serve` process on a free port, with its data directory and environment."""

    def __init__(self, data_dir: Path, *, workers: int = 1, env: dict[str, str] | None = None,
                 preexec_fn=None):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.preexec_fn = preexec_fn  # e.g. resource limits of the server process
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}
        self.env = {**base, "TF_CPP_MIN_LOG_LEVEL": "3", "SECATEURS_DATA_DIR": str(self.data_dir),
                    "SECATEURS_LOG_LEVEL": "warning", **FAST_WORKERS, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 90.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        return [p for p in children(self.proc.pid) if "spawn_main" in cmdline(p) and alive(p)]

    def stop(self, timeout: float = 40.0) -> None:
        """Graceful: SIGTERM, as a service manager would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
        wait_gone(workers)
        self.log.close()

    def kill(self) -> list[int]:
        """SIGKILL the API process only; returns its worker pids (they notice and stop on their own)."""
        workers = self.worker_pids()
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        return workers

    def kill_group(self) -> None:
        """SIGKILL the API and its workers at once, like a machine losing power (job processes notice)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


def wait_gone(pids, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "worker processes outlived their server"


@pytest.fixture(scope="session")
def job_files(tmp_path_factory, mnist):
    from tests.workers.jobfiles import make_job_files

    return make_job_files(tmp_path_factory.mktemp("service-jobfiles"), mnist)


def submit(client: httpx.Client, job_files, spec: dict | str, *, data=True, headers=None, extra=None,
           model_path=None) -> httpx.Response:
    files = {"model": ("mnist.keras", open(model_path or job_files.model, "rb"), "application/octet-stream")}
    if data:
        files["data"] = ("mnist.npz", open(job_files.data if data is True else data, "rb"),
                         "application/octet-stream")
    fields = {"spec": spec if isinstance(spec, str) else __import__("json").dumps(spec), **(extra or {})}
    try:
        return client.post("/v1/jobs", files=files, data=fields, headers=headers or {})
    finally:
        for f in files.values():
            f[1].close()


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
