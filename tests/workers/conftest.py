"""Fixtures for the worker-side tests: job stores on SQLite and on real PostgreSQL, settings in a temp dir."""

from __future__ import annotations

import os
import uuid

import pytest

from workers.settings import Settings

PG_ADMIN_URL = os.environ.get("SECATEURS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this session (dropped at the end). Under CI=true an unreachable server is a
    failure; elsewhere the test is skipped with the reason."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"secateurs_store_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        admin.dispose()
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {str(e).splitlines()[0]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    from sqlalchemy import delete

    from workers.store import open_store
    from workers.store.sql import api_keys, events, jobs

    s = open_store(store_url)
    yield s
    with s.engine.begin() as conn:  # the PostgreSQL database is shared by the session's tests
        for table in (events, jobs, api_keys):
            conn.execute(delete(table))
    s.close()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", worker={"heartbeat_interval": 0.5, "heartbeat_timeout": 3.0,
                                                        "poll_interval": 0.1})


@pytest.fixture(scope="session")
def job_files(tmp_path_factory, mnist):
    from tests.workers.jobfiles import make_job_files

    return make_job_files(tmp_path_factory.mktemp("jobfiles"), mnist)
