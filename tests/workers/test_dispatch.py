"""Dispatch: the local dispatcher restarts a worker process that died and stops its workers gracefully; the Celery
dispatcher sends job ids (only) to a real Redis broker, at start-up, when woken by a submit and after a broker
outage, and re-sends jobs of dead workers. (The worker loop and sweeps: test_worker.py; a real Celery worker running
real jobs: tests/e2e/test_celery_postgres_s3.py.)"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time

import pytest

from tests.e2e.servers import TcpProxy, redis_space
from tests.helpers import wait_for
from tests.workers.jobfiles import QUICK_SPEC
from workers.dispatch import DISPATCHERS, CeleryDispatcher, LocalDispatcher, NullDispatcher, make_dispatcher
from workers.jobs import JobStatus, NewJob
from workers.settings import Settings
from workers.store import open_store


def test_make_dispatcher_uses_the_configured_kind():
    assert set(DISPATCHERS) == {"local", "none", "celery"}
    assert isinstance(make_dispatcher(Settings(worker={"dispatcher": "none"})), NullDispatcher)
    assert isinstance(make_dispatcher(Settings(), concurrency=0), LocalDispatcher)
    assert isinstance(make_dispatcher(Settings(worker={"dispatcher": "celery"}), concurrency=0), CeleryDispatcher)


def worker_pids() -> dict[str, int]:
    """The local worker processes this (test) process started, by name."""
    prefix = "secateurs-"
    return {p.name.removeprefix(prefix): p.pid for p in multiprocessing.active_children() if p.name.startswith(prefix)}


def test_the_local_dispatcher_restarts_a_dead_worker_and_stops_gracefully(settings):
    dispatcher = LocalDispatcher(settings, concurrency=2)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 30
        while dispatcher.describe()["alive"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = worker_pids()
        os.kill(before["worker-1"], signal.SIGKILL)
        while (
            worker_pids().get("worker-1") in (None, before["worker-1"]) or dispatcher.describe()["alive"] < 2
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        after = worker_pids()
        assert after["worker-1"] != before["worker-1"] and after["worker-2"] == before["worker-2"]
        assert dispatcher.describe() == {"kind": "local", "workers": 2, "alive": 2, "restarts": 1}
        assert dispatcher.healthy()
    finally:
        started = time.monotonic()
        dispatcher.stop(timeout=20)
    assert time.monotonic() - started < 20
    assert dispatcher.describe()["alive"] == 0


# -- Celery -------------------------------------------------------------------------------------------------------


@pytest.fixture
def redis():
    with redis_space() as space:
        yield space


def celery_settings(settings: Settings, redis, broker_url: str | None = None, **celery) -> Settings:
    return settings.model_copy(
        update={
            "worker": settings.worker.model_copy(update={"dispatcher": "celery"}),
            "celery": settings.celery.model_copy(
                update={"broker_url": broker_url or redis.url, "key_prefix": redis.prefix, "queue": "jobs", **celery}
            ),
        }
    )


def new_job(store, max_attempts: int = 2) -> str:
    return store.create_job(NewJob(tenant="t", spec=QUICK_SPEC, inputs={}), max_attempts=max_attempts)[0].id


@pytest.mark.services
def test_the_celery_dispatcher_sends_jobs_left_queued_at_start_up_then_each_saved_job_by_id_only(
    settings, redis, store_url
):
    settings = celery_settings(
        settings.model_copy(update={"store": settings.store.model_copy(update={"url": store_url})}), redis
    )
    store = open_store(store_url)
    mine = [new_job(store), new_job(store)]
    left = store.queued_job_ids(limit=1000)  # the PostgreSQL database is shared by the session's tests
    assert set(mine) <= set(left)
    dispatcher = make_dispatcher(settings)
    dispatcher.start()
    try:
        messages = wait_for(lambda: len(redis.queued_messages("jobs")) == len(left) and redis.queued_messages("jobs"))
        from workers.celery_app import TASK_NAME

        assert messages == [{"task": TASK_NAME, "args": [i], "kwargs": {}} for i in left]
        job_id = new_job(store)  # the API commits the row, then wakes the dispatcher
        dispatcher.wake(job_id)  # wakes the dispatcher's thread, which sends it at once
        wait_for(lambda: [m["args"] for m in redis.queued_messages("jobs")][-1] == [job_id], timeout=5)
        # the message reaches Redis just before the dispatcher's thread marks it sent
        wait_for(lambda: dispatcher.describe()["pending"] == 0, timeout=5)
        assert dispatcher.describe() == {
            "kind": "celery",
            "queue": "jobs",
            "broker": "ok",
            "pending": 0,
            "sent": len(left) + 1,
        }
        assert dispatcher.healthy()
    finally:
        dispatcher.stop()
        store.close()


@pytest.mark.services
def test_a_broker_outage_at_submit_leaves_the_job_queued_and_it_is_sent_when_the_broker_is_back(settings, redis):
    proxy = TcpProxy("127.0.0.1", int(redis.url.rsplit(":", 1)[1].split("/")[0]))  # down: connections refused
    db = redis.url.rsplit("/", 1)[1]
    settings = celery_settings(
        settings, redis, broker_url=f"redis://127.0.0.1:{proxy.port}/{db}", publish_timeout=2, redispatch_interval=0.2
    )
    store = open_store(settings.store_url)
    dispatcher = CeleryDispatcher(settings)
    dispatcher.start()
    try:
        job_id = new_job(store)
        started = time.monotonic()
        dispatcher.wake(job_id)  # does not raise or wait: the API answers 202 with the saved, queued job
        assert time.monotonic() - started < 0.1
        assert store.get_job(job_id).status is JobStatus.QUEUED and dispatcher.pending() == {job_id}
        wait_for(lambda: dispatcher.describe()["broker"].startswith("never reached: "))
        assert not dispatcher.healthy()
        assert redis.queued_messages("jobs") == []
        proxy.up()
        messages = wait_for(lambda: redis.queued_messages("jobs"), timeout=30)
        assert [m["args"] for m in messages] == [[job_id]]
        assert dispatcher.pending() == set() and dispatcher.describe()["broker"] == "ok" and dispatcher.healthy()
        proxy.down()  # and down again once it was reached: unreachable, found by the idle check
        wait_for(lambda: dispatcher.describe()["broker"].startswith("unreachable: "), timeout=30)
        assert not dispatcher.healthy()
    finally:
        dispatcher.stop()
        proxy.down()
        store.close()


@pytest.mark.services
def test_the_celery_sweep_requeues_the_job_of_a_dead_worker_and_sends_it_again(settings, redis):
    settings = celery_settings(settings, redis, redispatch_interval=600)
    store = open_store(settings.store_url)
    job_id = new_job(store)
    gone = subprocess.Popen(["true"])
    gone.wait()
    store.claim(job_id, f"celery@{os.uname().nodename}:{gone.pid}")  # its worker was killed mid-job
    dispatcher = CeleryDispatcher(settings)
    dispatcher.start()
    try:
        messages = wait_for(lambda: redis.queued_messages("jobs"))
        assert [m["args"] for m in messages] == [[job_id]]
        job = store.get_job(job_id)
        assert job.status is JobStatus.QUEUED and job.attempts == 1  # the attempt the dead worker used counts
    finally:
        dispatcher.stop()
        store.close()
