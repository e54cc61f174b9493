"""Job webhooks: the terminal-state payload, and its delivery by a sender thread, off the worker loop.

    send(settings, job)        -> queue the job's webhook (never blocks, never raises); False when not queued
    deliver_webhook(settings, job) -> deliver it now (blocking, at most `budget(settings)` seconds); never raises
    drain(timeout=None)        -> wait until every queued webhook of this process was tried (at shutdown)

A worker that finishes a job hands its webhook to this process's sender and takes the next job at once: a slow
or unreachable receiver costs the sender's threads, never a worker. The sender is a few daemon threads reading one
bounded queue (`webhooks.queue_size`): when the queue is full, the webhook is dropped with a warning rather than
holding up a job. Each delivery ends after about `budget(settings)` seconds at most (every attempt has a deadline,
see delivery.py). The queue is in memory: a webhook queued by a process that is killed is lost (webhooks are
at most once per terminal state; receivers can poll the job). On a graceful stop, workers and the API wait up to
one delivery budget for the queue to drain.

The sender is created per process on first use (after a fork, a child builds its own: threads do not survive a
fork). This module imports nothing heavy: delivery.py (httpx) is imported by the sender thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from workers.jobs import JobRecord, public_error
from workers.settings import Settings

log = logging.getLogger("secateurs.webhooks")

SENDER_THREADS = 4  # deliveries in flight per process: one slow receiver does not hold up the others
BACKOFF_S = 0.5  # first pause between attempts (doubled each time; see delivery.py)


def webhook_payload(job: JobRecord) -> dict:
    """The JSON body of a job's terminal-state webhook."""
    return {
        "event": f"job.{job.status}",
        "job": {
            "id": job.id,
            "status": str(job.status),
            "error": public_error(job.error),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "artifacts": [a.to_dict() for a in job.artifacts],
            "summary": (job.manifest or {}).get("summary"),
        },
    }


def budget(settings: Settings) -> float:
    """The most seconds one delivery takes: `webhooks.max_attempts` deadlines of `webhooks.timeout` and the pauses."""
    from workers.notify.delivery import delivery_budget

    return delivery_budget(settings.webhooks.timeout, settings.webhooks.max_attempts, BACKOFF_S)


def deliver_webhook(settings: Settings, job: JobRecord) -> bool:
    """Deliver the terminal-state webhook of `job` now, in this thread (blocking for up to `budget(settings)`
    seconds). True when the receiver answered 2xx; never raises."""
    try:
        from workers.notify.delivery import deliver

        return bool(
            deliver(
                job.webhook_url,
                webhook_payload(job),
                secret=settings.webhooks.secret,
                timeout=settings.webhooks.timeout,
                retries=settings.webhooks.max_attempts - 1,
                backoff=BACKOFF_S,
                allow_private=settings.webhooks.allow_private,
            )
        )
    except Exception:  # a webhook must never break the sender
        log.exception("job %s: webhook delivery failed", job.id)
        return False


DRAIN_MARGIN_S = 5.0  # a delivery's deadlines bound its requests, not the client set-up around them


class WebhookSender:
    """Daemon threads that deliver queued webhooks, one bounded queue. Counts what it delivered, failed, dropped."""

    def __init__(self, queue_size: int = 1000, threads: int = SENDER_THREADS):
        self.queue: queue.Queue[tuple[Settings, JobRecord]] = queue.Queue(maxsize=max(1, queue_size))
        self.threads = [
            threading.Thread(target=self._run, name=f"webhook-sender-{i + 1}", daemon=True)
            for i in range(max(1, threads))
        ]
        self.delivered = self.failed = self.dropped = 0
        self.budget_s = 0.0  # the longest delivery budget of anything submitted: what a drain waits at most
        self._lock = threading.Lock()
        for t in self.threads:
            t.start()

    def submit(self, settings: Settings, job: JobRecord) -> bool:
        with self._lock:
            self.budget_s = max(self.budget_s, budget(settings))
        try:
            self.queue.put_nowait((settings, job))
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            log.warning(
                "job %s: webhook dropped: %d webhooks are already waiting to be sent (webhooks.queue_size)",
                job.id,
                self.queue.maxsize,
            )
            return False

    def _run(self) -> None:
        while True:
            settings, job = self.queue.get()
            try:
                ok = deliver_webhook(settings, job)
                with self._lock:
                    if ok:
                        self.delivered += 1
                    else:
                        self.failed += 1
            finally:
                self.queue.task_done()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (default: one delivery budget plus DRAIN_MARGIN_S, for starting the HTTP client
        and the thread hand-offs) until every queued webhook was tried; True when none is left."""
        wait = self.budget_s + DRAIN_MARGIN_S if timeout is None else timeout
        deadline = time.monotonic() + max(0.0, wait)
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.queue.all_tasks_done.wait(left)
        return True


_SENDER: dict[int, WebhookSender] = {}  # by pid: a forked child never uses its parent's (dead) threads
_SENDER_LOCK = threading.Lock()


def process_sender(settings: Settings | None = None) -> WebhookSender:
    """This process's sender, started on first use (with `settings.webhooks.queue_size`)."""
    pid = os.getpid()
    with _SENDER_LOCK:
        current = _SENDER.get(pid)
        if current is None:
            _SENDER.clear()
            size = settings.webhooks.queue_size if settings is not None else 1000
            current = _SENDER[pid] = WebhookSender(queue_size=size)
        return current


def send(settings: Settings, job: JobRecord) -> bool:
    """Queue the terminal-state webhook of `job` (when it has a URL) for this process's sender. Never blocks or
    raises; True when it was queued."""
    if not job.webhook_url:
        return False
    try:
        return process_sender(settings).submit(settings, job)
    except Exception:  # pragma: no cover - a webhook must never break the job that sends it
        log.exception("job %s: webhook not queued", job.id)
        return False


def send_when_finished(settings: Settings, store, job_id: str) -> bool:
    """After a job's terminal state was recorded: read it back and queue its webhook. Never raises."""
    try:
        job = store.get_job(job_id)
    except Exception:
        log.exception("job %s: webhook not sent (the job could not be read back)", job_id)
        return False
    return job is not None and send(settings, job)


def drain(timeout: float | None = None) -> bool:
    """Wait up to `timeout` seconds (default: one delivery budget) for this process's queued webhooks, if it has a
    sender; True when none is left."""
    with _SENDER_LOCK:
        current = _SENDER.get(os.getpid())
    return True if current is None else current.drain(timeout)
