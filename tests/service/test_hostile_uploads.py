"""Every hostile file of tests/hostile.py, sent to the real server (`secateurs serve` in a subprocess) as a plain
multipart upload: refused with its status and a problem naming the member, layer, field or array; no canary; the
service keeps answering; nothing is kept; the API process never loads TensorFlow and its peak memory stays bounded.
Then a job that passes inspection but exhausts memory while it trains fails naming the memory limit, and the same
worker runs the next job; inspections run in child processes under a time limit, so the API answers /healthz
within a second while any upload is inspected, an inspection past the limit is stopped and named, and the API's
memory does not grow with the size or number of simultaneous uploads; a Sequential model too deep to load in
reasonable time is refused at submit naming limits.max_sequential_layers.

The memory bound: the API process's peak resident set (VmHWM) after a warm-up upload that runs every inspection
path, plus API_MEMORY_MARGIN. The margin is below what any inflating attack would cost if it were materialised
(the zip and .npz bombs inflate to 64 MiB, the oversized declarations to TiBs), and far above the noise of a few
MiB measured over a whole hostile run.
"""

from __future__ import annotations

import json
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.errors import STATUS
from tests import hostile
from tests.service.conftest import Server, children, cmdline, submit, wait_status
from tests.workers.jobfiles import QUICK_SPEC

MiB = 2**20
API_MEMORY_MARGIN = 48 * MiB
JOB_MEMORY_BYTES = 3584 * MiB  # TensorFlow starts and trains the example model in this; see the blow-up test

