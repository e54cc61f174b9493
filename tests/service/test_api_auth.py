"""API keys and tenants: keys from the real `secateurs keys` command, 401 without a valid key, 404 across tenants."""

from __future__ import annotations

import pytest

from tests.service.conftest import Server, keys, submit, wait_status

ONE_SHOT = {
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5}],
    "evaluation": {"latency": False},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("auth") / "data", workers=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def tenants(server):
    made = {}
    for tenant in ("acme", "globex"):
        r = keys(server, "create", "--tenant", tenant, "--name", f"{tenant} ci")
        assert r.returncode == 0, r.stderr
        key = r.stdout.strip()
        assert key.startswith("sct_") and len(key) > 40 and tenant in r.stderr
        made[tenant] = key
    return made


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def acme_job(server, tenants, job_files):
    with server.client(headers=bearer(tenants["acme"])) as c:
        job = submit(c, job_files, ONE_SHOT, data=False).json()
        return wait_status(c, job["id"], "succeeded")


def test_keys_are_stored_hashed_and_listed_without_the_secret(server, tenants):
    listed = keys(server, "list")
    assert listed.returncode == 0
    assert "acme" in listed.stdout and "globex" in listed.stdout
    for key in tenants.values():
        assert key not in listed.stdout
    db = (server.data_dir / "jobs.db").read_bytes()
    assert tenants["acme"].encode() not in db


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("POST", "/v1/preflight"),
        ("GET", "/v1/jobs/job_x"),
        ("GET", "/metrics"),
        ("GET", "/v1/schema/jobspec"),
    ],
)
def test_every_route_but_the_probes_needs_a_key_once_keys_exist(server, tenants, method, path):
    with server.client() as c:
        r = c.request(method, path)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "API key is required" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_an_unknown_key_or_a_malformed_header_is_401(server, tenants):
    with server.client() as c:
        assert c.get("/v1/jobs", headers=bearer("sct_not-a-real-key")).json()["detail"] == "unknown API key"
        r = c.get("/v1/jobs", headers={"Authorization": "Basic abc"})
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]


def test_the_key_works_as_bearer_or_x_api_key(server, tenants):
    with server.client() as c:
        assert c.get("/v1/jobs", headers=bearer(tenants["acme"])).status_code == 200
        assert c.get("/v1/jobs", headers={"X-API-Key": tenants["acme"]}).status_code == 200


@pytest.mark.parametrize(
    "method, suffix",
    [
        ("GET", ""),
        ("GET", "?wait=1"),
        ("POST", "/cancel"),
        ("DELETE", ""),
        ("GET", "/logs"),
        ("GET", "/events"),
        ("GET", "/artifacts/model.keras"),
    ],
)
def test_another_tenants_job_is_404_for_every_operation(server, tenants, acme_job, method, suffix):
    with server.client(headers=bearer(tenants["globex"])) as c:
        r = c.request(method, f"/v1/jobs/{acme_job['id']}{suffix}")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
    with server.client(headers=bearer(tenants["acme"])) as c:
        assert c.get(f"/v1/jobs/{acme_job['id']}").json()["status"] == "succeeded"  # nothing happened to it
        assert c.get(f"/v1/jobs/{acme_job['id']}/artifacts/model.keras").status_code == 200


def test_a_tenant_lists_only_its_own_jobs(server, tenants, acme_job):
    with server.client(headers=bearer(tenants["globex"])) as c:
        assert acme_job["id"] not in [j["id"] for j in c.get("/v1/jobs").json()["items"]]
    with server.client(headers=bearer(tenants["acme"])) as c:
        assert acme_job["id"] in [j["id"] for j in c.get("/v1/jobs").json()["items"]]


def test_a_revoked_key_is_401_at_once(server, job_files):
    created = keys(server, "create", "--tenant", "initech")
    key = created.stdout.strip()
    key_id = created.stderr.split()[1]
    with server.client(headers=bearer(key)) as c:
        assert c.get("/v1/jobs").status_code == 200
        revoked = keys(server, "revoke", key_id)
        assert revoked.returncode == 0 and key_id in revoked.stdout
        r = c.get("/v1/jobs")
        assert r.status_code == 401 and f"{key_id} was revoked" in r.json()["detail"]
        assert submit(c, job_files, ONE_SHOT, data=False).status_code == 401
    assert keys(server, "revoke", key_id).returncode == 2  # already revoked: named as an error


def test_keys_create_refuses_a_bad_tenant_name(server):
    r = keys(server, "create", "--tenant", "../etc")
    assert r.returncode == 2 and "tenant" in r.stderr


def test_metrics_need_an_admin_key_a_tenant_key_is_403(server, tenants):
    """/metrics counts every tenant's jobs: a tenant key may not read them, a key made with --admin may."""
    with server.client(headers=bearer(tenants["globex"])) as c:
        r = c.get("/metrics")
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert "admin" in r.json()["detail"] and "secateurs_jobs" not in r.text
    created = keys(server, "create", "--tenant", "ops", "--name", "prometheus", "--admin")
    assert created.returncode == 0 and "admin" in created.stderr
    with server.client(headers=bearer(created.stdout.strip())) as c:
        r = c.get("/metrics")
        assert r.status_code == 200 and 'secateurs_jobs{status="queued"}' in r.text
        assert c.get("/v1/jobs").json()["items"] == []  # an admin key is still a tenant's key for jobs
    listed = keys(server, "list", "--json")
    admins = {k["tenant"]: k["admin"] for k in __import__("json").loads(listed.stdout)}
    assert admins["ops"] is True and admins["acme"] is False
