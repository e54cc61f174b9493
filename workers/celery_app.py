"""Celery for the scale-out topology: one task, `secateurs.run_job`, whose body is `runner.run_job(job_id, ctx)`.

- The message carries the job id only; the job row (committed before the id is sent) holds everything else.
- Safe to run twice: `run_job` claims the job with a conditional update, so a duplicate or redelivered message
  finds the job running or finished and does nothing.
- `acks_late` with a prefetch of 1: a message is acknowledged when its job has ended, and a worker holds one
  message per pool process. The hard task time limit is `limits.job_wall_seconds + celery.time_limit_margin` (the
  job process itself is stopped at `job_wall_seconds`); the broker's visibility timeout is longer still, so the
  message of a running job is never handed to a second worker.
- A worker that is stopped (SIGTERM) stops its running jobs, which release their claim without spending an
  attempt; their messages are rejected with requeue, so another worker picks them up. A worker that is killed
  leaves its job `running` with a dead worker: the API's CeleryDispatcher sweeps (workers/worker.py) and re-queues
  it, or fails it as interrupted once it used `worker.max_attempts`, and sends it again.
- A task that cannot reach the job store or the artifact store rejects its message with requeue after a pause
  (REQUEUE_PAUSE_S), so an outage never strands a queued job.
- Never eager: `secateurs worker` runs a real Celery worker (prefork pool, `worker.concurrency` processes).
- A finished job's webhook is sent by the pool process's sender threads (workers/notify/): the task returns as
  soon as the job ends; a pool process that stops gives its queued webhooks one delivery budget to go out.

Nothing is built at import: `create_celery_app(settings)` is the factory; `celery -A workers.celery_app worker`
finds a lazily created `app` (settings from the environment).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from workers.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

    from workers.artifacts import ArtifactStore
    from workers.store import JobStore

log = logging.getLogger("secateurs.celery")

TASK_NAME = "secateurs.run_job"
VISIBILITY_MARGIN_S = 600.0  # the broker waits this much longer than the task time limit before redelivering
REQUEUE_PAUSE_S = 5.0  # a task that cannot reach the store or the artifact store waits this long before requeueing


def task_time_limit(settings: Settings) -> float:
    return settings.limits.job_wall_seconds + settings.celery.time_limit_margin


def celery_config(settings: Settings) -> dict:
    """Celery's configuration, every value derived from the settings."""
    c = settings.celery
    transport = {
        "visibility_timeout": int(task_time_limit(settings) + VISIBILITY_MARGIN_S),
        "socket_connect_timeout": c.publish_timeout,
        "socket_timeout": max(c.publish_timeout, 10.0),
    }
    if c.key_prefix:
        transport["global_keyprefix"] = c.key_prefix
    return {
        "broker_url": c.broker_url,
        "broker_transport_options": transport,
        "broker_connection_timeout": c.publish_timeout,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": c.queue,
        "task_acks_late": True,
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": False,  # a killed worker's job is re-queued by the sweep, attempts counted
        "worker_prefetch_multiplier": 1,
        "task_time_limit": task_time_limit(settings),
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_always_eager": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def create_celery_app(settings: Settings, *, worker_name: str = "celery") -> Celery:
    """A Celery app configured from `settings`, with the one task registered. Builds no connection."""
    from celery import Celery

    app = Celery("secateurs", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.secateurs_settings = settings
    app.secateurs_worker_name = worker_name
    app.task(name=TASK_NAME, bind=True)(run_job_task)
    _connect_worker_signals()
    return app


# -- the task ---------------------------------------------------------------------------------------------------


@dataclass
class _ProcessState:
    """What one pool process keeps between tasks: its own store and artifact clients (never shared across a fork)."""

    pid: int
    parent_pid: int = field(default_factory=os.getppid)
    store: JobStore | None = None
    artifacts: ArtifactStore | None = None


_STATE: dict[int, _ProcessState] = {}
_STATE_LOCK = threading.Lock()
# Set by the worker's main process when it starts shutting down; pool processes are forked after it is created and
# see it too. (A signal would not do: billiard replaces a pool process's SIGTERM handler with its own exit.)
_SHUTDOWN: list = []


def _process_state() -> _ProcessState:
    pid = os.getpid()
    with _STATE_LOCK:
        state = _STATE.get(pid)
        if state is None:
            state = _STATE[pid] = _ProcessState(pid)
        return state


def _shutdown_event():
    if not _SHUTDOWN:
        _SHUTDOWN.append(threading.Event())  # not under a Celery worker (a direct call): nothing sets it
    return _SHUTDOWN[0]


def run_job_task(task, job_id: str) -> str | None:
    """The task body: one call into the runner. Returns the job's terminal status, or None when it was not this
    worker's to run (already claimed, finished, cancelled or deleted)."""
    from celery.exceptions import Reject

    from workers.artifacts import open_artifacts
    from workers.jobs import JobStatus
    from workers.runner import RunContext, run_job
    from workers.store import open_store
    from workers.worker import worker_identity

    settings: Settings = task.app.secateurs_settings
    state = _process_state()
    try:
        if state.store is None:
            state.store = open_store(settings.store_url, echo=settings.store.echo)
        if state.artifacts is None:
            state.artifacts = open_artifacts(settings)
        ctx = RunContext(
            settings=settings,
            store=state.store,
            artifacts=state.artifacts,
            worker_id=worker_identity(task.app.secateurs_worker_name),
            stop=_shutdown_event(),
            alive=lambda: os.getppid() == state.parent_pid,
        )
        status = run_job(job_id, ctx)
    except Exception as e:
        # The store or the artifact store failed (unreachable, ...): the job may still be queued, and acking the
        # message would strand it. Back to the queue after a pause; if the job was claimed meanwhile, the copy
        # finds it running and does nothing (the sweep takes care of a claimed job whose attempt broke off).
        log.exception("job %s: could not be run; its message goes back to the queue in %.0f s", job_id, REQUEUE_PAUSE_S)
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(f"job {job_id}: {type(e).__name__}: {e}", requeue=True) from e
    if status is None and ctx.should_stop():
        job = state.store.get_job(job_id)
        if job is not None and job.status is JobStatus.QUEUED:  # released by this stopping worker
            raise Reject(f"job {job_id} released by a stopping worker", requeue=True)
    return None if status is None else str(status)


# -- worker process signals ----------------------------------------------------------------------------------------


def _on_worker_init(sender=None, **_kw) -> None:
    """In the worker's main process, before the pool is forked: the shutdown flag every pool process shares."""
    import multiprocessing

    if getattr(getattr(sender, "app", None), "secateurs_settings", None) is not None:
        _SHUTDOWN[:] = [multiprocessing.get_context("fork").Event()]


def _on_worker_shutting_down(**_kw) -> None:
    """In the main process, at the start of a warm or cold shutdown: running jobs stop and are released."""
    if _SHUTDOWN:
        _SHUTDOWN[0].set()


def _on_process_shutdown(**_kw) -> None:
    """In a pool process that stops: webhooks it queued get one delivery budget to go out (workers/notify/)."""
    from workers import notify

    if not notify.drain():
        log.warning("pool process %s stops with webhooks still queued; they are not sent", os.getpid())


@lru_cache(maxsize=1)
def _connect_worker_signals() -> None:
    from celery import signals

    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False, dispatch_uid="secateurs.process_shutdown")
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="secateurs.worker_init")
    signals.worker_shutting_down.connect(_on_worker_shutting_down, weak=False, dispatch_uid="secateurs.shutting_down")


