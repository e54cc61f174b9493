"""Dispatch: the worker loop pulls queued jobs oldest first through run_job; sweeps find jobs of dead workers;
the local dispatcher restarts a worker process that died and stops its workers gracefully; the Celery dispatcher
sends job ids (only) to a real Redis broker, at start-up, on submit and after a broker outage, and re-sends jobs
of dead workers. (A real Celery worker running real jobs: tests/e2e/test_celery_postgres_s3.py.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time


import pytest

from tests.e2e.servers import TcpProxy, redis_space
from tests.helpers import wait_for
from tests.workers.jobfiles import QUICK_SPEC
from workers.dispatch import (
    DISPATCHERS,
    CeleryDispatcher,
    LocalDispatcher,
    NullDispatcher,
    local_worker_dead,
    make_dispatcher,
    sweep,
)
from workers.jobs import InputFile, JobStatus, NewJob, worker_identity
from workers.runner import RunContext
from workers.settings import Settings
from workers.store import open_store


def input_file(role: str, name: str, path) -> InputFile:
    data = path.read_bytes()
    return InputFile(role, name, path.name, len(data), hashlib.sha256(data).hexdigest())


def queue_jobs(ctx: RunContext, job_files, n: int, tmp_path, webhook_url: str | None = None) -> list[str]:
    ids = []
    for i in range(n):
        new = NewJob(tenant="t", spec=QUICK_SPEC, inputs={
            "model": input_file("model", "model.keras", job_files.model),
            "data": input_file("data", "data.npz", job_files.data)}, webhook_url=webhook_url)
        for name, src in (("model.keras", job_files.model), ("data.npz", job_files.data)):
            copy = tmp_path / f"{i}-{name}"
            shutil.copy(src, copy)
            ctx.artifacts.adopt_input(new.id, name, copy)
        ids.append(ctx.store.create_job(new, max_attempts=2)[0].id)
    return ids


def test_the_worker_loop_runs_queued_jobs_oldest_first_through_run_job(settings, job_files, tmp_path):
    from workers.dispatch import worker_loop

    fast_fail = settings.model_copy(update={"limits": settings.limits.model_copy(update={"job_wall_seconds": 0.5})})
    ctx = RunContext.from_settings(fast_fail, worker_identity("loop"))
    ids = queue_jobs(ctx, job_files, 3, tmp_path)
    assert worker_loop(ctx, max_jobs=3) == 3
    jobs = [ctx.store.get_job(i) for i in ids]
    assert all(j.status is JobStatus.FAILED and j.error["code"] == "resource_limit" for j in jobs)
    assert [j.started_at for j in jobs] == sorted(j.started_at for j in jobs)


def test_a_slow_webhook_receiver_does_not_hold_up_the_next_job(settings, job_files, tmp_path):
    """The receiver trickles its 200 one byte every 0.25 s (22 s per request, each read well within the timeout).
    The worker hands each finished job's webhook to the sender threads and claims the next job at once; each
    delivery is cut off at its deadline (1 s per attempt, 2 attempts), and the loop waits for them on its way out."""
    from tests.workers.receivers import TrickleReceiver
    from workers.dispatch import worker_loop

    slow = settings.model_copy(update={
        "limits": settings.limits.model_copy(update={"job_wall_seconds": 0.5}),
        "webhooks": settings.webhooks.model_copy(update={"allow_private": True, "timeout": 1.0, "max_attempts": 2})})
    receiver = TrickleReceiver(interval_s=0.25)
    try:
        ctx = RunContext.from_settings(slow, worker_identity("loop"))
        first, second = queue_jobs(ctx, job_files, 2, tmp_path, webhook_url=receiver.url())
        started = time.monotonic()
        assert worker_loop(ctx, max_jobs=2) == 2
        took = time.monotonic() - started
        done, next_one = ctx.store.get_job(first), ctx.store.get_job(second)
        assert done.status is JobStatus.FAILED and next_one.status is JobStatus.FAILED
        assert (next_one.started_at - done.finished_at).total_seconds() < 1.0  # not after the webhook
        assert receiver.connections == 2 * 2  # both webhooks were tried, each cut off at its deadline twice
        assert took < 60
    finally:
        receiver.close()


def test_local_worker_dead_recognises_a_gone_process_on_this_host():
    proc = subprocess.Popen(["true"])
    proc.wait()
    host = os.uname().nodename
    assert local_worker_dead(f"w@{host}:{proc.pid}") is True
    assert local_worker_dead(f"w@{host}:{os.getpid()}") is False
    assert local_worker_dead(f"w@another-host:{proc.pid}") is False
    assert local_worker_dead("garbage") is False


def test_sweep_requeues_the_job_of_a_dead_local_worker_at_once(settings, store_url):
    store = open_store(store_url)
    job, _ = store.create_job(NewJob(tenant="t", spec=QUICK_SPEC, inputs={}), max_attempts=2)
    proc = subprocess.Popen(["true"])
    proc.wait()
    store.claim(job.id, f"w@{os.uname().nodename}:{proc.pid}")
    results = sweep(store, settings)  # the heartbeat is fresh; the pid is what tells
    assert [(r.job_id, r.status) for r in results] == [(job.id, JobStatus.QUEUED)]
    store.close()


def test_make_dispatcher_uses_the_configured_kind():
    assert set(DISPATCHERS) == {"local", "none", "celery"}
    assert isinstance(make_dispatcher(Settings(worker={"dispatcher": "none"})), NullDispatcher)
    assert isinstance(make_dispatcher(Settings(), concurrency=0), LocalDispatcher)
    assert isinstance(make_dispatcher(Settings(worker={"dispatcher": "celery"}), concurrency=0), CeleryDispatcher)


def test_the_local_dispatcher_restarts_a_dead_worker_and_stops_gracefully(settings):
    dispatcher = LocalDispatcher(settings, concurrency=2)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 30
        while dispatcher.describe()["alive"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = dispatcher.pids()
        os.kill(before["worker-1"], signal.SIGKILL)
        while (dispatcher.pids()["worker-1"] == before["worker-1"] or dispatcher.describe()["alive"] < 2) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        after = dispatcher.pids()
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
    return settings.model_copy(update={"worker": settings.worker.model_copy(update={"dispatcher": "celery"}),
                                       "celery": settings.celery.model_copy(update={
                                           "broker_url": broker_url or redis.url, "key_prefix": redis.prefix,
                                           "queue": "jobs", **celery})})


def new_job(store, max_attempts: int = 2) -> str:
    return store.create_job(NewJob(tenant="t", spec=QUICK_SPEC, inputs={}), max_attempts=max_attempts)[0].id


def test_the_celery_app_is_configured_from_settings_and_never_eager():
    from workers.celery_app import TASK_NAME, create_celery_app

    settings = Settings(limits={"job_wall_seconds": 100}, celery={"broker_url": "redis://h:1/2", "queue": "q",
                                                                   "time_limit_margin": 50, "key_prefix": "p:"})
    conf = create_celery_app(settings).conf
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 150 and conf.broker_transport_options["visibility_timeout"] > 150
    assert conf.broker_transport_options["global_keyprefix"] == "p:"
    assert conf.broker_url == "redis://h:1/2" and conf.task_default_queue == "q"
    assert conf.task_always_eager is False and conf.accept_content == ["json"]
    assert TASK_NAME in create_celery_app(settings).tasks


def test_importing_the_celery_module_builds_nothing_and_the_celery_entry_finds_a_lazy_app():
    code = ("import sys, workers.celery_app as m; before = 'celery' in sys.modules; app = m.app; "
            "print(before, type(app).__name__, m.TASK_NAME in app.tasks, app is m.celery)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "Celery", "True", "True"]


@pytest.mark.services
def test_the_celery_dispatcher_sends_jobs_left_queued_at_start_up_then_each_saved_job_by_id_only(
        settings, redis, store_url):
    settings = celery_settings(settings.model_copy(update={"store": settings.store.model_copy(
        update={"url": store_url})}), redis)
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
        job_id = new_job(store)  # the API commits the row, then notifies
        dispatcher.notify(job_id)  # wakes the dispatcher's thread, which sends it at once
        wait_for(lambda: [m["args"] for m in redis.queued_messages("jobs")][-1] == [job_id], timeout=5)
        # the message reaches Redis just before the dispatcher's thread marks it sent
        wait_for(lambda: dispatcher.describe()["pending"] == 0, timeout=5)
        assert dispatcher.describe() == {"kind": "celery", "queue": "jobs", "broker": "ok", "pending": 0,
                                         "sent": len(left) + 1}
        assert dispatcher.healthy()
    finally:
        dispatcher.stop()
        store.close()


@pytest.mark.services
def test_a_broker_outage_at_submit_leaves_the_job_queued_and_it_is_sent_when_the_broker_is_back(settings, redis):
    proxy = TcpProxy("127.0.0.1", int(redis.url.rsplit(":", 1)[1].split("/")[0]))  # down: connections refused
    db = redis.url.rsplit("/", 1)[1]
    settings = celery_settings(settings, redis, broker_url=f"redis://127.0.0.1:{proxy.port}/{db}",
                               publish_timeout=2, redispatch_interval=0.2)
    store = open_store(settings.store_url)
    dispatcher = CeleryDispatcher(settings)
    dispatcher.start()
    try:
        job_id = new_job(store)
        started = time.monotonic()
        dispatcher.notify(job_id)  # does not raise or wait: the API answers 202 with the saved, queued job
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


def test_a_celery_worker_needs_at_least_one_process(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")},
           "SECATEURS_DATA_DIR": str(tmp_path), "SECATEURS_WORKER__DISPATCHER": "celery",
           "SECATEURS_WORKER__CONCURRENCY": "0"}
    out = subprocess.run([sys.executable, "-m", "workers.cli", "worker"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "worker.concurrency is 0" in out.stderr


def test_a_task_that_cannot_reach_the_store_puts_its_message_back_instead_of_stranding_the_job(tmp_path,
                                                                                               monkeypatch):
    """The task body called directly (no eager mode, no broker): an unreachable PostgreSQL is a requeue."""
    from types import SimpleNamespace

    from celery.exceptions import Reject

    from tests.e2e.servers import free_port
    from workers import celery_app

    monkeypatch.setattr(celery_app, "REQUEUE_PAUSE_S", 0.0)
    monkeypatch.setattr(celery_app, "_STATE", {})
    settings = Settings(data_dir=tmp_path, store={"url": f"postgresql+psycopg://u@127.0.0.1:{free_port()}/db"})
    task = SimpleNamespace(app=SimpleNamespace(secateurs_settings=settings, secateurs_worker_name="t"))
    with pytest.raises(Reject) as e:
        celery_app.run_job_task(task, "job_1")
    assert e.value.requeue is True and "job_1" in e.value.reason and "unavailable" in e.value.reason
