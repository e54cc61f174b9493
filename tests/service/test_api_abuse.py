"""Abuse of the submit and log routes (issue 10): tiny data with many epochs, a reused Idempotency-Key with another
request, event sequence numbers out of range. The server here runs no workers: accepted jobs stay queued."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.service.conftest import Server, submit
from tests.service.test_api_errors import assert_problem
from tests.workers.jobfiles import QUICK_SPEC

TOO_BIG = str(2**63)  # 9223372036854775808: one past SQLite's (and Python's C) 64-bit integers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("abuse") / "data", workers=0) as srv:  # default limits
        yield srv


CLEAN_JOBS = True  # the `client` fixture (conftest) removes every job after each test


@pytest.fixture(scope="module")
def four_rows(tmp_path_factory, mnist):
    path = tmp_path_factory.mktemp("four") / "four.npz"
    np.savez(path, x_train=mnist[0][:4], y_train=mnist[1][:4])
    return path


# -- epochs: every epoch costs at least limits.min_epoch_samples -------------------------------------------------


def test_a_thousand_epochs_of_four_rows_are_refused_at_submit_naming_the_limit(client, job_files, four_rows):
    spec = {**QUICK_SPEC, "steps": [{"kind": "finetune", "epochs": 1000}]}
    r = submit(client, job_files, spec, data=four_rows)
    body = assert_problem(r, 422, "validation_error", field="limits.max_epoch_samples", says="1000 epochs")
    assert "limits.min_epoch_samples = 50000" in body["detail"] and "50000000" in body["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_few_epochs_of_four_rows_are_still_accepted(client, job_files, four_rows):
    spec = {**QUICK_SPEC, "steps": [{"kind": "finetune", "epochs": 20}]}
    assert submit(client, job_files, spec, data=four_rows).status_code == 202


# -- Idempotency-Key: the same request replays, another one is refused --------------------------------------------


def test_a_reused_idempotency_key_with_another_spec_is_422_naming_the_key(client, job_files):
    headers = {"Idempotency-Key": "abuse-spec"}
    first = submit(client, job_files, QUICK_SPEC, headers=headers)
    assert first.status_code == 202
    other = {**QUICK_SPEC, "steps": [{"kind": "finetune", "epochs": 1}]}
    r = submit(client, job_files, other, headers=headers)
    body = assert_problem(r, 422, "idempotency_key_reused", field="Idempotency-Key", says="'abuse-spec'")
    assert first.json()["id"] in body["detail"]
    assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == [first.json()["id"]]


def test_a_reused_idempotency_key_with_other_files_or_webhook_is_422(client, job_files, four_rows):
    headers = {"Idempotency-Key": "abuse-files"}
    assert submit(client, job_files, QUICK_SPEC, headers=headers).status_code == 202
    assert_problem(
        submit(client, job_files, QUICK_SPEC, headers=headers, data=four_rows),
        422,
        "idempotency_key_reused",
        field="Idempotency-Key",
    )
    assert_problem(
        submit(client, job_files, QUICK_SPEC, headers=headers, extra={"webhook_url": "https://example.com/hook"}),
        422,
        "idempotency_key_reused",
    )


def test_the_same_request_again_replays_the_job_whatever_the_spec_formatting(client, job_files):
    headers = {"Idempotency-Key": "abuse-same"}
    first = submit(client, job_files, json.dumps(QUICK_SPEC), headers=headers)
    again = submit(client, job_files, json.dumps(QUICK_SPEC, indent=4, sort_keys=True), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"


# -- event sequence numbers: bounded -------------------------------------------------------------------------------


@pytest.fixture
def cancelled_job(client, job_files):
    job = submit(client, job_files, QUICK_SPEC).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    return job["id"]


def sse(client: httpx.Client, job_id: str, **kw) -> tuple[int, list[dict]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=30, **kw) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.json()]
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    return r.status_code, events


@pytest.mark.parametrize("after", [TOO_BIG, str(2**31), "99999999999999999999999"])
def test_an_after_out_of_range_on_logs_and_events_is_422_naming_it(client, cancelled_job, after):
    r = client.get(f"/v1/jobs/{cancelled_job}/logs", params={"after": after})
    assert_problem(r, 422, "validation_error", field="after")
    status, body = sse(client, cancelled_job, params={"after": after})
    assert status == 422 and body[0]["errors"][0]["field"] == "after"


def test_the_largest_after_answers_no_events(client, cancelled_job):
    r = client.get(f"/v1/jobs/{cancelled_job}/logs", params={"after": 2**31 - 1})
    assert r.status_code == 200 and r.text == ""


@pytest.mark.parametrize("bad", [TOO_BIG, "²".encode(), "-1", "12abc", "1e3"])
def test_a_bad_last_event_id_is_422_naming_the_header(client, cancelled_job, bad):
    status, body = sse(client, cancelled_job, headers={"Last-Event-ID": bad})
    assert status == 422, body
    assert body[0]["errors"][0]["field"] == "Last-Event-ID" and "Last-Event-ID" in body[0]["detail"]


def test_a_valid_last_event_id_resumes_after_that_event(client, cancelled_job):
    status, events = sse(client, cancelled_job)
    assert status == 200 and [e["status"] for e in events] == ["queued", "cancelled"]
    status, resumed = sse(client, cancelled_job, headers={"Last-Event-ID": str(events[0]["seq"])})
    assert status == 200 and resumed == events[1:]
