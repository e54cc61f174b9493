"""Preflight of a model file: loaded as a job loads it, refused as a job refuses it, and in the service's path run in
a child process bounded in time and memory, without TensorFlow in the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hostile
from tests.engine.structured.models import residual_functional
from workers.engine.errors import ModelRejected, ResourceLimit, SpecError
from workers.engine.pipeline import compress
from workers.preflight import PreflightLimits, preflight_file, run_isolated
from workers.spec import JobSpec

ROOT = Path(__file__).resolve().parents[2]
SPEC = {
    "steps": [
        {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "epochs": 2},
        {"kind": "structured", "keep_ratio": 0.5},
    ]
}


@pytest.fixture(scope="module")
def residual_file(tmp_path_factory) -> Path:
    model = residual_functional()
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    path = tmp_path_factory.mktemp("preflight") / "residual.keras"
    model.save(path)
    return path


def test_preflight_file_loads_the_model_and_estimates_the_spec(residual_file):
    result = preflight_file(residual_file, JobSpec.model_validate(SPEC))
    assert result["model"] | {"bytes": 0} == {
        "name": "residual",
        "class": "Functional",
        "file": "residual.keras",
        "bytes": 0,
        "format": "keras",
        "saved_loss": "sparse_categorical_crossentropy",
    }
    assert result["task"] == {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
    assert [s["kind"] for s in result["steps"]] == ["prune", "structured"]
    assert result["steps"][1]["params"] < result["steps"][0]["params"] == result["totals"]["params"]
    assert any("needs a dataset" in note for note in result["notes"])  # the prune step trains for 2 epochs
    json.dumps(result)  # plain JSON all the way


def test_an_uncompiled_model_and_a_spec_without_loss_are_refused_with_the_jobs_message(tmp_path):
    model = residual_functional()
    model.save(tmp_path / "bare.keras")
    spec = JobSpec.model_validate(
        {"steps": [{"kind": "prune", "target_sparsity": 0.5}], "evaluation": {"latency": False}}
    )
    with pytest.raises(SpecError) as job:
        compress(tmp_path / "bare.keras", None, spec, tmp_path / "out")
    with pytest.raises(SpecError) as pre:
        preflight_file(tmp_path / "bare.keras", spec)
    assert pre.value.message == job.value.message and pre.value.field == job.value.field
    # without a spec the table is built, with a note saying what a job will need
    result = preflight_file(tmp_path / "bare.keras")
    assert any("training.loss" in note for note in result["notes"])


def test_a_hostile_model_is_refused_with_the_jobs_message(tmp_path):
    path = hostile.keras_lambda(tmp_path, tmp_path / "canary")
    spec = JobSpec.model_validate({"steps": [{"kind": "prune", "target_sparsity": 0.5}]})
    with pytest.raises(ModelRejected) as job:
        compress(path, None, spec, tmp_path / "out")
    with pytest.raises(ModelRejected) as pre:
        preflight_file(path)
    assert pre.value.message == job.value.message
    assert not (tmp_path / "canary").exists()


def test_isolated_preflight_answers_without_tensorflow_in_the_caller(residual_file, tmp_path):
    code = (
        "import json, sys; from workers.preflight import PreflightLimits, run_isolated; "
        f"r = run_isolated({str(residual_file)!r}, {SPEC!r}, PreflightLimits(), {str(tmp_path / 's')!r}); "
        "print(json.dumps([r['totals']['layers'], len(r['steps']), 'tensorflow' in sys.modules, "
        "'keras' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [17, 2, False, False]


def test_isolated_preflight_returns_the_childs_refusal(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception) as e:
        run_isolated(bad, None, PreflightLimits(), tmp_path / "s")
    assert type(e.value).__name__ in ("UnsupportedFile", "ModelRejected") and "bad.keras" in e.value.message


def test_isolated_preflight_is_stopped_at_its_time_limit(residual_file, tmp_path):
    with pytest.raises(ModelRejected) as e:
        run_isolated(residual_file, None, PreflightLimits(wall_seconds=0.5), tmp_path / "s")
    assert e.value.field == "limits.preflight_seconds" and "longer than the limit of 0.5 s" in e.value.message


def test_isolated_preflight_fails_naming_its_memory_limit(residual_file, tmp_path):
    limit = 512 * 2**20  # TensorFlow cannot even start in this much address space
    with pytest.raises(ResourceLimit) as e:
        run_isolated(residual_file, None, PreflightLimits(memory_bytes=limit), tmp_path / "s")
    assert e.value.field == "limits.preflight_memory_bytes" and str(limit) in e.value.message


def test_isolated_child_sees_no_credentials(monkeypatch):
    """The child's environment keeps Python's and TensorFlow's settings, none of the service's."""
    from workers import preflight as preflight_mod

    monkeypatch.setenv("SECATEURS_STORE__URL", "postgresql://user:secret@db/jobs")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    env = preflight_mod._env()
    assert "SECATEURS_STORE__URL" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "3" and "PATH" in env
