"""Dispatch: the worker loop pulls queued jobs oldest first through run_job; sweeps find jobs of dead workers;
the local dispatcher restarts a worker process that died and stops its workers gracefully."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time


from tests.workers.jobfiles import QUICK_SPEC
from workers.dispatch import DISPATCHERS, LocalDispatcher, NullDispatcher, local_worker_dead, make_dispatcher, sweep
from workers.jobs import InputFile, JobStatus, NewJob, worker_identity
from workers.runner import RunContext
from workers.settings import Settings
from workers.store import open_store


def queue_jobs(ctx: RunContext, job_files, n: int, tmp_path) -> list[str]:
    ids = []
    for i in range(n):
        new = NewJob(tenant="t", spec=QUICK_SPEC, inputs={
            "model": InputFile("model", "model.keras", "m.keras", 1, "0" * 64),
            "data": InputFile("data", "data.npz", "d.npz", 1, "0" * 64)})
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
    assert all(j.status is JobStatus.FAILED and j.error["type"] == "resource_limit" for j in jobs)
    assert [j.started_at for j in jobs] == sorted(j.started_at for j in jobs)


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
    assert set(DISPATCHERS) == {"local", "none"}
    assert isinstance(make_dispatcher(Settings(worker={"dispatcher": "none"})), NullDispatcher)
    assert isinstance(make_dispatcher(Settings(), concurrency=0), LocalDispatcher)


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
