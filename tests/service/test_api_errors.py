"""Bad uploads and bad specs get the right status and a problem+json body naming what is wrong; limits hold.

The server here runs no workers, so accepted jobs stay queued (and are cancelled and deleted after each test).
"""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest

from tests.service.conftest import Server, submit
from tests.workers.jobfiles import QUICK_SPEC

UPLOAD_LIMIT = 3_000_000
BUDGET = 100_000
ARTIFACT_LIMIT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(
        tmp_path_factory.mktemp("errors") / "data",
        workers=0,
        env={
            "SECATEURS_LIMITS__MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
            "SECATEURS_LIMITS__MAX_EPOCH_SAMPLES": str(BUDGET),
            "SECATEURS_LIMITS__MAX_ACTIVE_JOBS_PER_TENANT": "2",
            "SECATEURS_LIMITS__MAX_STORED_ARTIFACTS_PER_TENANT": str(ARTIFACT_LIMIT),
        },
    ) as srv:
        yield srv


CLEAN_JOBS = True  # the `client` fixture (conftest) removes every job after each test


def assert_problem(r: httpx.Response, status: int, code: str, *, field: str | None = None, says: str = "") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == f"urn:secateurs:problem:{code}" and body["code"] == code
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    assert says in body["detail"], body["detail"]
    return body


def test_a_valid_submit_is_accepted_and_queued(client, job_files):
    r = submit(client, job_files, QUICK_SPEC)
    assert r.status_code == 202 and r.json()["status"] == "queued"


def test_a_body_that_is_not_multipart_is_415(client):
    r = client.post("/v1/jobs", json={"spec": QUICK_SPEC})
    assert_problem(r, 415, "unsupported_media_type", field="content-type", says="multipart/form-data")


