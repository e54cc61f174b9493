"""Job webhooks off the worker loop: the payload, the per-process sender threads with their bounded queue, the
drain at shutdown, and a package light enough for the cancel path. (Delivery itself: test_delivery.py; a worker
that takes its next job while a slow receiver trickles: tests/workers/test_worker.py.)"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.workers.receivers import TrickleReceiver
from workers import notify
from workers.jobs import JobStatus, NewJob
from workers.notify.sender import BACKOFF_S, WebhookSender, budget, webhook_payload
from workers.settings import Settings
from workers.store import open_store


@pytest.fixture
def slow_receiver():
    receiver = TrickleReceiver(interval_s=0.25)
    yield receiver
    receiver.close()


def finished_job(settings: Settings, webhook_url: str | None):
    store = open_store(settings.store_url)
    try:
        job, _ = store.create_job(NewJob(tenant="t", spec={}, inputs={}, webhook_url=webhook_url), max_attempts=1)
        claim = store.claim(job.id, "w@test:1")
        assert store.finish(claim, JobStatus.FAILED, error={"code": "internal_error", "message": "boom"})
        return store.get_job(job.id)
    finally:
        store.close()


@pytest.fixture
def hook_settings(tmp_path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", webhooks={"allow_private": True, "timeout": 0.5, "max_attempts": 1})
    settings.data_dir.mkdir(parents=True)
    return settings


def test_the_payload_names_the_event_status_error_and_artifacts(hook_settings):
    job = finished_job(hook_settings, "http://127.0.0.1:9/hook")
    payload = webhook_payload(job)
    assert payload["event"] == "job.failed"
    assert payload["job"]["id"] == job.id and payload["job"]["status"] == "failed"
    assert payload["job"]["error"]["message"] == "boom" and payload["job"]["artifacts"] == []
    assert payload["job"]["finished_at"] == job.finished_at.isoformat()


def test_the_budget_is_every_attempt_deadline_plus_the_pauses():
    settings = Settings(webhooks={"timeout": 5.0, "max_attempts": 3})
    assert budget(settings) == 3 * 5.0 + BACKOFF_S + 2 * BACKOFF_S


def test_a_full_queue_drops_the_webhook_at_once_instead_of_waiting(hook_settings, slow_receiver):
    sender = WebhookSender(queue_size=1, threads=1)
    job = finished_job(hook_settings, slow_receiver.url())
    assert sender.submit(hook_settings, job)  # taken by the one sender thread, which waits on the receiver
    deadline = time.monotonic() + 5
    while sender.queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sender.submit(hook_settings, job)  # waits in the queue
    started = time.monotonic()
    assert sender.submit(hook_settings, job) is False  # the queue is full: dropped, not waited for
    assert time.monotonic() - started < 0.1
    assert sender.dropped == 1
    assert sender.drain(budget(hook_settings) * 2 + 2)  # both tried, each cut off at its deadline
    assert (sender.delivered, sender.failed) == (0, 2)
    assert slow_receiver.connections == 2


def test_drain_gives_up_after_its_timeout_and_succeeds_once_the_queue_is_empty(hook_settings, slow_receiver):
    sender = WebhookSender(queue_size=10, threads=1)
    assert sender.submit(hook_settings, finished_job(hook_settings, slow_receiver.url()))
    started = time.monotonic()
    assert sender.drain(0.1) is False
    assert time.monotonic() - started < 0.4
    assert sender.drain() is True  # default: one delivery budget of what was submitted
    assert sender.failed == 1


def test_send_skips_a_job_without_a_webhook_url(hook_settings):
    assert notify.send(hook_settings, finished_job(hook_settings, None)) is False


def test_the_notify_package_imports_neither_the_runner_nor_the_http_client():
    """Cancelling a queued job sends its webhook from the API: that path imports this package only."""
    code = (
        "import sys, workers.notify; "
        "print(*[m in sys.modules for m in ('workers.runner', 'workers.sandbox', 'httpx', 'keras')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False"] * 4
