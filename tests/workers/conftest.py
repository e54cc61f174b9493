"""Fixtures for the worker-side tests: job stores on SQLite and on real PostgreSQL, settings in a temp dir."""

from __future__ import annotations

import pytest

from tests.workers.pg import fresh_database
from workers.settings import Settings


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this session. Under CI=true an unreachable server is a failure; elsewhere
    the test is skipped with the reason."""
    with fresh_database("secateurs_store") as url:
        yield url


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
    return Settings(
        data_dir=tmp_path / "data", worker={"heartbeat_interval": 0.5, "heartbeat_timeout": 3.0, "poll_interval": 0.1}
    )


@pytest.fixture(scope="session")
def job_files(tmp_path_factory, mnist):
    from tests.workers.jobfiles import make_job_files

    return make_job_files(tmp_path_factory.mktemp("jobfiles"), mnist)