# An HTTP client cannot upload a directory: a SavedModel folder arrives as a tar archive of it.
SERVICE_FRAGMENT = {"saved_model_dir": "is a tar archive, not a Keras model"}


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def loads_tensorflow(pid: int) -> bool:
    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(
        tmp_path_factory.mktemp("hostile") / "data",
        workers=1,
        env={
            "SECATEURS_LIMITS__JOB_MEMORY_BYTES": str(JOB_MEMORY_BYTES),
            "SECATEURS_WORKER__TF_THREADS": "2",
        },
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def memory_limit(server, job_files) -> int:
    """Warm up every inspection path with a valid model and dataset (refused at the last check, so no job runs),
    then fix the bound on the API process's peak memory."""
    with server.client() as c:
        r = submit(c, job_files, QUICK_SPEC, extra={"webhook_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook_url", r.text
    return peak_rss(server.proc.pid) + API_MEMORY_MARGIN


def assert_nothing_kept(server: Server) -> None:
    assert list((server.data_dir / "tmp").iterdir()) == []
    artifacts = server.data_dir / "artifacts"
    assert not artifacts.exists() or list(artifacts.iterdir()) == []


@pytest.mark.parametrize("name", sorted(hostile.HOSTILE))
def test_every_hostile_upload_is_refused_naming_the_problem_and_the_service_carries_on(
    name, server, memory_limit, job_files, tmp_path
):
    attack = hostile.HOSTILE[name]
    canary = tmp_path / "canary" / "canary"
    canary.parent.mkdir()
    attack_dir = tmp_path / "attack"
    attack_dir.mkdir()
    path = attack.generate(attack_dir, canary)
    if path.is_dir():
        archive = attack_dir / f"{path.name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(path, arcname=path.name)
        path = archive
    role = "model" if name in hostile.MODEL_ATTACKS else "data"
    files = {
        "model": (job_files.model.name, job_files.model.read_bytes()),
        "data": (job_files.data.name, job_files.data.read_bytes()),
    }
    files[role] = (path.name, path.read_bytes())

    with server.client() as c:
        r = c.post("/v1/jobs", files=files, data={"spec": json.dumps(QUICK_SPEC)})
        status = STATUS[attack.error.code]
        assert status in (413, 415, 422) and r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["code"] == attack.error.code and body["status"] == status
        assert body["detail"].startswith(f"{role}: ")
        assert SERVICE_FRAGMENT.get(name, attack.fragment) in body["detail"], body["detail"]
        assert [e["field"] for e in body["errors"]] == [role]

        assert c.get("/healthz").json()["status"] == "ok"
        listing = c.get("/v1/jobs")
        assert listing.status_code == 200 and listing.json()["items"] == []
    assert not canary.exists() and list(canary.parent.iterdir()) == []
    assert_nothing_kept(server)
    assert not loads_tensorflow(server.proc.pid)
    peak = peak_rss(server.proc.pid)
    assert peak <= memory_limit, f"API peak RSS {peak / MiB:.1f} MiB > bound {memory_limit / MiB:.1f} MiB"


@pytest.fixture
def inflating_job(tmp_path, mnist) -> tuple[Path, Path, dict]:
    """A model that passes every inspection (20 weights, stock layers) but whose UpSampling2D turns each 28x28 digit
    into 896x896 floats: a batch of 1024 needs 3.3 GB for one activation."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.UpSampling2D(32, name="inflate"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax", name="predictions"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "inflate.keras")
    x, y = mnist[0][:1024, :, :, None], mnist[1][:1024]
    np.savez(tmp_path / "inflate.npz", x_train=x, y_train=y, x_val=x[:8], y_val=y[:8])
    spec = {
        "steps": [{"kind": "finetune", "epochs": 1}],
        "training": {"batch_size": 1024},
        "evaluation": {"latency": False},
    }
    return tmp_path / "inflate.keras", tmp_path / "inflate.npz", spec


@pytest.mark.slow
def test_a_job_that_exhausts_memory_while_training_fails_naming_the_limit_and_the_worker_runs_the_next_job(
    server, memory_limit, job_files, inflating_job
):
    model, data, spec = inflating_job
    workers = server.worker_pids()
    assert len(workers) == 1
    with server.client() as c:
        r = submit(c, job_files, spec, model_path=model, data=data)
        assert r.status_code == 202, r.text
        job = wait_status(c, r.json()["id"], "failed", timeout=180)
        assert job["error"]["type"] in ("resource_limit", "crashed"), job["error"]
        assert "limits.job_memory_bytes" in job["error"]["message"]
        assert str(JOB_MEMORY_BYTES) in job["error"]["message"]
        assert "phase=finetune" in c.get(f"/v1/jobs/{job['id']}/logs").text  # it was training, not starting up

        assert c.get("/healthz").json()["status"] == "ok"
        assert server.worker_pids() == workers
        nxt = submit(c, job_files, QUICK_SPEC)
        assert nxt.status_code == 202
        assert wait_status(c, nxt.json()["id"], "succeeded", timeout=180)["error"] is None
        assert server.worker_pids() == workers
        for done in (job["id"], nxt.json()["id"]):
            assert c.delete(f"/v1/jobs/{done}").status_code == 204
    assert peak_rss(server.proc.pid) <= memory_limit
    assert not loads_tensorflow(server.proc.pid)


def test_a_hostile_model_is_refused_even_when_the_spec_needs_no_data(server, memory_limit):
    """A one-shot spec needs no dataset: the model alone is uploaded, and inspection still refuses it."""
    canary_dir = Path(server.data_dir).parent / "lonely"
    canary_dir.mkdir(exist_ok=True)
    path = hostile.keras_lambda(canary_dir, canary_dir / "canary")
    r = httpx.post(
        f"{server.url}/v1/jobs",
        files={"model": ("lambda.keras", path.read_bytes())},
        data={"spec": json.dumps({"steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5}]})},
        timeout=60,
    )
    assert r.status_code == 422 and r.json()["code"] == "model_rejected"
    assert "layer 'lambda_1' (Lambda) is not allowed" in r.json()["detail"]
    assert not (canary_dir / "canary").exists()


# --------------------------------------------------------------------------- many large uploads at once

ONE_SHOT = {
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5}],
    "evaluation": {"latency": False},
}


@pytest.fixture(scope="module")
def big_config_model(tmp_path_factory) -> Path:
    """A model that passes inspection but whose config.json is about 9 MiB (see hostile.big_config_model)."""
    return hostile.big_config_model(tmp_path_factory.mktemp("big-config"))


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
    srv = Server(
        tmp_path_factory.mktemp("inspections") / "data",
        workers=0,
        env={"SECATEURS_LIMITS__MAX_CONCURRENT_INSPECTIONS": "1"},
    ).start()
    yield srv
    srv.stop()


def _inspected_then_refused(server: Server, model: Path) -> httpx.Response:
    """Submit `model` with a webhook URL the service refuses after inspecting everything: nothing is stored."""
    with server.client() as c:
        return c.post(
            "/v1/jobs",
            files={"model": (model.name, model.read_bytes())},
            data={"spec": json.dumps(ONE_SHOT), "webhook_url": "http://127.0.0.1:9/hook"},
        )


def _inspectors(server: Server) -> list[int]:
    return [pid for pid in children(server.proc.pid) if "workers.engine.inspection.isolated" in cmdline(pid)]


@pytest.mark.slow
def test_inspections_run_outside_the_api_process_so_its_memory_does_not_grow_with_uploads(
    one_at_a_time, big_config_model
):
    """The big config costs some 100 MiB to inspect (see test_isolated): in a child process, not in the API."""
    pid = one_at_a_time.proc.pid
    r = _inspected_then_refused(one_at_a_time, big_config_model)  # warm-up: every code path of a submit
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook_url", r.text
    start = peak_rss(pid)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _inspected_then_refused(one_at_a_time, big_config_model), range(4)))
    assert [a.json()["errors"][0]["field"] for a in answers] == ["webhook_url"] * 4
    grown = peak_rss(pid) - start
    assert grown <= 16 * MiB, f"4 concurrent inspections raised the API's peak RSS by {grown / MiB:.0f} MiB"
    assert_nothing_kept(one_at_a_time)
    assert _inspectors(one_at_a_time) == []


class HealthProbe:
    """Polls /healthz every 50 ms on its own thread and records the slowest answer (or attempt) and the failures."""

    def __init__(self, server: Server):
        self.server, self.worst, self.answers, self.failures = server, 0.0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=120) as c:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst = max(self.worst, time.perf_counter() - started)
                self.answers += ok
                self.failures += not ok
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(150)


@pytest.mark.parametrize(
    "name", ["keras_escaped_quotes_config", "keras_escaped_quotes_metadata", "keras_weights_link_maze", "big_config"]
)
def test_the_api_answers_healthz_within_a_second_while_an_upload_is_inspected(
    name, one_at_a_time, big_config_model, tmp_path
):
    """The escaped-quotes configs held the API's GIL for 48 s and 12 s, the link maze an inspection slot for 180 s;
    the big config is valid and takes the inspector a second or more."""
    if name == "big_config":
        path = big_config_model
    else:
        path = hostile.MODEL_ATTACKS[name].generate(tmp_path, tmp_path / "canary")
    with HealthProbe(one_at_a_time) as probe:
        time.sleep(0.2)
        started = time.perf_counter()
        r = _inspected_then_refused(one_at_a_time, path)
        took = time.perf_counter() - started
    field = "webhook_url" if name == "big_config" else "model"
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, r.text
    assert probe.answers >= 3 and probe.failures == 0
    assert probe.worst < 1.0, f"/healthz took {probe.worst:.1f} s while the upload was inspected ({took:.1f} s)"
    assert took < 30.0


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    """A server that gives each inspection half a second (the big config needs more)."""
    srv = Server(
        tmp_path_factory.mktemp("impatient") / "data", workers=0, env={"SECATEURS_LIMITS__INSPECTION_SECONDS": "0.5"}
    ).start()
    yield srv
    srv.stop()


def test_an_inspection_past_its_time_limit_is_stopped_and_refused_naming_the_setting(impatient, big_config_model):
    with HealthProbe(impatient) as probe:
        started = time.perf_counter()
        r = _inspected_then_refused(impatient, big_config_model)
        took = time.perf_counter() - started
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "model_rejected" and [e["field"] for e in body["errors"]] == ["model"]
    assert body["detail"].startswith("model: ")
    assert "took longer than the limit of 0.5 s (limits.inspection_seconds)" in body["detail"], body["detail"]
    assert took < 10.0
    assert probe.worst < 1.0 and probe.failures == 0
    assert _inspectors(impatient) == []
    assert_nothing_kept(impatient)


def test_a_sequential_model_too_deep_to_load_is_refused_at_submit_naming_the_limit(server, tmp_path):
    """4,000 Dense layers in a Sequential (2.4 MB) pass max_layers but would take Keras hours to load."""
    path = hostile.keras_deep_sequential(tmp_path, tmp_path / "canary")
    started = time.perf_counter()
    with server.client() as c:
        r = c.post("/v1/jobs", files={"model": (path.name, path.read_bytes())}, data={"spec": json.dumps(ONE_SHOT)})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["code"] == "model_rejected"
        assert [e["field"] for e in body["errors"]] == ["limits.max_sequential_layers"]
        assert "Sequential models hold 4001 layers; the limit is 250 (limits.max_sequential_layers)" in body["detail"]
        assert "functional model" in body["detail"]
        assert c.get("/v1/jobs").json()["items"] == []
    assert time.perf_counter() - started < 30.0
    assert_nothing_kept(server)


def test_a_sequential_model_at_the_limit_passes_inspection(server, tmp_path):
    path = hostile.keras_deep_sequential(tmp_path, tmp_path / "canary", layers=249)
    with server.client() as c:
        r = c.post(
            "/v1/jobs",
            files={"model": (path.name, path.read_bytes())},
            data={"spec": json.dumps(ONE_SHOT), "webhook_url": "http://127.0.0.1:9/hook"},
        )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook_url", r.text  # inspected, then refused
