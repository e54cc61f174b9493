"""Sensitivity and budget jobs over HTTP against the real server and a real worker, on real MNIST digits."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from tests.service.conftest import Server, submit, wait_status
from tests.service.test_api_errors import assert_problem
from tests.service.test_api_lifecycle import sse_events

BUDGET = {
    "steps": [{"kind": "budget", "metric": "accuracy", "max_drop": 0.05, "epochs": 1, "max_trials": 2}],
    "training": {"batch_size": 64},
    "evaluation": {"latency": False},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("search") / "data", workers=1) as srv:
        yield srv


@pytest.mark.slow
def test_a_budget_job_runs_to_done_with_its_trials_in_the_manifest(server, client, job_files, mnist, tmp_path):
    # the upload also holds a test split of held-out digits: measured before and after, never decided on
    n = 300
    with np.load(job_files.data) as f:
        arrays = {k: f[k] for k in f.files}
    data = tmp_path / "with-test.npz"
    np.savez(data, **arrays, x_test=mnist[2][:n], y_test=mnist[3][:n])
    r = submit(client, job_files, BUDGET, data=data)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    events = sse_events(server, job_id, timeout=600)
    assert [d["status"] for k, d in events if k == "status"][-1] == "succeeded"
    progress = [d for k, d in events if k == "progress"]
    assert any(p["phase"] == "sensitivity" and p.get("layer") == "hidden" for p in progress)
    assert {p["trial"] for p in progress if p["phase"] == "budget" and "trial" in p} == {1, 2}
    assert all(p["trials"] == 2 for p in progress if "trial" in p)

    job = client.get(f"/v1/jobs/{job_id}").json()
    manifest = job["manifest"]
    budget = manifest["budget"]
    assert budget["metric"] == "accuracy" and budget["max_drop"] == 0.05 and len(budget["trials"]) == 2
    assert manifest["summary"]["budget_met"] == budget["met"] == any(t["within_budget"] for t in budget["trials"])
    chosen = budget["trials"][budget["chosen"]]
    assert manifest["after"]["params"]["nonzero"] == chosen["nonzero_params"]
    assert manifest["inputs"]["data"]["test_samples"] == n
    test = budget["test"]
    assert test["baseline"] == manifest["before"]["test_evaluation"]["accuracy"]
    assert test["metric"] == manifest["after"]["test_evaluation"]["accuracy"]
    assert manifest["summary"]["budget_met_on_test"] == test["within_budget"]
    names = {a["name"]: a for a in job["artifacts"]}
    assert {"model.keras", "manifest.json", "sensitivity.json", "sensitivity.csv"} <= set(names)
    analysis = client.get(names["sensitivity.json"]["url"]).json()
    assert analysis["metric"] == "accuracy" and {r["layer"] for r in analysis["rows"]} == {"hidden", "predictions"}


@pytest.mark.slow
def test_a_sensitivity_job_returns_its_table_and_leaves_the_model_unchanged(client, job_files):
    spec = {"steps": [{"kind": "sensitivity", "levels": [0.5, 0.9]}], "evaluation": {"latency": False}}
    job_id = submit(client, job_files, spec).json()["id"]
    job = wait_status(client, job_id, "succeeded", timeout=300)
    rows = job["manifest"]["steps"][0]["rows"]
    assert [(r["layer"], r["level"]) for r in rows] == [
        ("hidden", 0.5),
        ("hidden", 0.9),
        ("predictions", 0.5),
        ("predictions", 0.9),
    ]
    assert job["manifest"]["after"]["params"]["nonzero"] == job["manifest"]["before"]["params"]["nonzero"]
    url = next(a["url"] for a in job["artifacts"] if a["name"] == "sensitivity.csv")
    assert client.get(url).text.splitlines()[0] == "layer,level,metric,drop,params,macs"


@pytest.mark.slow
def test_cancelling_a_budget_job_mid_search(client, job_files):
    spec = {**BUDGET, "steps": [{**BUDGET["steps"][0], "epochs": 100, "max_trials": 4}], "training": {"batch_size": 8}}
    job_id = submit(client, job_files, spec).json()["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if (job.get("progress") or {}).get("phase") == "budget" and job["progress"].get("step"):
            break  # inside a trial's training
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.2)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
    job = wait_status(client, job_id, "cancelled", timeout=120)
    assert job["manifest"] is None


@pytest.mark.parametrize(
    "spec, field, says",
    [
        (
            {"steps": [{"kind": "budget", "max_drop": 0.01, "objective": "latency"}]},
            "spec.steps.0.objective",
            "structured",
        ),
        ({"steps": [{"kind": "budget"}]}, "spec.steps.0.max_drop", "required"),
        ({"steps": [{"kind": "sensitivity", "levels": [0.5, 1.2]}]}, "spec.steps.0.levels.1", "less than 1"),
        (
            {"steps": [{"kind": "prune", "target_sparsity": 0.9, "scope": "layer", "allocation": "sensitivity"}]},
            "spec.steps.0.allocation",
            "scope 'global'",
        ),
    ],
)
def test_a_bad_search_spec_is_422_naming_the_field(client, job_files, spec, field, says):
    assert_problem(submit(client, job_files, json.dumps(spec)), 422, "validation_error", field=field, says=says)


def test_a_budget_job_without_data_is_422_naming_data(client, job_files):
    assert_problem(
        submit(client, job_files, BUDGET, data=False), 422, "validation_error", field="data", says="needs a dataset"
    )


def test_the_openapi_examples_include_the_budget_and_sensitivity_specs(server):
    examples = httpx.get(f"{server.url}/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]["examples"]
    budget = examples["budget_within_one_point"]["value"]["spec"]["steps"][0]
    assert budget["kind"] == "budget" and budget["max_drop"] == 0.01
    assert examples["sensitivity_then_allocate"]["value"]["spec"]["steps"][1]["allocation"] == "sensitivity"
    schema = httpx.get(f"{server.url}/v1/schema/jobspec").json()
    assert {"BudgetStep", "SensitivityStep"} <= set(schema["$defs"])
