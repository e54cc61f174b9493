"""The worker runtime: everything that runs jobs, whatever sent them (workers/dispatch.py only sends).

    worker_identity(name)         -> "name@host:pid", the id a worker writes into the jobs it claims
    parse_worker_identity(id)     -> (name, host, pid), or None for an id of another form
    local_worker_dead(id)         -> True when the id names a process on this host that no longer exists
    sweep(store, settings)        -> jobs of dead workers re-queued (or failed once out of attempts)
    cleanup_scratch(settings, store) -> attempt directories no running attempt owns, removed
    worker_loop(ctx)              -> pull queued jobs and run each through `runner.run_job` until told to stop
    run_worker(settings, name)    -> one worker process: signals, context, loop (`secateurs worker`, local workers)

A local worker (`secateurs serve`, dispatcher `local`) and a standalone one (`secateurs worker`, dispatcher `none`)
run the same loop; a Celery worker (workers/celery_app.py) runs one task per job but cleans up, identifies itself and
is swept the same way. A finished job's webhook goes to the process's sender threads (workers/notify/): the loop
takes the next job at once and, on its way out, gives webhooks still queued one delivery budget to go out.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from datetime import timedelta

from workers import notify, redact
from workers.jobs import JobStatus, utcnow
from workers.runner import RunContext, run_job
from workers.settings import Settings
from workers.store import JobStore, SweepResult

log = logging.getLogger("secateurs.worker")


# -- identity ----------------------------------------------------------------------------------------------------


def worker_identity(name: str = "worker") -> str:
    """This process's worker id: `name@host:pid`."""
    return f"{name}@{os.uname().nodename}:{os.getpid()}"


def parse_worker_identity(worker_id: str) -> tuple[str, str, int] | None:
    """(name, host, pid) of an id made by `worker_identity`, or None when it has another form."""
    name, at, where = worker_id.rpartition("@")
    host, colon, pid = where.rpartition(":")
    if not at or not colon or not host or not pid.isdigit():
        return None
    return name, host, int(pid)


def local_worker_dead(worker_id: str) -> bool:
    """True when `worker_id` names a process on this host that no longer exists."""
    parsed = parse_worker_identity(worker_id)
    if parsed is None or parsed[1] != os.uname().nodename:
        return False
    try:
        os.kill(parsed[2], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# -- housekeeping --------------------------------------------------------------------------------------------------


def sweep(store: JobStore, settings: Settings) -> list[SweepResult]:
    """Handle running jobs whose worker died (no heartbeat, or a local pid that is gone) and queued jobs that
    used every attempt. Called at start-up (API) and periodically by every worker and the Celery dispatcher."""
    cutoff = utcnow() - timedelta(seconds=settings.worker.heartbeat_timeout)
    results = store.sweep_stale(cutoff, dead_worker=local_worker_dead) + store.fail_exhausted()
    for r in results:
        log.warning("sweep: job %s was interrupted -> %s", r.job_id, r.status)
    return results


def cleanup_scratch(settings: Settings, store: JobStore) -> list[str]:
    """Remove attempt directories that no running attempt owns (left by a crash); returns what was removed."""
    root = settings.scratch_dir
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    removed = []
    for p in root.iterdir():
        job_id, _, attempt = p.name.rpartition(".")
        job = store.get_job(job_id) if job_id else None
        if job is not None and job.status is JobStatus.RUNNING and str(job.attempts) == attempt:
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


# -- the loop ----------------------------------------------------------------------------------------------------


def worker_loop(ctx: RunContext, *, max_jobs: int | None = None) -> int:
    """Pull and run queued jobs until ctx says stop (or `max_jobs` ran). Returns the number of jobs run."""
    try:
        return _pull_and_run(ctx, max_jobs)
    finally:
        if not notify.drain():
            log.warning("stopping with webhooks still queued; they are not sent")


def _pull_and_run(ctx: RunContext, max_jobs: int | None) -> int:
    settings = ctx.settings
    cleanup_scratch(settings, ctx.store)
    sweep_every = max(0.5, settings.worker.heartbeat_timeout / 3)
    next_sweep = 0.0
    ran = 0
    while not ctx.should_stop() and (max_jobs is None or ran < max_jobs):
        now = time.monotonic()
        if now >= next_sweep:
            next_sweep = now + sweep_every
            try:
                sweep(ctx.store, settings)
            except Exception:  # a failed sweep (database busy) is retried on the next round
                log.exception("sweep failed")
        picked = False
        try:
            for job_id in ctx.store.queued_job_ids(limit=10):
                if ctx.should_stop():
                    break
                if run_job(job_id, ctx) is not None:
                    ran += 1
                    picked = True
                    break
        except Exception:
            log.exception("worker %s: error while running jobs", ctx.worker_id)
            time.sleep(settings.worker.poll_interval)
        if not picked:
            ctx.stop.wait(settings.worker.poll_interval)
    return ran


# -- processes ---------------------------------------------------------------------------------------------------


def run_worker(settings: Settings, name: str = "worker", *, parent_pid: int | None = None) -> int:
    """One worker process: run the loop until SIGTERM, which stops a running job and releases it to the queue
    without spending its attempt. A standalone worker (no `parent_pid`) stops on SIGINT too; a local worker
    ignores it (Ctrl-C reaches the API process, which stops its workers) and stops when its parent is gone.
    Returns the number of jobs run."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN if parent_pid is not None else lambda *_: stop.set())
    alive = (lambda: os.getppid() == parent_pid) if parent_pid is not None else (lambda: True)
    ctx = RunContext.from_settings(settings, worker_identity(name), stop=stop, alive=alive)
    log.info("worker %s pulling jobs from %s", ctx.worker_id, redact.redact(settings.store_url))
    try:
        return worker_loop(ctx)
    finally:
        ctx.store.close()


def local_worker_process(settings: Settings, name: str, parent_pid: int) -> None:
    """Entry point of a local worker process (spawned by dispatch.LocalDispatcher)."""
    # a spawned process: the parent's logging set-up and log record factory are not inherited
    redact.configure_logging(settings.log_level, f"%(asctime)s {name} %(levelname)s %(message)s")
    run_worker(settings, name, parent_pid=parent_pid)