def test_a_text_file_as_model_is_415_naming_the_model(client, job_files, tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_text("hello, I am not a model")
    r = submit(client, job_files, QUICK_SPEC, model_path=fake)
    assert_problem(r, 415, "unsupported_file", field="model", says="model")


def test_a_model_with_a_lambda_layer_is_rejected_with_422(client, job_files, tmp_path):
    import keras

    m = keras.Sequential([keras.Input((28, 28)), keras.layers.Lambda(lambda x: x * 2.0, name="double")])
    m.save(tmp_path / "lambda.keras")
    r = submit(client, job_files, QUICK_SPEC, model_path=tmp_path / "lambda.keras")
    body = assert_problem(r, 422, "model_rejected", field="model")
    assert "Lambda" in body["detail"]


def test_a_dataset_that_is_not_npz_is_415_naming_the_data(client, job_files, tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n1,2\n")
    r = submit(client, job_files, QUICK_SPEC, data=csv)
    assert_problem(r, 415, "unsupported_file", field="data", says="data")


def test_a_dataset_without_y_train_is_422_naming_the_array(client, job_files, tmp_path):
    npz = tmp_path / "noy.npz"
    np.savez(npz, x_train=np.zeros((8, 28, 28), "float32"))
    r = submit(client, job_files, QUICK_SPEC, data=npz)
    assert_problem(r, 422, "data_error", field="data.y_train", says="y_train")


def test_a_dataset_with_a_pickled_array_is_422_naming_the_array(client, job_files, tmp_path):
    npz = tmp_path / "obj.npz"
    np.savez(npz, x_train=np.zeros((8, 28, 28), "float32"), y_train=np.array([{"a": 1}] * 8, dtype=object))
    r = submit(client, job_files, QUICK_SPEC, data=npz)
    assert_problem(r, 422, "data_error", field="data", says="y_train")


@pytest.mark.parametrize(
    "spec, field, says",
    [
        (
            {"steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 1.5}]},
            "spec.steps.0.target_sparsity",
            "less than 1",
        ),
        ({"steps": [{"kind": "structured"}]}, "spec.steps.0.keep_ratio", "required"),
        ({"steps": [{"kind": "shrink"}]}, "spec.steps.0", "shrink"),
        ({"steps": []}, "spec.steps", "at least 1"),
        ({"steps": [{"kind": "finetune"}], "bogus": 1}, "spec.bogus", "not permitted"),
        ("{not json", "spec", "JSON"),
        ("", "spec", "required"),
    ],
)
def test_a_bad_spec_is_422_naming_the_field(client, job_files, spec, field, says):
    r = submit(client, job_files, spec if isinstance(spec, str) else json.dumps(spec))
    assert_problem(r, 422, "validation_error", field=field, says=says)


def test_a_spec_as_a_file_part_works_like_a_field(client, job_files):
    files = {
        "model": ("m.keras", job_files.model.read_bytes()),
        "data": ("d.npz", job_files.data.read_bytes()),
        "spec": ("spec.json", json.dumps(QUICK_SPEC).encode(), "application/json"),
    }
    r = client.post("/v1/jobs", files=files)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["steps"][0]["target_sparsity"] == 0.5


def test_a_training_spec_without_data_is_422_naming_data(client, job_files):
    r = submit(client, job_files, QUICK_SPEC, data=False)
    assert_problem(r, 422, "validation_error", field="data", says="needs a dataset")


def test_missing_model_and_unknown_fields_are_422(client, job_files):
    r = client.post(
        "/v1/jobs", files={"data": ("d.npz", job_files.data.read_bytes())}, data={"spec": json.dumps(QUICK_SPEC)}
    )
    assert_problem(r, 422, "validation_error", field="model", says="model file is required")
    r = client.post(
        "/v1/jobs",
        files={"model": ("m.keras", job_files.model.read_bytes()), "weights": ("w.h5", b"123")},
        data={"spec": json.dumps(QUICK_SPEC)},
    )
    assert_problem(r, 422, "validation_error", field="weights", says="unknown form field 'weights'")


def test_an_upload_over_the_limit_is_413_naming_the_limit(client, job_files):
    big = b"\0" * (UPLOAD_LIMIT + 1)
    r = client.post("/v1/jobs", files={"model": ("m.keras", big)}, data={"spec": json.dumps(QUICK_SPEC)})
    assert_problem(r, 413, "payload_too_large", says="limits.max_upload_bytes")
    assert str(UPLOAD_LIMIT) in r.json()["detail"]


def test_a_chunked_upload_over_the_limit_is_cut_off_with_413(server, client):
    """No Content-Length: the limit is enforced while streaming, and the temp file is removed."""
    boundary = "xyz"

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.keras"\r\n\r\n'.encode())
        for _ in range(UPLOAD_LIMIT // 65536 + 8):
            yield b"\1" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/jobs", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_problem(r, 413, "payload_too_large", says="limits.max_upload_bytes")
    assert list((server.data_dir / "tmp").iterdir()) == []


def test_a_training_budget_over_the_limit_is_422_naming_the_limit(client, job_files):
    spec = {**QUICK_SPEC, "steps": [{"kind": "finetune", "epochs": 1000}]}
    r = submit(client, job_files, spec)
    body = assert_problem(r, 422, "validation_error", field="limits.max_epoch_samples", says="1000 epochs")
    per_epoch = 50_000 + 8 * 20  # limits.min_epoch_samples (more than 512 rows) + 8 steps of 64 x step_cost_samples
    assert f"{1000 * per_epoch}" in body["detail"] and str(BUDGET) in body["detail"]


def test_a_webhook_to_a_private_address_is_422(client, job_files):
    r = submit(client, job_files, QUICK_SPEC, extra={"webhook_url": "http://127.0.0.1:9/hook"})
    assert_problem(r, 422, "validation_error", field="webhook_url", says="127.0.0.1")


def test_too_many_active_jobs_is_429_naming_the_limit(client, job_files):
    for _ in range(2):
        assert submit(client, job_files, QUICK_SPEC).status_code == 202
    r = submit(client, job_files, QUICK_SPEC)
    assert_problem(r, 429, "too_many_requests", field="limits.max_active_jobs_per_tenant", says="limit")
    assert len(client.get("/v1/jobs").json()["items"]) == 2


def test_cancel_of_a_queued_job_is_immediate_and_delete_removes_its_files(server, client, job_files):
    job = submit(client, job_files, QUICK_SPEC).json()
    inputs = server.data_dir / "artifacts" / job["id"] / "inputs"
    assert sorted(p.name for p in inputs.iterdir()) == ["data.npz", "model.keras"]
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not inputs.exists()


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/jobs/job_nope"),
        ("POST", "/v1/jobs/job_nope/cancel"),
        ("DELETE", "/v1/jobs/job_nope"),
        ("GET", "/v1/jobs/job_nope/logs"),
        ("GET", "/v1/jobs/job_nope/events"),
        ("GET", "/v1/jobs/job_nope/artifacts/model.keras"),
        ("GET", "/v1/nothing-here"),
    ],
)
def test_unknown_jobs_and_routes_are_404_problems(client, method, path):
    assert_problem(client.request(method, path), 404, "not_found")


def test_an_artifact_a_job_does_not_have_is_404_naming_it(client, job_files):
    job = submit(client, job_files, QUICK_SPEC).json()
    r = client.get(f"/v1/jobs/{job['id']}/artifacts/model.keras")
    assert_problem(r, 404, "not_found", says="no artifact 'model.keras'")
    r = client.get(f"/v1/jobs/{job['id']}/artifacts/..%2F..%2Fjobs.db")
    assert r.status_code == 404


def test_a_wait_over_the_maximum_is_422_naming_the_parameter(client, job_files):
    job = submit(client, job_files, QUICK_SPEC).json()
    assert_problem(client.get(f"/v1/jobs/{job['id']}", params={"wait": 1000}), 422, "validation_error", field="wait")


def test_probes_answer(client):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["store"] == "ok"


def test_the_zip_bomb_guard_of_inspection_reaches_the_client_as_a_problem(client, job_files, tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("metadata.json", "{}")
        zf.writestr("model.weights.h5", io.BytesIO(b"\0" * (20 * 2**20)).getvalue())
    r = submit(client, job_files, QUICK_SPEC, model_path=bomb)
    assert r.status_code in (415, 422) and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == "model"


def test_a_spec_over_its_size_limit_is_413_naming_the_limit_and_its_value(client, job_files):
    huge = json.dumps({**QUICK_SPEC, "padding": "x" * (2**20)})
    r = submit(client, job_files, huge)
    assert_problem(r, 413, "payload_too_large", field="spec", says="limits.max_spec_bytes")
    assert "1048576 bytes" in r.json()["detail"]


def test_an_idempotency_key_over_255_characters_is_422_naming_the_header(client, job_files):
    r = submit(client, job_files, QUICK_SPEC, headers={"Idempotency-Key": "k" * 256})
    assert_problem(r, 422, "validation_error", field="Idempotency-Key")


def test_a_method_a_path_does_not_take_is_405_listing_every_method_it_takes(client, job_files):
    job = submit(client, job_files, QUICK_SPEC).json()
    r = client.put(f"/v1/jobs/{job['id']}")
    assert_problem(r, 405, "method_not_allowed", says="allowed: DELETE, GET")
    assert r.headers["allow"] == "DELETE, GET"


def test_a_tenant_at_its_stored_artifact_limit_is_429_naming_the_limit(server, client, job_files):
    """A finished job of the tenant holds ARTIFACT_LIMIT artifacts (recorded through the job store, as a worker
    records them); the next submit is refused until a job is deleted."""
    from workers.jobs import ArtifactInfo, InputFile, JobStatus, NewJob
    from workers.store import open_store

    store = open_store(f"sqlite:///{server.data_dir / 'jobs.db'}")
    try:
        new = NewJob(
            tenant="default",
            spec={"steps": [{"kind": "finetune"}]},
            inputs={"model": InputFile("model", "model.keras", "m.keras", 1, "0" * 64)},
        )
        store.create_job(new, max_attempts=1)
        claim = store.claim(new.id, "test-worker")
        names = [f"artifact{i}.bin" for i in range(ARTIFACT_LIMIT)]
        assert store.finish(
            claim,
            JobStatus.SUCCEEDED,
            manifest={},
            artifacts=[ArtifactInfo(name=n, bytes=1, sha256="0" * 64) for n in names],
        )
    finally:
        store.close()
    r = submit(client, job_files, QUICK_SPEC)
    body = assert_problem(
        r,
        429,
        "too_many_requests",
        field="limits.max_stored_artifacts_per_tenant",
        says=f"already stores {ARTIFACT_LIMIT} artifacts",
    )
    assert f"is {ARTIFACT_LIMIT}" in body["detail"]
    assert client.delete(f"/v1/jobs/{new.id}").status_code == 204
    assert submit(client, job_files, QUICK_SPEC).status_code == 202
