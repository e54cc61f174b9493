"""URL credentials are masked in every log record of a process once workers.redact is installed."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.service.conftest import ROOT
from workers.redact import redact
from workers.testing.servers import start_worker

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"postgresql+psycopg://app:{SECRET}@db:5432/jobs", "postgresql+psycopg://app:***@db:5432/jobs"),
        (f"redis://:{SECRET}@redis:6379/0", "redis://:***@redis:6379/0"),
        (
            f"store postgresql://u:{SECRET}@h/db, broker redis://:{SECRET}@r/0",
            "store postgresql://u:***@h/db, broker redis://:***@r/0",
        ),
        (f"https://{SECRET}@github.com/x.git", "https://***@github.com/x.git"),
        (f"'postgresql://u:p@{SECRET}@h/db'", "'postgresql://u:***@h/db'"),  # an unescaped '@' in the password
        ("sqlite:////data/jobs.db and mail a@b.c, https://example.com/a@b", None),  # nothing to mask: unchanged
    ],
)
def test_redact_masks_the_password_of_every_url(text, expected):
    assert redact(text) == (expected or text)


def test_redact_is_linear_on_a_hostile_line():
    line = "a." * 100_000 + "://" + "@" * 100_000
    start = time.perf_counter()
    redact(line)
    assert time.perf_counter() - start < 1.0


def test_installed_redaction_covers_messages_arguments_and_tracebacks_of_any_logger():
    code = f"""
import logging, sys
from workers import redact
redact.install()
logging.basicConfig(stream=sys.stdout, format="%(name)s %(message)s")
url = "postgresql+psycopg://app:{SECRET}@db/jobs"
logging.getLogger("secateurs.worker").warning("pulling jobs from %s", url)
logging.getLogger("celery").warning(f"broker redis://:{SECRET}@r/0")
try:
    raise ConnectionError(f"cannot reach {{url}}")
except ConnectionError:
    logging.getLogger("some.library").exception("failed")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    assert "pulling jobs from postgresql+psycopg://app:***@db/jobs" in r.stdout
    assert (
        "broker redis://:***@r/0" in r.stdout
        and "ConnectionError: cannot reach postgresql+psycopg://app:***@db" in r.stdout
    )


@pytest.mark.services
def test_a_brokerless_worker_logs_its_store_url_without_the_password(pg_url, tmp_path):
    """`secateurs worker` (dispatcher none) says which store it pulls from: with the password masked."""
    import os
    import signal

    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    assert SECRET in url
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}
    env.update(
        {
            "SECATEURS_STORE__URL": url,
            "SECATEURS_WORKER__DISPATCHER": "none",
            "SECATEURS_LOG_LEVEL": "info",
            "SECATEURS_DATA_DIR": str(tmp_path),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
    )
    proc = start_worker("--name", "redact-test", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "pulling jobs from" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    output = "".join(lines) + rest
    assert "pulling jobs from postgresql+psycopg://postgres:***@" in output, output
    assert SECRET not in output
