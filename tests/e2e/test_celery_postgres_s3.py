"""The scale-out topology with native processes: the API (`secateurs serve --workers 0`, dispatcher `celery`) and
Celery workers (`secateurs worker`) in subprocesses, each with its own data directory, sharing only real
PostgreSQL (a fresh database), real Redis (a dedicated database number and key prefix) and an S3 server (moto).

Under CI=true an unreachable Redis or PostgreSQL fails these tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.servers import MotoServer, TcpProxy, redis_space
from tests.service.conftest import ROOT, Server, alive, children, wait_status, wait_training
from tests.workers.pg import fresh_database
from workers.testing.servers import start_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

EXAMPLES = ROOT / "examples"
BUCKET = "secateurs-e2e"
QUEUE = "e2e-jobs"
QUICK = {
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 1}],
    "training": {"batch_size": 64},
    "evaluation": {"latency": False},
}
LONGER = {
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 6}],
    "training": {"batch_size": 16},
    "evaluation": {"latency": False},
}


class Topology:
    def __init__(self, tmp: Path, pg_url: str, redis, moto: MotoServer):
        self.tmp, self.redis, self.moto = tmp, redis, moto
        redis_port = int(redis.url.rsplit(":", 1)[1].split("/")[0])
        self.broker_proxy = TcpProxy("127.0.0.1", redis_port).up()  # the API reaches the broker through it
        db = redis.url.rsplit("/", 1)[1]
        common = {
            "SECATEURS_STORE__URL": pg_url,
            "SECATEURS_WORKER__DISPATCHER": "celery",
            "SECATEURS_CELERY__KEY_PREFIX": redis.prefix,
            "SECATEURS_CELERY__QUEUE": QUEUE,
            "SECATEURS_CELERY__REDISPATCH_INTERVAL": "0.5",
            "SECATEURS_CELERY__PUBLISH_TIMEOUT": "2",
            **moto.env(BUCKET, "e2e"),
        }
        self.api = Server(
            tmp / "api-data",
            workers=0,
            env={**common, "SECATEURS_CELERY__BROKER_URL": f"redis://127.0.0.1:{self.broker_proxy.port}/{db}"},
        )
        self.worker_env = {
            **self.api.env,
            "SECATEURS_CELERY__BROKER_URL": redis.url,
            "SECATEURS_WORKER__CONCURRENCY": "1",
        }
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, name: str) -> subprocess.Popen:
        data_dir = self.tmp / f"{name}-data"
        log = open(self.tmp / f"{name}.log", "ab")
        proc = start_worker(
            "--name",
            name,
            env={**self.worker_env, "SECATEURS_DATA_DIR": str(data_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.data_dir, proc.log_path = data_dir, self.tmp / f"{name}.log"
        self.workers.append(proc)
        return proc

    def worker_log(self, proc) -> str:
        return proc.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.api.stop()
        self.broker_proxy.down()


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    with redis_space() as redis, fresh_database("secateurs_e2e") as pg_url:
        moto = MotoServer().start()
        top = Topology(tmp_path_factory.mktemp("e2e"), pg_url, redis, moto)
        try:
            top.api.start()
            yield top
        finally:
            top.stop()
            moto.stop()


def submit(client, spec: dict):
    with open(EXAMPLES / "mnist_small.keras", "rb") as model, open(EXAMPLES / "mnist_small.npz", "rb") as data:
        return client.post(
            "/v1/jobs",
            files={
                "model": ("mnist_small.keras", model, "application/octet-stream"),
                "data": ("mnist_small.npz", data, "application/octet-stream"),
            },
            data={"spec": json.dumps(spec)},
        )


def s3_client(moto: MotoServer):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def running_workers(client, job_id: str) -> list[str]:
    return [
        line.split("worker=")[1].split("@")[0]
        for line in client.get(f"/v1/jobs/{job_id}/logs").text.splitlines()
        if "status=running" in line and "worker=" in line
    ]


def submit_and_wait_training(client) -> str:
    """Submit the longer job and return its id once it is inside model.fit."""
    r = submit(client, LONGER)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_training(client, job_id, timeout=120)
    return job_id


def stop_gracefully(topology, worker) -> None:
    """SIGTERM, as a service manager would: an idle Celery worker exits with status 0."""
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, topology.worker_log(worker)


def test_a_job_submitted_over_http_runs_on_a_celery_worker_and_its_artifact_is_served_from_s3(topology):
    worker = topology.start_worker("w-first")
    with topology.api.client() as c:
        assert c.get("/readyz").json()["checks"]["dispatcher"]["kind"] == "celery"
        r = submit(c, QUICK)
        assert r.status_code == 202, r.text
        job = wait_status(c, r.json()["id"], "succeeded", timeout=120)
        assert running_workers(c, job["id"]) == ["w-first"] and job["attempts"] == 1

        artifact = next(a for a in job["artifacts"] if a["name"] == "model.keras")
        download = c.get(f"/v1/jobs/{job['id']}/artifacts/model.keras")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == artifact["sha256"]
        assert len(download.content) == artifact["bytes"]
        head = s3_client(topology.moto).head_object(Bucket=BUCKET, Key=f"e2e/{job['id']}/attempts/1/model.keras")
        assert head["Metadata"]["sha256"] == artifact["sha256"]
        # nothing but PostgreSQL, Redis and S3 is shared: no artifact directory on either side
        for data_dir in (topology.api.data_dir, worker.data_dir):
            assert not (data_dir / "artifacts").exists() and not list(data_dir.rglob("outputs"))

        # a duplicate message for the finished job (the message is the job id only) changes nothing
        from workers.celery_app import TASK_NAME, create_celery_app
        from workers.settings import Settings

        app = create_celery_app(
            Settings(celery={"broker_url": topology.redis.url, "queue": QUEUE, "key_prefix": topology.redis.prefix})
        )
        app.send_task(TASK_NAME, args=[job["id"]], queue=QUEUE)
        app.close()
        deadline = time.monotonic() + 30
        while topology.redis.queued_messages(QUEUE) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert topology.redis.queued_messages(QUEUE) == []  # consumed by the worker
        time.sleep(1)
        again = c.get(f"/v1/jobs/{job['id']}").json()
        assert (again["status"], again["attempts"], again["finished_at"]) == ("succeeded", 1, job["finished_at"])
    stop_gracefully(topology, worker)


def test_a_broker_outage_at_submit_still_answers_202_and_the_job_runs_when_the_broker_is_back(topology):
    worker = topology.start_worker("w-outage")
    with topology.api.client() as c:
        topology.broker_proxy.down()
        try:
            started = time.monotonic()
            r = submit(c, QUICK)
            assert r.status_code == 202, r.text
            assert time.monotonic() - started < 2  # the submit never waits for the broker
            job_id = r.json()["id"]
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
            deadline = time.monotonic() + 30
            while (ready := c.get("/readyz")).status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready.status_code == 503 and ready.json()["detail"].startswith("not ready: broker (unreachable: ")
            time.sleep(1.5)  # the API's sweeps while the broker is down: still queued, still not sent
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        finally:
            topology.broker_proxy.up()
        done = wait_status(c, job_id, "succeeded", timeout=120)
        assert c.get("/readyz").status_code == 200
        assert done["attempts"] == 1 and running_workers(c, job_id) == ["w-outage"]
    stop_gracefully(topology, worker)


def test_killing_a_celery_worker_mid_job_re_runs_the_job_on_another_worker(topology):
    first = topology.start_worker("w-killed")
    with topology.api.client() as c:
        job_id = submit_and_wait_training(c)
        job_processes = [p for pool in children(first.pid) for p in children(pool)]
        assert job_processes, "no job process under the worker's pool process"
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool process, like a lost machine
        first.wait()
        # the API's sweep sees the dead worker process at once: re-queued, its attempt counted, and sent again
        requeued = wait_status(c, job_id, "queued", timeout=30)
        assert requeued["attempts"] == 1
        deadline = time.monotonic() + 30
        while any(alive(p) for p in job_processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in job_processes if alive(p)], "the job process outlived its worker"

        second = topology.start_worker("w-second")
        done = wait_status(c, job_id, "succeeded", timeout=180)
        assert done["attempts"] == 2 and running_workers(c, job_id) == ["w-killed", "w-second"]
        download = c.get(f"/v1/jobs/{job_id}/artifacts/model.keras")
        sha = next(a["sha256"] for a in done["artifacts"] if a["name"] == "model.keras")
        assert hashlib.sha256(download.content).hexdigest() == sha
    stop_gracefully(topology, second)


def test_a_worker_stopped_mid_job_releases_it_without_spending_an_attempt_and_another_worker_runs_it(topology):
    first = topology.start_worker("w-stopped")
    with topology.api.client() as c:
        job_id = submit_and_wait_training(c)
        stop_gracefully(topology, first)  # SIGTERM: the running job is stopped and released, then the worker exits
        released = c.get(f"/v1/jobs/{job_id}").json()
        assert released["status"] == "queued" and released["attempts"] == 0
        assert [m["args"] for m in topology.redis.queued_messages(QUEUE)] == [[job_id]]  # rejected with requeue

        second = topology.start_worker("w-after-stop")
        done = wait_status(c, job_id, "succeeded", timeout=180)
        assert done["attempts"] == 1 and running_workers(c, job_id) == ["w-stopped", "w-after-stop"]
    stop_gracefully(topology, second)