# -- entry points ------------------------------------------------------------------------------------------------


def run_worker(settings: Settings, *, name: str = "celery") -> int:
    """`secateurs worker` with `worker.dispatcher=celery`: a Celery worker consuming `celery.queue` with
    `worker.concurrency` pool processes. Returns its exit code (0 after a graceful SIGTERM/SIGINT)."""
    if settings.worker.concurrency < 1:
        raise ValueError(f"worker.concurrency is {settings.worker.concurrency}: a Celery worker needs at least 1")
    from workers.artifacts import open_artifacts
    from workers.store import open_store
    from workers.worker import cleanup_scratch

    store = open_store(settings.store_url, echo=settings.store.echo)  # fail now, not at the first job
    try:
        cleanup_scratch(settings, store)
    finally:
        store.close()
    open_artifacts(settings)  # an unreachable bucket is named now (each pool process opens its own client)
    app = create_celery_app(settings, worker_name=name)
    worker = app.Worker(
        hostname=f"{name}@{os.uname().nodename}",
        concurrency=settings.worker.concurrency,
        pool="prefork",
        queues=[settings.celery.queue],
        loglevel=settings.log_level.upper(),
        optimization="fair",
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        quiet=True,
    )
    worker.start()
    return worker.exitcode or 0


@lru_cache(maxsize=1)
def get_app() -> Celery:
    """The app `celery -A workers.celery_app` uses: settings from the environment, built on first use."""
    return create_celery_app(get_settings())


def __getattr__(name: str):
    if name in ("app", "celery"):  # what `celery -A workers.celery_app` looks for
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
