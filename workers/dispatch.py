"""Dispatchers: how saved jobs reach a worker, which runs each through `runner.run_job` (workers/worker.py runs
them; this module only sends them).

- `local` (embedded default): `secateurs serve` starts N worker processes (`worker.local_worker_process`). Each
  pulls the oldest queued job ids from the store and calls `run_job`, whose conditional claim makes sure one worker
  wins each job. Workers sweep the store for running jobs whose heartbeat stopped (their worker died): re-queued,
  or failed when out of attempts. A supervisor thread in the API process restarts a worker process that died.
- `none`: the API only saves jobs; standalone `secateurs worker` processes (same loop) run them.
- `celery`: the API sends each saved job's id to a Celery queue (workers/celery_app.py) and `secateurs worker`
  processes are Celery workers whose one task calls `run_job`.

The store is the queue, or with Celery the truth behind it: a job is saved (row committed) before its id is sent,
so a restart or a lost broker loses nothing that was accepted. A CeleryDispatcher sends every queued job at
start-up, and sweeps periodically: jobs of dead workers are re-queued (or failed once out of attempts) and sent
again, and ids that could not be sent (broker unreachable: the submit still answers 202, the job stays queued) are
sent again until the broker takes them. Only the dispatcher's own thread talks to the broker, so a submit never
waits for it; /readyz is 503 while the broker was never reached or is failing. A duplicate message is harmless:
the claim is conditional.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from typing import Protocol

from workers.jobs import JobStatus
from workers.settings import Settings
from workers.store import JobStore
from workers.worker import local_worker_process, sweep

log = logging.getLogger("secateurs.dispatch")


class Dispatcher(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def wake(self, job_id: str) -> None:
        """A job was saved (committed) and may be run now: wake what hands it to a worker. Never waits."""

    def healthy(self) -> bool: ...

    def describe(self) -> dict: ...


class NullDispatcher:
    """The API saves jobs; separate `secateurs worker` processes run them."""

    def __init__(self, settings: Settings, concurrency: int | None = None):
        self.settings = settings

    def start(self) -> None:
        return None

    def stop(self, timeout: float = 30.0) -> None:
        return None

    def wake(self, job_id: str) -> None:
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
        p = self._mp.Process(
            target=local_worker_process, args=(self.settings, name, os.getpid()), name=f"secateurs-{name}", daemon=False
        )
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

    def wake(self, job_id: str) -> None:
        return None  # workers poll the store every worker.poll_interval seconds

    def healthy(self) -> bool:
        with self._lock:
            return self.concurrency == 0 or any(p.is_alive() for p in self._procs.values())

    def describe(self) -> dict:
        with self._lock:
            alive = sum(p.is_alive() for p in self._procs.values())
        return {"kind": "local", "workers": self.concurrency, "alive": alive, "restarts": self.restarts}


class CeleryDispatcher:
    """Sends saved jobs' ids to the Celery queue; Celery workers (`secateurs worker`) run them. `concurrency` is
    ignored: the API starts no workers of its own.

    Only the dispatcher's own thread talks to the broker: `wake` (called by a submit) adds the id to the pending
    set and wakes that thread, so a submit never waits for the broker, reachable or not. The thread sends pending
    ids at once when woken, sweeps every `celery.redispatch_interval` seconds, and while the broker is failing tries
    again once per interval. It also checks the broker at start-up and, when nothing is pending, once per interval,
    so `describe()["broker"]` and `healthy()` (used by /readyz) tell whether the broker was ever reached and whether
    it is failing now."""

    START_UP_LIMIT = 100_000  # queued jobs sent at start-up
    NOT_REACHED = "not reached yet"

    def __init__(self, settings: Settings, concurrency: int | None = None):
        self.settings = settings
        self._app = None
        self._store: JobStore | None = None
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.broker_error: str | None = None  # the last failure, None once the broker answered again
        self._reached = False  # the broker answered at least once since start-up
        self._failed_at: float | None = None  # monotonic time of the last failure (None: not failing)

    def start(self) -> None:
        from workers.celery_app import create_celery_app
        from workers.store import open_store

        self._app = create_celery_app(self.settings)
        self._store = open_store(self.settings.store_url, echo=self.settings.store.echo)
        left = self._store.queued_job_ids(limit=self.START_UP_LIMIT)  # queued before we started: maybe never sent
        with self._lock:
            self._pending.update(left)
        log.info("celery dispatcher: %d queued jobs to send", len(left))
        self._thread = threading.Thread(target=self._run, name="celery-dispatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.settings.celery.redispatch_interval
        next_sweep = 0.0
        while not self._stopping.is_set():
            self._woken.clear()
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + interval
                    self.redispatch()
                elif self._may_contact_broker():
                    self.send_pending()
            except Exception:  # a failed round (database busy) is retried on the next one
                log.exception("celery dispatcher: sweep failed")
            self._woken.wait(max(0.0, next_sweep - time.monotonic()))

    def _may_contact_broker(self) -> bool:
        """False while the broker is failing and its last failure is less than one interval old."""
        with self._lock:
            failed_at = self._failed_at
        return failed_at is None or time.monotonic() - failed_at >= self.settings.celery.redispatch_interval

    def redispatch(self) -> list[str]:
        """One sweep: re-queue jobs of dead workers (fail those out of attempts), then send every pending id until
        the broker refuses one (with nothing to send, check that the broker answers). Returns the ids sent."""
        results = sweep(self._store, self.settings)
        with self._lock:
            self._pending.update(r.job_id for r in results if r.status is JobStatus.QUEUED)
            idle = not self._pending
        if idle:
            self._check_broker()
            return []
        return self.send_pending()

    def send_pending(self) -> list[str]:
        """Send every pending id, oldest first, until the broker refuses one. Returns the ids sent."""
        with self._lock:
            pending = sorted(self._pending)
        sent = []
        for job_id in pending:
            if self._stopping.is_set() or not self._send(job_id):
                break
            sent.append(job_id)
        return sent

    def _check_broker(self) -> bool:
        """Connect to the broker once (no retries, `celery.publish_timeout`) and record the outcome."""
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=0, timeout=self.settings.celery.publish_timeout)
        except Exception as e:
            self._failed(e, "broker check failed")
            return False
        self._answered()
        return True

    def _send(self, job_id: str) -> bool:
        from workers.celery_app import TASK_NAME

        try:
            self._app.send_task(TASK_NAME, args=[job_id], queue=self.settings.celery.queue, retry=False)
        except Exception as e:  # the broker is unreachable: the job stays queued and is sent again later
            self._failed(e, f"job {job_id} saved but not sent")
            return False
        with self._lock:
            self._pending.discard(job_id)
            self.sent += 1
        self._answered()
        return True

    def _failed(self, e: Exception, what: str) -> None:
        with self._lock:
            first = self._failed_at is None
            self.broker_error = f"{type(e).__name__}: {e}"
            self._failed_at = time.monotonic()
        (log.warning if first else log.debug)(
            "%s: broker unreachable (%s); tried again every %s s",
            what,
            self.broker_error,
            self.settings.celery.redispatch_interval,
        )

    def _answered(self) -> None:
        with self._lock:
            if self._failed_at is not None:
                log.info("broker reachable again")
            self._reached, self.broker_error, self._failed_at = True, None, None

    def wake(self, job_id: str) -> None:
        """Called after the job row was committed: the id is sent by the dispatcher's thread, which this wakes.
        Returns at once, whatever the broker's state (a submit never waits for the broker)."""
        with self._lock:
            self._pending.add(job_id)
        self._woken.set()

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._store is not None:
            self._store.close()
        if self._app is not None:
            self._app.close()

    def broker_state(self) -> str:
        """ "ok", "not reached yet", "never reached: <error>" or "unreachable: <error>"."""
        with self._lock:
            if self.broker_error is not None:
                return f"{'unreachable' if self._reached else 'never reached'}: {self.broker_error}"
            return "ok" if self._reached else self.NOT_REACHED

    def healthy(self) -> bool:
        """True while the broker answers. Jobs are still accepted (saved, and sent once it is back) when it does
        not; readiness says so."""
        return self.broker_state() == "ok"

    def describe(self) -> dict:
        broker = self.broker_state()
        with self._lock:
            return {
                "kind": "celery",
                "queue": self.settings.celery.queue,
                "broker": broker,
                "pending": len(self._pending),
                "sent": self.sent,
            }


DISPATCHERS: dict[str, type] = {"local": LocalDispatcher, "none": NullDispatcher, "celery": CeleryDispatcher}


def make_dispatcher(settings: Settings, **kw) -> Dispatcher:
    try:
        cls = DISPATCHERS[settings.worker.dispatcher]
    except KeyError:
        raise ValueError(
            f"worker.dispatcher {settings.worker.dispatcher!r}: choose one of {sorted(DISPATCHERS)}"
        ) from None
    return cls(settings, **kw)
