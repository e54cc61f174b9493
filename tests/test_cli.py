"""`secateurs` CLI: a real compress run, the schema, and one clear line with exit status 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _cli(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


def _compress_spec(small_job, tmp_path, spec: dict, **env):
    """`secateurs compress` of the small job with `spec`, output in tmp_path/o."""
    (tmp_path / "s.json").write_text(json.dumps(spec))
    return _cli(
        "compress",
        small_job / "m.keras",
        "--data",
        small_job / "d.npz",
        "--spec",
        tmp_path / "s.json",
        "--out",
        tmp_path / "o",
        env=env,
    )


@pytest.fixture(scope="module")
def small_job(tmp_path_factory, mnist):
    x, y = mnist[0][:1500], mnist[1][:1500]
    d = tmp_path_factory.mktemp("cli")
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(d / "m.keras")
    np.savez(d / "d.npz", x_train=x, y_train=y)
    spec = {
        "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 1}],
        "evaluation": {"latency": False},
    }
    (d / "spec.json").write_text(json.dumps(spec))
    return d


def test_compress_writes_model_and_manifest_and_prints_a_summary(small_job, tmp_path):
    r = _cli(
        "compress",
        small_job / "m.keras",
        "--data",
        small_job / "d.npz",
        "--spec",
        small_job / "spec.json",
        "--out",
        tmp_path / "out",
    )
    assert r.returncode == 0, r.stderr
    assert "Secateurs result" in r.stdout and "non-zero parameters" in r.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["steps"][0]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "out" / "model.keras").exists()


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 1.5}]}, "target_sparsity"),
        ({"steps": [{"kind": "structured", "keep_ratio": 0}]}, "keep_ratio"),
        ({"steps": []}, "steps"),
        ({"steps": [{"kind": "prune", "method": "threshold"}]}, "threshold"),
        (
            {"steps": [{"kind": "prune", "method": "threshold", "threshold": float("inf")}]},
            "steps.0.threshold: Input should be a finite number",
        ),
        ({"steps": [{"kind": "finetune"}], "training": {"learning_rate": float("nan")}}, "training.learning_rate"),
        ({"steps": [{"kind": "prune", "method": "threshold", "threshold": 1e30}]}, "steps.0.threshold"),
    ],
)
def test_bad_spec_is_one_line_naming_the_field(small_job, tmp_path, spec, fragment):
    r = _compress_spec(small_job, tmp_path, spec)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secateurs: error:") and fragment in lines[0]


def test_missing_model_and_bad_data_are_named(small_job, tmp_path):
    r = _cli("compress", tmp_path / "nope.keras", "--spec", small_job / "spec.json", "--out", tmp_path / "o")
    assert r.returncode == 2 and "model file not found" in r.stderr
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((10, 5), "float32"), y_train=np.zeros(10, "int64"))
    r = _cli(
        "compress",
        small_job / "m.keras",
        "--data",
        tmp_path / "bad.npz",
        "--spec",
        small_job / "spec.json",
        "--out",
        tmp_path / "o",
    )
    assert r.returncode == 2
    assert "x_train" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_schema_is_the_jobspec_json_schema():
    r = _cli("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "JobSpec" and "steps" in schema["properties"]


def test_collapsed_job_exits_zero_and_prints_the_quality_note_in_red(small_job, tmp_path):
    spec = {
        "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.995}],
        "evaluation": {"latency": False},
    }
    r = _compress_spec(small_job, tmp_path, spec, FORCE_COLOR="1", COLUMNS="200")
    assert r.returncode == 0, r.stderr
    red = "\x1b[1;31m"
    assert f"win: {red}none" in r.stdout
    note_line = next(line for line in r.stdout.splitlines() if "QUALITY COLLAPSED" in line)
    assert red in note_line and "held-out accuracy fell from" in note_line
    summary = json.loads((tmp_path / "o" / "manifest.json").read_text())["summary"]
    assert summary["within_tolerance"] is False and summary["notes"][0].startswith("QUALITY COLLAPSED")


def test_compress_runs_a_budget_search_and_prints_whether_it_met_the_budget(small_job, tmp_path):
    spec = {
        "steps": [{"kind": "budget", "max_drop": 0.05, "epochs": 0, "max_trials": 2}],
        "evaluation": {"latency": False},
    }
    r = _compress_spec(small_job, tmp_path, spec, COLUMNS="200")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    budget = manifest["budget"]
    assert len(budget["trials"]) == 2 and manifest["summary"]["budget_met"] == budget["met"]
    line = next(line for line in r.stdout.splitlines() if line.startswith("budget "))
    assert ("NOT met" not in line) == budget["met"] and f"trial {budget['chosen'] + 1} of 2" in line
    assert (tmp_path / "o" / "sensitivity.json").exists() and (tmp_path / "o" / "sensitivity.csv").exists()
