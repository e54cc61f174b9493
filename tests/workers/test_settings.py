"""Settings: SECATEURS_* variables, nested groups with '__', derived locations, validation naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from workers.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("SECATEURS_"):
            monkeypatch.delenv(key)


def test_nested_groups_are_set_with_a_double_underscore(monkeypatch, tmp_path):
    monkeypatch.setenv("SECATEURS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SECATEURS_LIMITS__MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("SECATEURS_WORKER__CONCURRENCY", "5")
    monkeypatch.setenv("SECATEURS_AUTH_REQUIRED", "true")
    monkeypatch.setenv("SECATEURS_STORE__URL", "postgresql+psycopg://u@h:5432/db")
    s = Settings()
    assert s.limits.max_upload_bytes == 1234 and s.worker.concurrency == 5 and s.auth_required is True
    assert s.store_url == "postgresql+psycopg://u@h:5432/db"
    assert s.data_dir == tmp_path


def test_defaults_keep_everything_in_the_data_directory(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.store_url == f"sqlite:///{tmp_path.resolve() / 'jobs.db'}"
    assert s.artifacts_root == tmp_path.resolve() / "artifacts"
    assert s.tmp_dir.parent == s.scratch_dir.parent == tmp_path.resolve()
    assert s.worker.dispatcher == "local" and s.worker.max_attempts == 2


def test_a_file_url_or_path_selects_the_artifact_directory(tmp_path):
    assert Settings(artifacts={"url": f"file://{tmp_path}/a"}).artifacts_root == Path(f"{tmp_path}/a")
    assert Settings(artifacts={"url": str(tmp_path / "b")}).artifacts_root == tmp_path / "b"
    with pytest.raises(ValueError, match="only local directories"):
        _ = Settings(artifacts={"url": "s3://bucket/x"}).artifacts_root


@pytest.mark.parametrize(
    "env, field",
    [
        ({"SECATEURS_LIMITS__JOB_MEMORY_BYTES": "1000"}, "job_memory_bytes"),
        ({"SECATEURS_WORKER__DISPATCHER": "carrier-pigeon"}, "dispatcher"),
        (
            {"SECATEURS_WORKER__HEARTBEAT_TIMEOUT": "1", "SECATEURS_WORKER__HEARTBEAT_INTERVAL": "2"},
            "heartbeat_timeout",
        ),
        ({"SECATEURS_PORT": "99999"}, "port"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(monkeypatch, env, field):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_get_settings_is_cached(monkeypatch):
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


def _variables(model=Settings, prefix="SECATEURS_"):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _variables(field.annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}"


def test_docs_config_lists_every_variable():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text()
    documented = {line.split("`")[1] for line in doc.splitlines() if line.startswith("| `SECATEURS_")}
    assert documented == set(_variables())
