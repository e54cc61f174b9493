"""The full job lifecycle over HTTP against the real server and real workers, on real MNIST."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading

import httpx
import numpy as np
import pytest

from tests.service.conftest import Server, submit, wait_status, wait_training
from tests.workers.jobfiles import LONG_SPEC, QUICK_SPEC
from workers.spec import json_schema

ONE_SHOT = {
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5}],
    "evaluation": {"latency": False},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("lifecycle") / "data", workers=2) as srv:
        yield srv


def sse_events(server, job_id: str, timeout: float = 180.0) -> list[tuple[str, dict]]:
    """Read the job's SSE stream to its end."""
    events, kind = [], None
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    return events


@pytest.mark.slow
def test_full_lifecycle_with_curl_submit_sse_progress_metrics_download_and_delete(server, client, job_files, tmp_path):
    import keras

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(QUICK_SPEC))
    curl = shutil.which("curl")
    assert curl, "the README's walk-through uses curl"
    out = subprocess.run(
        [
            curl,
            "-sS",
            "-D",
            "-",
            "-F",
            f"model=@{job_files.model}",
            "-F",
            f"data=@{job_files.data}",
            "-F",
            f"spec=@{spec_file}",
            f"{server.url}/v1/jobs",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.stdout.replace("\r\n", "\n")
    while text.startswith("HTTP/1.1 100"):  # curl sends Expect: 100-continue for larger uploads
        text = text.partition("\n\n")[2]
    head, _, body = text.partition("\n\n")
    assert head.startswith("HTTP/1.1 202")
    job = json.loads(body)
    location = next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("location:"))
    assert location == f"{server.url}/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running")
    assert job["inputs"]["model"]["sha256"] == hashlib.sha256(job_files.model.read_bytes()).hexdigest()
    assert job["inputs"]["data"]["bytes"] == job_files.data.stat().st_size

    events = sse_events(server, job["id"])
    statuses = [d["status"] for k, d in events if k == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    progress = [d for k, d in events if k == "progress"]
    assert any(p["phase"] == "prune" and p.get("epoch") == 1 and "loss" in p and "sparsity" in p for p in progress)

    done = client.get(location).json()
    assert done["status"] == "succeeded" and done["error"] is None and done["finished_at"]
    assert done["manifest"]["summary"]["sparsity_after"] == pytest.approx(0.5, abs=0.02)
    assert done["progress"]["phase"] == "done"
    arts = {a["name"]: a for a in done["artifacts"]}
    assert {"model.keras", "manifest.json", "report.html"} <= set(arts)

    r = client.get(arts["model.keras"]["url"])
    assert r.status_code == 200
    digest = hashlib.sha256(r.content).hexdigest()
    assert digest == r.headers["x-checksum-sha256"] == arts["model.keras"]["sha256"]
    assert int(r.headers["content-length"]) == arts["model.keras"]["bytes"] == len(r.content)
    (tmp_path / "out.keras").write_bytes(r.content)
    model = keras.saving.load_model(tmp_path / "out.keras")
    assert np.mean(model.get_layer("hidden").kernel.numpy() == 0) == pytest.approx(0.5, abs=0.02)
    assert client.get(arts["manifest.json"]["url"]).json() == done["manifest"]

    logs = client.get(f"{location}/logs")
    assert logs.headers["content-type"].startswith("text/plain")
    assert "status status=running" in logs.text and "status status=succeeded" in logs.text
    assert "progress phase=prune" in logs.text

    metrics = client.get("/metrics").text
    assert 'secateurs_jobs{status="succeeded"}' in metrics
    upload = next(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("secateurs_upload_bytes_total")
    )
    assert upload >= job_files.model.stat().st_size + job_files.data.stat().st_size
    assert 'secateurs_job_duration_seconds_count{status="succeeded"}' in metrics
    assert "secateurs_queue_depth" in metrics
    assert 'secateurs_submits_total{outcome="accepted"}' in metrics

    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert client.get(arts["model.keras"]["url"]).status_code == 404
    assert not (server.data_dir / "artifacts" / job["id"]).exists()


def test_the_report_is_an_inert_html_page_linked_from_the_job_document(client, job_files):
    submitted = submit(client, job_files, ONE_SHOT, data=False).json()
    assert submitted["report"] is None  # nothing to link before the job succeeded
    job = wait_status(client, submitted["id"], "succeeded")
    arts = {a["name"]: a for a in job["artifacts"]}
    assert job["report"] == arts["report.html"]["url"] == f"{job['links']['self']}/artifacts/report.html"
    assert job["manifest"]["report"]["file"] == "report.html"

    page = client.get(job["report"])
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-disposition"].startswith("inline;")  # opens in the browser
    assert page.headers["x-content-type-options"] == "nosniff"
    policy = {d.split()[0]: d.split()[1:] for d in page.headers["content-security-policy"].split(";") if d.strip()}
    assert policy["default-src"] == ["'none'"] and policy["img-src"] == ["data:"]  # no script-src: none either
    assert policy["style-src"] == ["'unsafe-inline'"] and "sandbox" in policy
    digest = hashlib.sha256(page.content).hexdigest()
    assert digest == page.headers["x-checksum-sha256"] == arts["report.html"]["sha256"]
    assert '<section id="verdict"' in page.text and "quality of the compressed model was not checked" in page.text
    assert "prune · no dataset" in page.text  # the subtitle: the steps and the data

    model = client.get(arts["model.keras"]["url"])  # the other artifacts stay downloads, under the same policy
    assert model.headers["content-disposition"].startswith("attachment;")
    assert model.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in model.headers["content-security-policy"]


def test_idempotency_key_makes_a_retried_submit_return_the_same_job(client, job_files):
    headers = {"Idempotency-Key": "retry-me-1"}
    first = submit(client, job_files, ONE_SHOT, data=False, headers=headers)
    second = submit(client, job_files, ONE_SHOT, data=False, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    listed = [j["id"] for j in client.get("/v1/jobs", params={"limit": 200}).json()["items"]]
    assert listed.count(first.json()["id"]) == 1
    wait_status(client, first.json()["id"], "succeeded")


@pytest.mark.slow
def test_concurrent_submissions_each_get_their_own_job_and_all_finish(server, job_files):
    results = []

    def one(i):
        with server.client() as c:
            results.append(submit(c, job_files, {**ONE_SHOT, "seed": i}, data=(i % 2 == 0)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [202] * 4
    ids = {r.json()["id"] for r in results}
    assert len(ids) == 4
    with server.client() as c:
        finished = [wait_status(c, i, "succeeded", timeout=240) for i in ids]
    assert {j["spec"]["seed"] for j in finished} == {0, 1, 2, 3}


@pytest.mark.slow
def test_cancel_while_running_stops_the_job_and_later_cancels_are_idempotent(client, job_files):
    job = submit(client, job_files, LONG_SPEC).json()
    wait_training(client, job["id"])
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True and r.json()["status"] == "running"
    done = wait_status(client, job["id"], "cancelled", timeout=60)
    assert done["error"]["code"] == done["error"]["type"] == "cancelled" and done["artifacts"] == []
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_cancelling_a_finished_job_is_a_conflict(client, job_files):
    job = submit(client, job_files, ONE_SHOT, data=False).json()
    wait_status(client, job["id"], "succeeded")
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert "already succeeded" in r.json()["detail"]


def test_list_filters_by_status_and_pages_with_a_cursor(client, job_files):
    for _ in range(3):
        submit(client, job_files, ONE_SHOT, data=False)
    seen, url, params = [], "/v1/jobs", {"limit": 2}
    while True:
        page = client.get(url, params=params).json()
        seen += [j["id"] for j in page["items"]]
        if not page["next_cursor"]:
            break
        assert page["next"].startswith("http")
        params = {"limit": 2, "cursor": page["next_cursor"]}
    assert len(seen) == len(set(seen)) >= 3
    assert seen == sorted(seen, reverse=True)
    for j in client.get("/v1/jobs", params={"status": ["succeeded", "cancelled"]}).json()["items"]:
        assert j["status"] in ("succeeded", "cancelled")
    bad = client.get("/v1/jobs", params={"status": "sleeping"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"].startswith("status")


@pytest.mark.slow
def test_long_poll_returns_when_the_status_changes(client, job_files):
    job = submit(client, job_files, ONE_SHOT, data=False).json()
    seen = {job["status"]}
    while not seen & {"succeeded", "failed"}:
        r = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30})
        seen.add(r.json()["status"])
    assert "succeeded" in seen


def test_openapi_docs_show_the_spec_with_examples_and_the_schema_is_downloadable(client):
    assert client.get("/docs").status_code == 200
    api = client.get("/openapi.json").json()
    body = api["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["spec"]["$ref"] == "#/components/schemas/JobSpec"
    assert body["examples"] and all("spec" in e["value"] for e in body["examples"].values())
    assert "JobSpec" in api["components"]["schemas"] and "PruneStep" in api["components"]["schemas"]
    assert client.get("/v1/schema/jobspec").json() == json_schema()
