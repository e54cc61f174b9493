"""workers.client against a real `secateurs serve` (subprocess, one embedded worker, real TensorFlow jobs on MNIST):
submit, follow over SSE, download with the sha256 check, problem documents, and the retries (503 with Retry-After,
a lost answer to a submit, a corrupted download) through a real HTTP proxy in front of the server."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from tests.service.conftest import Server, free_port
from tests.workers.flaky_proxy import FlakyProxy
from tests.workers.jobfiles import LONG_SPEC, QUICK_SPEC
from workers.client import (
    ApiError,
    ChecksumMismatch,
    Client,
    JobNotFinished,
    RetryPolicy,
    ServerUnreachable,
    WaitTimeout,
)

FAST_RETRY = RetryPolicy(attempts=4, backoff=0.05, max_backoff=2.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("client") / "data", workers=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def done(server, job_files):
    """One job run to the end through the client, with every event it streamed."""
    events = []
    with Client(server.url) as client:
        job = client.submit(job_files.model, job_files.data, QUICK_SPEC)
        submitted = dict(job.doc)
        try:
            job.wait(timeout=600, on_event=events.append)
        except Exception as e:
            raise AssertionError(f"{e!r} after events {events[-5:]}; server log:\n{server.log_tail()}") from e
    return submitted, job.doc, events


@pytest.fixture
def proxy(server):
    p = FlakyProxy(server.url)
    yield p
    p.close()


def test_submit_answers_the_queued_job_with_its_inputs(done, job_files):
    submitted, _, _ = done
    assert submitted["status"] in ("queued", "running")
    assert submitted["inputs"]["model"]["sha256"] == hashlib.sha256(job_files.model.read_bytes()).hexdigest()
    assert submitted["inputs"]["data"]["bytes"] == job_files.data.stat().st_size
    assert submitted["spec"]["steps"][0]["target_sparsity"] == QUICK_SPEC["steps"][0]["target_sparsity"]


def test_wait_follows_the_event_stream_to_the_end(done):
    _, final, events = done
    assert final["status"] == "succeeded" and final["manifest"]["summary"]["sparsity_after"] == pytest.approx(
        0.5, abs=0.02
    )
    statuses = [e.data["status"] for e in events if e.kind == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    assert any(e.kind == "progress" and e.data.get("phase") == "prune" for e in events)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_download_streams_every_artifact_and_checks_its_sha256(server, done, tmp_path):
    import keras

    _, final, _ = done
    with Client(server.url) as client:
        paths = client.download(final["id"], tmp_path / "out")
    by_name = {p.name: p for p in paths}
    assert set(by_name) == {a["name"] for a in final["artifacts"]} and {"model.keras", "manifest.json"} <= set(by_name)
    for art in final["artifacts"]:
        assert hashlib.sha256(by_name[art["name"]].read_bytes()).hexdigest() == art["sha256"]
    assert json.loads(by_name["manifest.json"].read_text())["summary"] == final["manifest"]["summary"]
    assert keras.saving.load_model(by_name["model.keras"]).count_params() > 0
    assert not list((tmp_path / "out").glob(".*"))  # no partial files left


def test_a_corrupted_download_is_fetched_again_and_a_persistent_one_raises(proxy, done, tmp_path):
    _, final, _ = done
    path = f"/v1/jobs/{final['id']}/artifacts/model.keras"
    with Client(proxy.url, retry=FAST_RETRY) as client:
        proxy.fail("GET", path, "corrupt", times=1)
        [p] = client.download(final["id"], tmp_path / "once", names=["model.keras"])
        assert proxy.outcomes("GET", path) == ["corrupt", "forwarded"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == next(
            a["sha256"] for a in final["artifacts"] if a["name"] == "model.keras"
        )

        proxy.fail("GET", path, "corrupt", times=FAST_RETRY.attempts)
        with pytest.raises(ChecksumMismatch) as e:
            client.download(final["id"], tmp_path / "always", names=["model.keras"])
    assert e.value.name == "model.keras" and e.value.actual != e.value.expected
    assert not (tmp_path / "always" / "model.keras").exists() and not list((tmp_path / "always").iterdir())


def test_submit_is_retried_after_503_honouring_retry_after(proxy, server, job_files):
    proxy.fail("POST", "/v1/jobs", "503", times=2, retry_after="1")
    with Client(proxy.url, retry=FAST_RETRY) as client:
        started = time.monotonic()
        job = client.submit(job_files.model, job_files.data, LONG_SPEC)
        took = time.monotonic() - started
        client.cancel(job.id)
    assert proxy.outcomes("POST", "/v1/jobs") == ["503", "503", "forwarded"]
    assert took >= 2.0  # Retry-After: 1, twice (the policy's own backoff would be 0.05 s)
    assert job.status in ("queued", "running")


def test_a_submit_whose_answer_was_lost_is_retried_with_its_key_and_creates_one_job(proxy, server, job_files):
    with Client(server.url) as direct:
        before = {j.id for j in direct.list()}
    proxy.fail("POST", "/v1/jobs", "drop", times=1)
    with Client(proxy.url, retry=FAST_RETRY) as client:
        job = client.submit(job_files.model, job_files.data, LONG_SPEC, idempotency_key="lost-answer-1")
        client.cancel(job.id)
    assert proxy.outcomes("POST", "/v1/jobs") == ["drop", "forwarded"]
    with Client(server.url) as direct:
        new = {j.id for j in direct.list()} - before
    assert new == {job.id}  # the server saw two submits and created one job


def test_503s_past_the_retries_raise_the_problem(proxy, job_files):
    proxy.fail("GET", "/v1/jobs", "503", times=10, retry_after="0")
    with Client(proxy.url, retry=RetryPolicy(attempts=3, backoff=0.01)) as client, pytest.raises(ApiError) as e:
        client.list()
    assert e.value.status == 503 and e.value.code == "unavailable"
    assert proxy.outcomes("GET", "/v1/jobs") == ["503"] * 3


def test_errors_carry_the_problem_document(server, job_files, tmp_path):
    bad_spec = {"steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 1.5}]}
    not_a_model = tmp_path / "model.keras"
    not_a_model.write_bytes(b"this is not a zip archive" * 10)
    with Client(server.url) as client:
        with pytest.raises(ApiError) as e:
            client.submit(job_files.model, job_files.data, bad_spec)
        assert (e.value.status, e.value.code, e.value.field) == (
            422,
            "validation_error",
            "spec.steps.0.target_sparsity",
        )
        assert "target_sparsity" in e.value.detail and e.value.problem["status"] == 422

        with pytest.raises(ApiError) as e:
            client.submit(not_a_model, job_files.data, QUICK_SPEC)
        assert e.value.status in (415, 422) and e.value.field == "model", e.value.problem

        with pytest.raises(ApiError) as e:
            client.get("job_does_not_exist")
        assert (e.value.status, e.value.code) == (404, "not_found")


def test_a_server_that_is_down_raises_server_unreachable_after_bounded_retries():
    with Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=3, backoff=0.05)) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnreachable) as e:
            client.get("job_x")
    assert time.monotonic() - started < 5
    assert "ConnectError" in str(e.value)


def test_wait_times_out_then_cancel_ends_the_job_and_delete_removes_it(server, job_files, tmp_path):
    with Client(server.url) as client:
        job = client.submit(job_files.model, job_files.data, LONG_SPEC)
        with pytest.raises(WaitTimeout) as e:
            client.wait(job.id, timeout=1.0)
        assert e.value.job_id == job.id and e.value.status in ("queued", "running")
        with pytest.raises(JobNotFinished):
            client.download(job.id, tmp_path)
        client.cancel(job.id)
        ended = client.wait(job.id, timeout=120)
        assert ended.status == "cancelled"
        client.delete(job.id)
        with pytest.raises(ApiError) as gone:
            client.get(job.id)
    assert gone.value.status == 404


def test_list_pages_through_every_job(server, done):
    _, final, _ = done
    with Client(server.url) as client:
        jobs = client.list()
        assert final["id"] in {j.id for j in jobs}
        assert [j.id for j in client.list(status="succeeded")] == [j.id for j in jobs if j.status == "succeeded"]
        assert len(client.list(limit=1)) == 1


def test_preflight_is_called_with_the_model(server, job_files):
    with Client(server.url) as client:
        try:
            answer = client.preflight(job_files.model, QUICK_SPEC)
        except ApiError as e:
            if e.status == 404 and e.code == "not_found" and "no route" in e.detail:
                pytest.skip("this server has no POST /v1/preflight yet (issue 12)")
            raise
    assert isinstance(answer, dict) and answer


def test_retry_after_reads_seconds_and_http_dates_and_pauses_are_bounded():
    from email.utils import formatdate

    from workers.client import _retry_after

    assert _retry_after("3") == 3.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert 8 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10
    policy = RetryPolicy(attempts=6, backoff=0.5, max_backoff=3.0)
    assert policy.pause(1, retry_after=120) == 3.0  # a server's Retry-After is honoured up to max_backoff
    pauses = [policy.pause(n) for n in range(1, 6)]
    assert 0.45 <= pauses[0] <= 0.55 and 0.9 <= pauses[1] <= 1.1 and all(p <= 3.3 for p in pauses)
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
