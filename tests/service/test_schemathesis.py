"""schemathesis against the service's own OpenAPI schema, on the real server (`secateurs serve` in a subprocess):
no generated request gets a 5xx, and every answer matches what the schema documents (status code, content type,
headers, body schema); requests the schema says are invalid are refused.

The example counts are bounded (and derandomized) so that this runs in well under a minute; docs/SERVICE.md shows
how to run a longer session with the schemathesis command line. Operations on a job run twice: with the generated
id (almost always unknown: 404) and with the id of a real, finished job of the caller's tenant.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import Server, key_headers, submit, wait_status

EXAMPLES_PER_OPERATION = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
ONE_SHOT = {
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5}],
    "evaluation": {"latency": False},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(
        tmp_path_factory.mktemp("schemathesis") / "data",
        workers=0,
        env={"SECATEURS_LIMITS__MAX_UPLOAD_BYTES": str(4 * 2**20)},
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def auth(server) -> dict[str, str]:
    return key_headers(server, "fuzz")


@pytest.fixture(scope="module")
def finished_job(server, auth, job_files) -> str:
    """A job of the caller's tenant that has ended (cancelled while queued: no worker runs here)."""
    with server.client(headers=auth) as c:
        job = submit(c, job_files, ONE_SHOT, data=False).json()
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        return wait_status(c, job["id"], "cancelled")["id"]


def _served_schema() -> dict:
    """The document the server serves at /openapi.json (built by the app factory; nothing starts)."""
    from service.main import create_app
    from workers.settings import Settings

    return create_app(Settings()).openapi()


# (schemathesis.pytest.from_fixture, which would load it from the running server, does not work with pytest 9)
schema = schemathesis.openapi.from_dict(_served_schema())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_get_no_server_error_and_answers_match_the_schema(case, server, auth, finished_job):
    case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS)
    if "job_id" in (case.path_parameters or {}) and case.method.upper() != "DELETE":
        case.path_parameters["job_id"] = finished_job
        case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS)


def test_the_schema_tested_is_the_one_the_server_serves(server):
    import httpx

    assert httpx.get(f"{server.url}/openapi.json", timeout=30).json() == _served_schema()


def test_the_service_still_answers_after_the_fuzzing(server, auth, finished_job):
    with server.client(headers=auth) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get(f"/v1/jobs/{finished_job}").json()["status"] == "cancelled"
    assert server.proc.poll() is None
