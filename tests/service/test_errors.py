"""service/errors.py: the one map from error codes to HTTP statuses, and the problem documents it answers with."""

from __future__ import annotations

import inspect

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import service.errors as service_errors
import workers.errors as errors
from service.errors import STATUS, install_handlers

# what each engine error answered before statuses moved out of workers/: the contract with HTTP clients
ENGINE_STATUSES = {
    errors.ModelRejected: 422,
    errors.UnsupportedFile: 415,
    errors.DataError: 422,
    errors.SpecError: 422,
    errors.ResourceLimit: 413,
    errors.Cancelled: 409,
}


def _classes(module) -> list[type]:
    """The SecateursError classes a module names (workers.errors names the engine's too)."""
    return [c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, errors.SecateursError)]


def _answer(exc: Exception):
    app = FastAPI()
    install_handlers(app)

    @app.get("/boom")
    def boom():
        raise exc

    return TestClient(app, raise_server_exceptions=False).get("/boom")


def test_every_named_error_has_a_status_and_only_the_bare_bases_fall_back_to_500():
    bases = {errors.SecateursError, errors.EngineError, errors.StoreError, service_errors.ServiceError}
    named = [c for c in _classes(service_errors) + _classes(errors) if c not in bases]
    assert named and all(c.code in STATUS for c in named), [c for c in named if c.code not in STATUS]
    assert all(c.code not in STATUS for c in bases)


@pytest.mark.parametrize("cls, status", list(ENGINE_STATUSES.items()))
def test_engine_errors_answer_as_they_always_did(cls, status):
    r = _answer(cls("y_train has 3 rows", field="data"))
    assert r.status_code == status and r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": f"urn:secateurs:problem:{cls.code}",
        "title": r.reason_phrase,
        "status": status,
        "detail": "y_train has 3 rows",
        "code": cls.code,
        "instance": "/boom",
        "errors": [{"field": "data", "message": "y_train has 3 rows"}],
    }


def test_an_internal_engine_error_is_a_500_with_its_code():
    r = _answer(errors.EngineError("inspection failed (exit status 1)"))
    assert r.status_code == 500 and r.json()["code"] == "engine_error" and "errors" not in r.json()


def test_an_unavailable_store_is_a_503_that_says_which_and_hides_the_reason():
    r = _answer(errors.ArtifactStoreUnavailable("s3://bucket/key: connection refused by 10.0.0.7"))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["code"] == "store_unavailable" and "artifact store" in r.json()["detail"]
    assert "10.0.0.7" not in r.text
    r = _answer(errors.StoreUnavailable("postgresql at db:5432 refused"))
    assert r.status_code == 503 and "the job store" in r.json()["detail"] and "db:5432" not in r.text


def test_service_errors_keep_their_headers_and_field_lists():
    r = _answer(service_errors.Unauthorized("no key"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="secateurs"'
    fields = [{"field": "spec.steps.0.epochs", "message": "too many"}, {"field": "spec", "message": "x"}]
    r = _answer(service_errors.Unprocessable("invalid spec", errors=fields))
    assert r.status_code == 422 and r.json()["code"] == "validation_error" and r.json()["errors"] == fields


def test_anything_else_is_a_500_that_says_nothing():
    r = _answer(RuntimeError("secret path /srv/x"))
    assert r.status_code == 500 and r.json()["code"] == "internal_error" and "/srv/x" not in r.text
