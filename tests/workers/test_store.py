"""The job store on SQLite and PostgreSQL: conditional transitions, attempts, sweeps, quotas, events, API keys."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from workers.jobs import TRANSITIONS, EventKind, InputFile, JobStatus, NewJob, can_transition, utcnow
from workers.store import QuotaExceeded, TenantQuota

MODEL = InputFile("model", "model.keras", "m.keras", 10, "ab" * 32)


def new_job(tenant="t1", key=None, **kw) -> NewJob:
    return NewJob(
        tenant=tenant, spec={"steps": [{"kind": "finetune"}]}, inputs={"model": MODEL}, idempotency_key=key, **kw
    )


def statuses(store, job_id):
    return [e.data["status"] for e in store.events(job_id) if e.kind is EventKind.STATUS]


def test_create_saves_a_queued_job_with_its_inputs_and_a_status_event(store):
    job, created = store.create_job(new_job(webhook_url="https://example.com/h"), max_attempts=2)
    assert created and job.status is JobStatus.QUEUED and job.attempts == 0 and job.max_attempts == 2
    again = store.get_job(job.id)
    assert again == job
    assert again.inputs["model"] == MODEL and again.webhook_url == "https://example.com/h"
    assert again.created_at.tzinfo is not None
    assert statuses(store, job.id) == ["queued"]


def test_same_idempotency_key_returns_the_first_job_per_tenant(store):
    first, created1 = store.create_job(new_job(key="abc"), max_attempts=2)
    second, created2 = store.create_job(new_job(key="abc"), max_attempts=2)
    other_tenant, created3 = store.create_job(new_job(tenant="t2", key="abc"), max_attempts=2)
    assert created1 and not created2 and created3
    assert second.id == first.id and other_tenant.id != first.id
    assert store.count_jobs("t1") == 1


def test_tenant_scoping_hides_other_tenants_jobs(store):
    job, _ = store.create_job(new_job(tenant="a"), max_attempts=1)
    assert store.get_job(job.id, "a") is not None
    assert store.get_job(job.id, "b") is None
    assert store.request_cancel(job.id, "b") is None
    assert store.get_job(job.id).status is JobStatus.QUEUED


def test_claim_is_conditional_and_counts_the_attempt(store):
    job, _ = store.create_job(new_job(), max_attempts=2)
    claim = store.claim(job.id, "w1@h:1")
    assert claim is not None and claim.attempt == 1 and claim.job.status is JobStatus.RUNNING
    assert store.claim(job.id, "w2@h:2") is None
    assert store.get_job(job.id).worker_id == "w1@h:1"


def test_concurrent_claims_let_exactly_one_worker_win(store):
    job, _ = store.create_job(new_job(), max_attempts=3)
    results = []
    barrier = threading.Barrier(6)

    def claim(i):
        barrier.wait()
        results.append(store.claim(job.id, f"w{i}@h:{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [c for c in results if c is not None]
    assert len(winners) == 1
    assert store.get_job(job.id).attempts == 1


def test_finish_and_heartbeat_only_work_for_the_owning_attempt(store):
    job, _ = store.create_job(new_job(), max_attempts=2)
    claim1 = store.claim(job.id, "w1@h:1")
    # the attempt is declared dead by a sweep and re-run by another worker
    swept = store.sweep_stale(utcnow() + timedelta(seconds=1))
    assert [(r.job_id, r.status) for r in swept] == [(job.id, JobStatus.QUEUED)]
    claim2 = store.claim(job.id, "w2@h:2")
    assert claim2.attempt == 2
    assert store.heartbeat(claim1) is False
    assert store.finish(claim1, JobStatus.SUCCEEDED, manifest={"x": 1}) is False
    assert store.heartbeat(claim2) is True
    assert store.finish(claim2, JobStatus.SUCCEEDED, manifest={"x": 2}) is True
    done = store.get_job(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.manifest == {"x": 2} and done.finished_at is not None
    assert statuses(store, job.id) == ["queued", "running", "queued", "running", "succeeded"]


def test_stale_job_out_of_attempts_is_failed_as_interrupted(store):
    job, _ = store.create_job(new_job(), max_attempts=1)
    store.claim(job.id, "w1@h:1")
    swept = store.sweep_stale(utcnow() + timedelta(seconds=1))
    assert [r.status for r in swept] == [JobStatus.FAILED]
    failed = store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error["code"] == "interrupted"
    assert "attempt 1 of 1" in failed.error["message"] and "max_attempts" in failed.error["message"]
    assert store.claim(job.id, "w2@h:2") is None


def test_sweep_leaves_fresh_heartbeats_alone_unless_the_worker_is_known_dead(store):
    job, _ = store.create_job(new_job(), max_attempts=2)
    store.claim(job.id, "w1@h:1")
    assert store.sweep_stale(utcnow() - timedelta(seconds=60)) == []
    swept = store.sweep_stale(utcnow() - timedelta(seconds=60), dead_worker=lambda w: w == "w1@h:1")
    assert [(r.job_id, r.status) for r in swept] == [(job.id, JobStatus.QUEUED)]


def test_stale_job_with_a_cancel_request_ends_cancelled(store):
    job, _ = store.create_job(new_job(), max_attempts=2)
    store.claim(job.id, "w1@h:1")
    assert store.request_cancel(job.id).cancel_requested
    swept = store.sweep_stale(utcnow() + timedelta(seconds=1))
    assert [r.status for r in swept] == [JobStatus.CANCELLED]


def test_queued_job_that_used_every_attempt_is_failed_not_redelivered(store):
    job, _ = store.create_job(new_job(), max_attempts=1)
    claim = store.claim(job.id, "w1@h:1")
    with store.engine.begin() as conn:  # simulate a crash between a requeue and the attempt check
        from sqlalchemy import update

        from workers.store.sql import jobs

        conn.execute(update(jobs).where(jobs.c.id == job.id).values(status="queued"))
    assert store.claim(job.id, "w2@h:2") is None
    assert [r.status for r in store.fail_exhausted()] == [JobStatus.FAILED]
    assert store.get_job(job.id).error["code"] == "interrupted"
    assert claim.attempt == 1


def test_release_requeues_without_spending_the_attempt(store):
    job, _ = store.create_job(new_job(), max_attempts=1)
    claim = store.claim(job.id, "w1@h:1")
    assert store.release(claim, "worker shut down") is True
    queued = store.get_job(job.id)
    assert queued.status is JobStatus.QUEUED and queued.attempts == 0
    assert store.claim(job.id, "w2@h:2").attempt == 1


def test_retry_runs_the_next_attempt_for_the_owner_only_while_attempts_remain(store):
    job, _ = store.create_job(new_job(), max_attempts=2)
    claim1 = store.claim(job.id, "w1@h:1")
    claim2 = store.retry(claim1, "the job process was killed (SIGKILL) from outside")
    assert claim2 is not None and claim2.attempt == 2 and claim2.worker_id == "w1@h:1"
    running = store.get_job(job.id)
    assert running.status is JobStatus.RUNNING and running.attempts == 2
    assert store.heartbeat(claim1) is False and store.heartbeat(claim2) is True  # the old attempt is fenced off
    assert store.retry(claim1, "again") is None  # not the owner any more
    assert store.retry(claim2, "again") is None  # no attempt left
    assert store.finish(claim2, JobStatus.FAILED, error={"code": "crashed", "message": "x"}) is True
    assert statuses(store, job.id) == ["queued", "running", "running", "failed"]
    assert "attempt 1 ended: the job process was killed (SIGKILL)" in store.events(job.id)[2].data["reason"]
    cancelled, _ = store.create_job(new_job(), max_attempts=3)
    claim = store.claim(cancelled.id, "w1@h:1")
    store.request_cancel(cancelled.id)
    assert store.retry(claim, "killed") is None  # a cancel request is not retried


def test_cancel_of_a_queued_job_is_immediate_and_of_a_running_job_sets_the_flag(store):
    queued, _ = store.create_job(new_job(), max_attempts=2)
    cancelled = store.request_cancel(queued.id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
    assert store.claim(queued.id, "w@h:1") is None

    running, _ = store.create_job(new_job(), max_attempts=2)
    claim = store.claim(running.id, "w@h:1")
    assert store.cancel_requested(running.id) is False
    flagged = store.request_cancel(running.id)
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
    assert store.cancel_requested(running.id) is True
    assert store.finish(claim, JobStatus.CANCELLED, error={"code": "cancelled", "message": "x"})
    assert store.get_job(running.id).status is JobStatus.CANCELLED


@pytest.mark.parametrize("limit", ["max_active_jobs", "max_stored_jobs"])
def test_tenant_quotas_refuse_the_job_over_the_limit_and_keep_nothing(store, limit):
    quota = TenantQuota(
        max_active_jobs=2 if limit == "max_active_jobs" else 10, max_stored_jobs=2 if limit == "max_stored_jobs" else 10
    )
    first, _ = store.create_job(new_job(), max_attempts=1, quota=quota)
    if limit == "max_stored_jobs":  # a finished job still counts against the stored limit
        store.request_cancel(first.id)
    store.create_job(new_job(), max_attempts=1, quota=quota)
    with pytest.raises(QuotaExceeded) as e:
        store.create_job(new_job(), max_attempts=1, quota=quota)
    assert e.value.limit == f"{limit}_per_tenant" and e.value.value == 2
    assert f"limits.{limit}_per_tenant" in e.value.message and "is 2" in e.value.message
    assert store.count_jobs("t1") == 2
    store.create_job(new_job(tenant="t2"), max_attempts=1, quota=quota)  # other tenants are not affected


def test_list_pages_newest_first_with_a_cursor_and_filters_by_status(store):
    ids = [store.create_job(new_job(), max_attempts=1)[0].id for _ in range(5)]
    store.request_cancel(ids[1])
    page1 = store.list_jobs("t1", limit=2)
    page2 = store.list_jobs("t1", limit=2, cursor=page1.next_cursor)
    page3 = store.list_jobs("t1", limit=2, cursor=page2.next_cursor)
    assert [j.id for j in page1.items + page2.items + page3.items] == ids[::-1]
    assert page3.next_cursor is None
    cancelled = store.list_jobs("t1", statuses=[JobStatus.CANCELLED])
    assert [j.id for j in cancelled.items] == [ids[1]]
    assert store.list_jobs("other").items == []


def test_progress_and_events_are_ordered_and_filterable(store):
    job, _ = store.create_job(new_job(), max_attempts=1)
    claim = store.claim(job.id, "w@h:1")
    store.record_progress(claim, {"phase": "prune", "epoch": 1, "loss": 0.5})
    store.record_progress(claim, {"phase": "prune", "epoch": 2, "loss": 0.4})
    store.add_event(job.id, EventKind.LOG, {"message": "hello"})
    events = store.events(job.id)
    assert [e.kind for e in events] == [
        EventKind.STATUS,
        EventKind.STATUS,
        EventKind.PROGRESS,
        EventKind.PROGRESS,
        EventKind.LOG,
    ]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert store.get_job(job.id).progress == {"phase": "prune", "epoch": 2, "loss": 0.4}
    assert [e.data.get("epoch") for e in store.events(job.id, after=events[2].seq)] == [2, None]


def test_counts_and_durations_feed_the_metrics(store):
    a, _ = store.create_job(new_job(), max_attempts=1)
    store.create_job(new_job(), max_attempts=1)
    claim = store.claim(a.id, "w@h:1")
    store.finish(claim, JobStatus.FAILED, error={"code": "x", "message": "y"})
    counts = store.counts_by_status()
    assert counts[JobStatus.QUEUED] == 1 and counts[JobStatus.FAILED] == 1 and counts[JobStatus.RUNNING] == 0
    [(status, seconds)] = store.durations()
    assert status is JobStatus.FAILED and seconds >= 0


def test_delete_removes_the_job_and_its_events(store):
    job, _ = store.create_job(new_job(), max_attempts=1)
    assert store.delete_job(job.id) is True
    assert store.get_job(job.id) is None and store.events(job.id) == []
    assert store.delete_job(job.id) is False


def test_api_keys_are_found_by_hash_and_revoked(store):
    assert store.any_api_key() is False
    rec = store.create_api_key("key_1", "acme", "h" * 64, "ci")
    found, stored_hash = store.find_api_key("h" * 64)
    assert found.tenant == "acme" and found.active and stored_hash == "h" * 64
    assert store.find_api_key("x" * 64) is None
    assert store.revoke_api_key("key_1") is True and store.revoke_api_key("key_1") is False
    assert store.find_api_key("h" * 64)[0].active is False
    assert store.any_api_key() is True  # a revoked key still means keys are configured
    assert [k.id for k in store.list_api_keys()] == [rec.id]


def test_a_sqlite_file_store_is_in_wal_mode_for_every_connection_and_pools_like_the_api_threads(tmp_path):
    from workers.store.sql import SQLITE_POOL_SIZE, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        conns = [engine.connect() for _ in range(3)]  # new connections inherit the file's journal mode
        assert [c.exec_driver_sql("PRAGMA journal_mode").scalar() for c in conns] == ["wal"] * 3
        assert [c.exec_driver_sql("PRAGMA foreign_keys").scalar() for c in conns] == [1] * 3
        for c in conns:
            c.close()
        assert engine.pool.size() == SQLITE_POOL_SIZE >= 40  # anyio's default thread pool: 40 threads
    finally:
        engine.dispose()


def test_the_request_fingerprint_is_kept_with_the_job_and_found_by_its_idempotency_key(store):
    job, _ = store.create_job(new_job(key="fp", fingerprint="f" * 64), max_attempts=1)
    assert job.request_fingerprint == "f" * 64
    assert store.find_by_idempotency_key("t1", "fp").request_fingerprint == "f" * 64
    # a concurrent create with the same key answers the first job, with the first request's fingerprint
    again, created = store.create_job(new_job(key="fp", fingerprint="0" * 64), max_attempts=1)
    assert not created and again.id == job.id and again.request_fingerprint == "f" * 64


def test_an_admin_key_is_stored_as_one(store):
    store.create_api_key("key_a", "ops", "a" * 64, "prometheus", admin=True)
    store.create_api_key("key_t", "acme", "t" * 64)
    assert store.find_api_key("a" * 64)[0].admin is True and store.find_api_key("t" * 64)[0].admin is False


def test_a_store_made_before_the_added_columns_gets_them_at_start_up_and_keeps_its_rows(store_url, store):
    """Stores of an earlier release lack jobs.request_fingerprint and api_keys.admin: opening one adds them (no
    migration tool), and its rows read as 'no fingerprint' and 'not an admin'."""
    from sqlalchemy import inspect

    from workers.store import open_store
    from workers.store.sql import ADDED_COLUMNS

    job, _ = store.create_job(new_job(key="old"), max_attempts=1)
    store.create_api_key("key_old", "acme", "o" * 64)
    with store.engine.begin() as conn:
        for table, names in ADDED_COLUMNS.items():
            for name in names:
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {name}")
    assert "request_fingerprint" not in {c["name"] for c in inspect(store.engine).get_columns("jobs")}
    reopened = open_store(store_url)
    try:
        assert reopened.find_by_idempotency_key("t1", "old").request_fingerprint is None
        assert reopened.find_api_key("o" * 64)[0].admin is False
    finally:
        reopened.close()
    third = open_store(store_url)  # a second start finds them present
    try:
        assert third.get_job(job.id).id == job.id
    finally:
        third.close()


def test_every_status_change_of_a_job_is_one_jobs_transitions_allows(store):
    """Jobs through every kind of change the store makes; each change between status events is in TRANSITIONS."""
    job, _ = store.create_job(new_job(), max_attempts=3)
    assert store.release(store.claim(job.id, "w@h:1"), reason="stopping")
    store.claim(job.id, "w@h:1")
    assert store.sweep_stale(utcnow() + timedelta(seconds=1))  # its worker stopped: queued again
    claim = store.retry(store.claim(job.id, "w@h:1"), reason="killed")
    assert store.finish(claim, JobStatus.SUCCEEDED)
    cancelled, _ = store.create_job(new_job(), max_attempts=1)
    store.request_cancel(cancelled.id)
    exhausted, _ = store.create_job(new_job(), max_attempts=1)
    store.claim(exhausted.id, "w@h:1")
    assert store.sweep_stale(utcnow() + timedelta(seconds=1))  # out of attempts: failed
    for job_id in (job.id, cancelled.id, exhausted.id):
        seen = [JobStatus(s) for s in statuses(store, job_id)]
        changes = [(a, b) for a, b in zip(seen, seen[1:]) if a != b]
        assert changes and all(can_transition(a, b) for a, b in changes), changes
    assert statuses(store, job.id) == [
        "queued",
        "running",
        "queued",
        "running",
        "queued",
        "running",
        "running",
        "succeeded",
    ]


def test_the_store_refuses_a_status_change_that_transitions_does_not_list(store, monkeypatch):
    job, _ = store.create_job(new_job(), max_attempts=1)
    monkeypatch.setitem(TRANSITIONS, JobStatus.QUEUED, frozenset({JobStatus.CANCELLED}))
    with pytest.raises(ValueError, match="from queued to running"):
        store.claim(job.id, "w@h:1")
    assert store.get_job(job.id).status is JobStatus.QUEUED
    assert store.request_cancel(job.id).status is JobStatus.CANCELLED
