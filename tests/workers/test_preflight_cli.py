"""`secateurs preflight`: the table (or the JSON answer) with exit status 0; bad input in one line with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hostile
from tests.engine.structured.models import residual_functional

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}
SPEC = {
    "steps": [
        {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8},
        {"kind": "structured", "keep_ratio": 0.5},
        {"kind": "finetune", "epochs": 1},
    ]
}


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "preflight", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("preflight-cli")
    model = residual_functional()
    model.compile(loss="sparse_categorical_crossentropy")
    model.save(d / "residual.keras")
    (d / "spec.json").write_text(json.dumps(SPEC))
    return d


def test_json_answer_with_a_spec(files):
    r = _cli(files / "residual.keras", "--spec", files / "spec.json", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    rows = {row["name"]: row for row in result["layers"]}
    assert rows["conv_b2"]["group"] == rows["stem"]["group"] and rows["out"]["reason"].startswith("spared")
    assert [s["kind"] for s in result["steps"]] == ["prune", "structured", "finetune"]
    assert result["steps"][0]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert result["steps"][2]["params"] == result["steps"][1]["params"] < result["totals"]["params"]


def test_table_without_a_spec(files):
    r = _cli(files / "residual.keras")
    assert r.returncode == 0, r.stderr
    assert "Preflight of residual.keras (Functional)" in r.stdout
    line = next(line for line in r.stdout.splitlines() if "│ out " in line)
    assert "no: spared (output layer)" in line and "unstructured" in line
    assert "17 layers, 6 prunable" in r.stdout and "What the spec would leave" not in r.stdout


def test_table_says_what_a_budget_search_costs(files, tmp_path):
    """Default levels filled in as the job fills them: 6 for a sensitivity step, 7 for a budget step's own sweep
    (it searches past 0.95)."""
    spec = tmp_path / "budget.json"
    spec.write_text(json.dumps({"steps": [{"kind": "budget", "max_drop": 0.01, "max_trials": 5, "epochs": 3}]}))
    r = _cli(files / "residual.keras", "--spec", spec)
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.strip().startswith("1. budget:"))
    # every layer with a kernel, the output layer a global ranking spares included: the sweep measures it too
    assert "a magnitude sensitivity sweep of 7 units × 7 levels (50 evaluations" in line, line
    assert "up to 5 trials, 15 training epochs in all" in line
    spec.write_text(json.dumps({"steps": [{"kind": "sensitivity"}, {"kind": "budget", "max_drop": 0.01}]}))
    steps = json.loads(_cli(files / "residual.keras", "--spec", spec, "--json").stdout)["steps"]
    assert steps[0]["sweep"]["levels"] == 6 and steps[1]["sweep"] is None
    assert steps[1]["params"] == steps[0]["params"]


@pytest.mark.parametrize("case", ["missing_model", "bad_spec", "hostile_model", "spec_names_no_layer"])
def test_bad_input_is_one_line_with_status_2(case, files, tmp_path):
    model, spec = files / "residual.keras", files / "spec.json"
    fragment = {
        "missing_model": "model file not found",
        "bad_spec": "steps.0.keep_ratio",
        "hostile_model": "Lambda",
        "spec_names_no_layer": "layers.exclude names ['nope']",
    }[case]
    if case == "missing_model":
        model = tmp_path / "nope.keras"
    elif case == "bad_spec":
        spec = tmp_path / "bad.json"
        spec.write_text(json.dumps({"steps": [{"kind": "structured", "keep_ratio": 0}]}))
    elif case == "hostile_model":
        model = hostile.keras_lambda(tmp_path, tmp_path / "canary")
    else:
        spec = tmp_path / "names.json"
        spec.write_text(json.dumps({**SPEC, "layers": {"exclude": ["nope"]}}))
    r = _cli(model, "--spec", spec)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secateurs: error:") and fragment in lines[0], lines
    assert r.stdout == "" and not (tmp_path / "canary").exists()
