"""The worker runtime: the loop pulls queued jobs oldest first through run_job and never waits for a webhook;
worker ids name a process and sweeps find jobs of dead workers; scratch directories no attempt owns are removed.
(Dispatchers that start or feed workers: test_dispatch.py; a worker process stopped by SIGTERM: test_redact.py and
tests/service/test_scale_out.py.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time

from tests.workers.jobfiles import QUICK_SPEC
from workers.jobs import InputFile, JobStatus, NewJob
from workers.runner import RunContext
from workers.store import open_store
from workers.worker import (
    cleanup_scratch,
    local_worker_dead,
    parse_worker_identity,
    sweep,
    worker_identity,
    worker_loop,
)


def input_file(role: str, name: str, path) -> InputFile:
    data = path.read_bytes()
    return InputFile(role, name, path.name, len(data), hashlib.sha256(data).hexdigest())


def queue_jobs(ctx: RunContext, job_files, n: int, tmp_path, webhook_url: str | None = None) -> list[str]:
    ids = []
    for i in range(n):
        new = NewJob(
            tenant="t",
            spec=QUICK_SPEC,
            inputs={
                "model": input_file("model", "model.keras", job_files.model),
                "data": input_file("data", "data.npz", job_files.data),
            },
            webhook_url=webhook_url,
        )
        for name, src in (("model.keras", job_files.model), ("data.npz", job_files.data)):
            copy = tmp_path / f"{i}-{name}"
            shutil.copy(src, copy)
            ctx.artifacts.adopt_input(new.id, name, copy)
        ids.append(ctx.store.create_job(new, max_attempts=2)[0].id)
    return ids


def test_the_worker_loop_runs_queued_jobs_oldest_first_through_run_job(settings, job_files, tmp_path):
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

    slow = settings.model_copy(
        update={
            "limits": settings.limits.model_copy(update={"job_wall_seconds": 0.5}),
            "webhooks": settings.webhooks.model_copy(update={"allow_private": True, "timeout": 1.0, "max_attempts": 2}),
        }
    )
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


def test_a_worker_id_names_this_process_and_parses_back():
    worker_id = worker_identity("w-1")
    assert worker_id == f"w-1@{os.uname().nodename}:{os.getpid()}"
    assert parse_worker_identity(worker_id) == ("w-1", os.uname().nodename, os.getpid())
    assert parse_worker_identity("celery@a@host:12") == ("celery@a", "host", 12)  # a name may hold an @
    for other in ("garbage", "w@host", "w@host:x", "w@:12", "host:12"):
        assert parse_worker_identity(other) is None, other


def test_cleanup_scratch_keeps_only_the_directory_of_a_running_attempt(settings):
    store = open_store(settings.store_url)
    try:
        running, _ = store.create_job(NewJob(tenant="t", spec=QUICK_SPEC, inputs={}), max_attempts=2)
        store.claim(running.id, worker_identity("w"))
        queued, _ = store.create_job(NewJob(tenant="t", spec=QUICK_SPEC, inputs={}), max_attempts=2)
        root = settings.scratch_dir
        for name in (f"{running.id}.1", f"{running.id}.0", f"{queued.id}.1", "job_gone.1", "stray"):
            (root / name).mkdir(parents=True)
        (root / "leftover.tmp").write_text("x")
        removed = cleanup_scratch(settings, store)
        assert sorted(removed) == sorted([f"{running.id}.0", f"{queued.id}.1", "job_gone.1", "stray", "leftover.tmp"])
        assert [p.name for p in root.iterdir()] == [f"{running.id}.1"]
        assert root.stat().st_mode & 0o777 == 0o700
    finally:
        store.close()
