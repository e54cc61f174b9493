"""manifest.timings: a job's wall time split by phase and into training and the rest (issue 9, item 6), and the
measurements a job no longer repeats (the "after" file is the exported model.keras; an unchanged model is not
evaluated twice)."""

from __future__ import annotations

import pytest

from workers.engine.pipeline import compress
from workers.engine.pipeline import run as run_mod
from workers.spec import JobSpec

pytestmark = pytest.mark.slow


def _job(tmp_path, files, spec: dict, progress=None) -> dict:
    return compress(files[0], files[1], JobSpec.model_validate(spec), tmp_path / "out", progress=progress)


def test_timings_split_the_wall_time_by_phase_and_into_training_and_the_rest(tmp_path, bn_files):
    manifest = _job(
        tmp_path,
        bn_files,
        {
            "steps": [
                {"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 1},
                {"kind": "finetune", "epochs": 1},
            ],
            "evaluation": {"latency_runs": 3},
        },
    )
    t = manifest["timings"]
    phases = ("load_s", "before_s", "after_s", "export_s", "report_s")
    assert all(t[k] >= 0 for k in (*phases, "training_s", "outside_training_s", "wall_s"))
    assert [s["kind"] for s in t["steps"]] == ["prune", "finetune"]
    for step, record in zip(t["steps"], manifest["steps"]):
        assert step["wall_s"] == record["wall_time_s"]
        assert step["training_s"] > 0 and step["other_s"] >= 0
        assert step["training_s"] + step["other_s"] == pytest.approx(step["wall_s"])
    assert sum(t[k] for k in phases) + sum(s["wall_s"] for s in t["steps"]) == pytest.approx(t["wall_s"], abs=0.05)
    assert t["training_s"] == pytest.approx(sum(s["training_s"] for s in t["steps"]))
    assert t["training_s"] + t["outside_training_s"] == pytest.approx(t["wall_s"])
    assert manifest["wall_time_s"] <= t["wall_s"]  # wall_time_s stops before the report is drawn


def test_the_after_size_is_the_exported_keras_file_and_an_unchanged_model_is_not_rerun(tmp_path, bn_files, monkeypatch):
    evaluations, at_phase = [], {}
    real = run_mod.metrics_mod.evaluate

    def counted(*args, **kwargs):  # the real evaluation, counted
        evaluations.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod.metrics_mod, "evaluate", counted)
    spec = {"steps": [{"kind": "finetune", "epochs": 1}], "evaluation": {"latency": False}}
    manifest = _job(tmp_path, bn_files, spec, progress=lambda p: at_phase.setdefault(p.phase, len(evaluations)))
    assert at_phase["before"] == 0 and at_phase["after"] >= 2  # before the job, around the re-estimation
    assert at_phase["export"] == at_phase["after"]  # measuring "after" ran no evaluation
    keras_file = manifest["artifacts"]["keras"]
    assert manifest["after"]["file"] == {"bytes": keras_file["bytes"], "gzip_bytes": keras_file["gzip_bytes"]}
    assert (tmp_path / "out" / "model.keras").stat().st_size == keras_file["bytes"]
    # the model after re-estimation is the model measured after the steps: the same result, not a second run
    assert manifest["after"]["evaluation"] == manifest["steps"][0]["batchnorm"]["after"]
    # the exported file, run on its own, scores what the model in memory scored
    evaluation = keras_file["evaluation"]
    assert evaluation["accuracy"] == pytest.approx(manifest["after"]["evaluation"]["accuracy"], abs=1e-6)


def test_without_a_keras_export_the_after_size_is_measured_on_its_own(tmp_path, bn_files):
    manifest = _job(
        tmp_path,
        bn_files,
        {"steps": [{"kind": "finetune", "epochs": 1}], "export": {"formats": ["h5"]}, "evaluation": {"latency": False}},
    )
    after, before = manifest["after"]["file"], manifest["before"]["file"]
    assert after["bytes"] > 0 and 0 < after["gzip_bytes"] <= after["bytes"] * 1.01
    assert after["bytes"] == pytest.approx(before["bytes"], rel=0.05)  # the same model saved as .keras both times
