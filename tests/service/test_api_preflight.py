"""POST /v1/preflight on the real server (`secateurs serve` in a subprocess): the layer table and the spec's
estimates in one answer, behind the same API keys as the rest of /v1, refusals identical to a job submit's, nothing
kept, and no TensorFlow in the API process (the model is loaded in a bounded child)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests import hostile
from tests.engine.structured.models import residual_functional
from tests.service.conftest import Server, key_headers
from tests.service.test_hostile_uploads import loads_tensorflow

SPEC = {
    "steps": [
        {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8},
        {"kind": "structured", "keep_ratio": 0.5, "round_to": 4},
    ]
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("preflight") / "data", workers=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def auth(server) -> dict[str, str]:
    return key_headers(server, "pre")


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    model = residual_functional()
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    path = tmp_path_factory.mktemp("preflight-model") / "residual.keras"
    model.save(path)
    return path.read_bytes()


def post(client: httpx.Client, path: str, model: tuple[str, bytes] | None, spec=None) -> httpx.Response:
    """A multipart POST (always multipart, even without a model: the spec travels as a plain form part)."""
    parts = {"model": model} if model is not None else {}
    if spec is not None:
        parts["spec"] = (None, spec if isinstance(spec, str) else json.dumps(spec))
    return client.post(path, files=parts)


def assert_nothing_kept(server: Server) -> None:
    assert list((server.data_dir / "tmp").iterdir()) == []


def test_preflight_answers_the_table_and_the_estimates(server, auth, model_bytes):
    with server.client(headers=auth) as c:
        r = post(c, "/v1/preflight", ("my model.keras", model_bytes), SPEC)
        assert r.status_code == 200, r.text
        body = r.json()
        assert c.get("/v1/jobs").json()["items"] == []  # a preflight is no job
    assert body["model"]["file"] == "my model.keras" and body["model"]["class"] == "Functional"
    rows = {row["name"]: row for row in body["layers"]}
    assert rows["stem"]["group"] == rows["conv_b1"]["group"] == rows["stem_bn"]["group"]
    assert rows["out"]["prunable"] is False and rows["out"]["reason"].startswith("spared: output layer")
    assert rows["stem_bn"]["reason"].startswith("no prunable kernel")
    assert sum(row["macs"] for row in body["layers"]) == body["totals"]["macs"]
    first, second = body["steps"]
    assert first["sparsity"] == pytest.approx(0.8, abs=1e-3) and first["params"] == body["totals"]["params"]
    assert second["params"] < 0.5 * body["totals"]["params"] and second["macs"] < body["totals"]["macs"]
    assert body["task"]["loss"] == "sparse_categorical_crossentropy"
    assert_nothing_kept(server)
    assert not loads_tensorflow(server.proc.pid)


def test_preflight_without_a_spec_and_without_a_key(server, auth, model_bytes):
    with server.client() as c:
        r = post(c, "/v1/preflight", ("m.keras", model_bytes))
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    with server.client(headers=auth) as c:
        r = post(c, "/v1/preflight", ("m.keras", model_bytes))
    assert r.status_code == 200, r.text
    assert r.json()["steps"] == [] and r.json()["totals"]["layers"] == 17
    assert not loads_tensorflow(server.proc.pid)


@pytest.mark.parametrize("case", ["hostile_model", "bad_spec", "spec_not_json", "no_model"])
def test_refusals_are_the_same_as_a_job_submits(case, server, auth, model_bytes, tmp_path):
    spec = {"steps": [{"kind": "prune", "target_sparsity": 0.5}]}
    model = ("m.keras", model_bytes)
    if case == "hostile_model":
        model = ("lambda.keras", hostile.keras_lambda(tmp_path, tmp_path / "canary").read_bytes())
    elif case == "bad_spec":
        spec = {"steps": [{"kind": "structured", "keep_ratio": 0}]}
    elif case == "spec_not_json":
        spec = "{steps"
    else:
        model = None
    with server.client(headers=auth) as c:
        job = post(c, "/v1/jobs", model, spec)
        pre = post(c, "/v1/preflight", model, spec)
    assert pre.status_code == job.status_code == 422, pre.text
    a, b = job.json(), pre.json()
    assert {k: b.get(k) for k in ("code", "detail", "errors")} == {k: a.get(k) for k in ("code", "detail", "errors")}
    assert b["instance"] == "/v1/preflight"
    assert not (tmp_path / "canary").exists()
    assert_nothing_kept(server)


def test_a_body_that_is_not_multipart_is_refused_naming_the_route(server, auth):
    with server.client(headers=auth) as c:
        r = c.post("/v1/preflight", json={"model": "x"})
    assert r.status_code == 415
    assert r.json()["detail"].startswith("POST /v1/preflight takes multipart/form-data")
    assert "data=@" not in r.json()["detail"]


def test_the_openapi_document_describes_preflight(server):
    with server.client() as c:
        op = c.get("/openapi.json").json()["paths"]["/v1/preflight"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["required"] == ["model"] and "spec" in form["schema"]["properties"]
    assert op["responses"]["200"]["content"]["application/json"]["example"]["layers"]
    assert {"401", "413", "415", "422"} <= set(op["responses"])
