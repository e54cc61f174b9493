"""The Celery app: configured from settings and never eager, nothing built at import, a worker that needs a process,
and a task that puts its message back when the store is unreachable. (The Celery dispatcher: test_dispatch.py; a
real Celery worker running real jobs: tests/e2e/test_celery_postgres_s3.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from workers.settings import Settings


def test_the_celery_app_is_configured_from_settings_and_never_eager():
    from workers.celery_app import TASK_NAME, create_celery_app

    settings = Settings(
        limits={"job_wall_seconds": 100},
        celery={"broker_url": "redis://h:1/2", "queue": "q", "time_limit_margin": 50, "key_prefix": "p:"},
    )
    conf = create_celery_app(settings).conf
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 150 and conf.broker_transport_options["visibility_timeout"] > 150
    assert conf.broker_transport_options["global_keyprefix"] == "p:"
    assert conf.broker_url == "redis://h:1/2" and conf.task_default_queue == "q"
    assert conf.task_always_eager is False and conf.accept_content == ["json"]
    assert TASK_NAME in create_celery_app(settings).tasks


def test_importing_the_celery_module_builds_nothing_and_the_celery_entry_finds_a_lazy_app():
    code = (
        "import sys, workers.celery_app as m; before = 'celery' in sys.modules; app = m.app; "
        "print(before, type(app).__name__, m.TASK_NAME in app.tasks, app is m.celery)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "Celery", "True", "True"]


def test_a_celery_worker_needs_at_least_one_process(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")},
        "SECATEURS_DATA_DIR": str(tmp_path),
        "SECATEURS_WORKER__DISPATCHER": "celery",
        "SECATEURS_WORKER__CONCURRENCY": "0",
    }
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "worker.concurrency is 0" in out.stderr


def test_a_task_that_cannot_reach_the_store_puts_its_message_back_instead_of_stranding_the_job(tmp_path, monkeypatch):
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
