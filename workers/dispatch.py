"""Dispatchers: how saved jobs reach `runner.run_job`. Every one of them ends in that single function.

- `local` (embedded default): `secateurs serve` starts N worker processes. Each pulls the oldest queued job ids
  from the store and calls `run_job`, whose conditional claim makes sure one worker wins each job. Workers sweep
  the store for running jobs whose heartbeat stopped (their worker died): re-queued, or failed when out of
  attempts. A supervisor thread in the API process restarts a worker process that died.
- `none`: the API only saves jobs; standalone `secateurs worker` processes (same loop) run them.
- `celery`: the API sends each saved job's id to a Celery queue (workers/celery_app.py) and `secateurs worker`
  processes are Celery workers whose one task calls `run_job`.

The store is the queue, or with Celery the truth behind it: a job is saved (row committed) before its id is sent,
so a restart or a lost broker loses nothing that was accepted. A CeleryDispatcher sends every queued job at
start-up, and sweeps periodically: jobs of dead workers are re-queued (or failed once out of attempts) and sent
again, and ids that could not be sent (broker unreachable at submit: the submit still answers 202, the job stays
queued) are sent again until the broker takes them. A duplicate message is harmless: the claim is conditional.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from datetime import timedelta
from typing import Protocol

from workers.jobs import JobStatus, utcnow
from workers.settings import Settings
from workers.store import JobStore, SweepResult

log = logging.getLogger("secateurs.dispatch")


class Dispatcher(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def notify(self, job_id: str) -> None:
        """A job was saved (committed) and may be run now."""

    def healthy(self) -> bool: ...

    def describe(self) -> dict: ...


def local_worker_dead(worker_id: str) -> bool:
    """True when `worker_id` (name@host:pid) names a process on this host that no longer exists."""
    _name, _, where = worker_id.rpartition("@")
    host, _, pid = where.rpartition(":")
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep(store: JobStore, settings: Settings) -> list[SweepResult]:
    """Handle running jobs whose worker died (no heartbeat, or a local pid that is gone) and queued jobs that
    used every attempt. Called at start-up and periodically by every worker."""
    cutoff = utcnow() - timedelta(seconds=settings.worker.heartbeat_timeout)
    results = store.sweep_stale(cutoff, dead_worker=local_worker_dead) + store.fail_exhausted()
    for r in results:
        log.warning("sweep: job %s was interrupted -> %s", r.job_id, r.status)
    return results


def worker_loop(ctx, *, max_jobs: int | None = None) -> int:
    """Pull and run queued jobs until ctx says stop (or `max_jobs` ran). Returns the number of jobs run."""
    from workers.runner import cleanup_scratch, run_job

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


def _worker_process(settings: Settings, name: str, parent_pid: int) -> None:
    """Entry point of a local worker process (spawned). SIGTERM stops it gracefully: a running job is stopped and
    released back to the queue without spending its attempt."""
    from workers import redact
    from workers.jobs import worker_identity
    from workers.runner import RunContext

    redact.install()  # a spawned process: the parent's log record factory is not inherited
    logging.basicConfig(level=settings.log_level.upper(), format=f"%(asctime)s {name} %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the API process, which stops us gracefully
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ctx = RunContext.from_settings(settings, worker_identity(name), stop=stop,
                                   alive=lambda: os.getppid() == parent_pid)
    try:
        worker_loop(ctx)
    finally:
        ctx.store.close()


class NullDispatcher:
    """The API saves jobs; separate `secateurs worker` processes run them."""

    def __init__(self, settings: Settings, concurrency: int | None = None):
        self.settings = settings

    def start(self) -> None:
        return None

    def stop(self, timeout: float = 30.0) -> None:
        return None

    def notify(self, job_id: str) -> None:
        return None

    def healthy(self) -> bool:
        return True

    def describe(self) -> dict:
        return {"kind": "none", "workers": 0}


class LocalDispatcher:
    """N local worker processes, restarted when they die."""

    def __init__(self, settings: Settings, concurrency: int | None = None):
        self.settings = settings
        self.concurrency = settings.worker.concurrency if concurrency is None else concurrency
        self._mp = mp.get_context("spawn")
        self._procs: dict[str, mp.process.BaseProcess] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0

    def _spawn(self, name: str) -> None:
        p = self._mp.Process(target=_worker_process, args=(self.settings, name, os.getpid()),
                             name=f"secateurs-{name}", daemon=False)
        p.start()
        self._procs[name] = p
        log.info("started %s (pid %s)", name, p.pid)

    def start(self) -> None:
        with self._lock:
            for i in range(self.concurrency):
                self._spawn(f"worker-{i + 1}")
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                for name, p in list(self._procs.items()):
                    if not p.is_alive() and not self._stopping.is_set():
                        log.warning("%s (pid %s) died with exit code %s; restarting", name, p.pid, p.exitcode)
                        p.join(0)
                        self.restarts += 1
                        self._spawn(name)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            for p in self._procs.values():
                if p.is_alive():
                    p.terminate()  # SIGTERM: graceful
            for p in self._procs.values():
                p.join(max(0.0, deadline - time.monotonic()))
            for p in self._procs.values():
                if p.is_alive():
                    log.warning("worker pid %s did not stop in %.0f s; killing it", p.pid, timeout)
                    p.kill()
                    p.join(5)

    def notify(self, job_id: str) -> None:
        return None  # workers poll the store every worker.poll_interval seconds

    def pids(self) -> dict[str, int | None]:
        with self._lock:
            return {name: p.pid for name, p in self._procs.items()}

    def healthy(self) -> bool:
        with self._lock:
            return self.concurrency == 0 or any(p.is_alive() for p in self._procs.values())

    def describe(self) -> dict:
        with self._lock:
            alive = sum(p.is_alive() for p in self._procs.values())
        return {"kind": "local", "workers": self.concurrency, "alive": alive, "restarts": self.restarts}


class CeleryDispatcher:
    """Sends saved jobs' ids to the Celery queue; Celery workers (`secateurs worker`) run them. `concurrency` is
    ignored: the API starts no workers of its own."""

    START_UP_LIMIT = 100_000  # queued jobs sent at start-up

    def __init__(self, settings: Settings, concurrency: int | None = None):
        self.settings = settings
        self._app = None
        self._store: JobStore | None = None
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.broker_error: str | None = None

    def start(self) -> None:
        from workers.celery_app import create_celery_app
        from workers.store import open_store

        self._app = create_celery_app(self.settings)
        self._store = open_store(self.settings.store_url, echo=self.settings.store.echo)
        left = self._store.queued_job_ids(limit=self.START_UP_LIMIT)  # queued before we started: maybe never sent
        with self._lock:
            self._pending.update(left)
        log.info("celery dispatcher: %d queued jobs to send", len(left))
        self._thread = threading.Thread(target=self._run, name="celery-redispatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.redispatch()
            except Exception:  # a failed round (database busy) is retried on the next one
                log.exception("celery dispatcher: sweep failed")
            if self._stopping.wait(self.settings.celery.redispatch_interval):
                return

    def redispatch(self) -> list[str]:
        """One sweep: re-queue jobs of dead workers (fail those out of attempts), then send every pending id until
        the broker refuses one. Returns the ids sent."""
        results = sweep(self._store, self.settings)
        with self._lock:
            self._pending.update(r.job_id for r in results if r.status is JobStatus.QUEUED)
            pending = sorted(self._pending)
        sent = []
        for job_id in pending:
            if self._stopping.is_set() or not self._send(job_id):
                break
            sent.append(job_id)
        return sent

    def _send(self, job_id: str) -> bool:
        from workers.celery_app import TASK_NAME

        try:
            with self._send_lock:
                self._app.send_task(TASK_NAME, args=[job_id], queue=self.settings.celery.queue, retry=False)
        except Exception as e:  # the broker is unreachable: the job stays queued and is sent again later
            with self._lock:
                self._pending.add(job_id)
                self.broker_error = f"{type(e).__name__}: {e}"
            log.warning("job %s saved but not sent: broker unreachable (%s); sent again within %s s", job_id,
                        self.broker_error, self.settings.celery.redispatch_interval)
            return False
        with self._lock:
            self._pending.discard(job_id)
            self.sent += 1
            self.broker_error = None
        return True

    def notify(self, job_id: str) -> None:
        """Called after the job row was committed: send its id now (never raises; a failure leaves it pending)."""
        if self._app is None:
            with self._lock:
                self._pending.add(job_id)
            return
        self._send(job_id)

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._store is not None:
            self._store.close()
        if self._app is not None:
            self._app.close()

    def healthy(self) -> bool:
        return True  # jobs are accepted while the broker is down: they are saved and sent when it is back

    def describe(self) -> dict:
        with self._lock:
            return {"kind": "celery", "queue": self.settings.celery.queue,
                    "broker": (f"unreachable: {self.broker_error}" if self.broker_error is not None
                               else "ok" if self.sent else "not contacted yet"),
                    "pending": len(self._pending), "sent": self.sent}


DISPATCHERS: dict[str, type] = {"local": LocalDispatcher, "none": NullDispatcher, "celery": CeleryDispatcher}


def make_dispatcher(settings: Settings, **kw) -> Dispatcher:
    try:
        cls = DISPATCHERS[settings.worker.dispatcher]
    except KeyError:
        raise ValueError(f"worker.dispatcher {settings.worker.dispatcher!r}: choose one of {sorted(DISPATCHERS)}"
                         ) from None
    return cls(settings, **kw)
