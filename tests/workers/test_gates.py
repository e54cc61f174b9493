"""workers.gates: each gate against manifest fragments shaped as workers.engine.summary writes them; a gate whose number
is missing is missed with the reason, never passed silently. (The CLI tests check the gates on real job manifests.)"""

from __future__ import annotations

import numpy as np
import pytest

from workers.gates import Gates, check


def manifest(*, accuracy=(0.90, 0.88), sparsity=0.8, gzip=(1000, 400), latency=None, within=True, budget=None):
    before_eval = {"accuracy": accuracy[0], "loss": 0.3} if accuracy else {"loss": 0.3}
    after_eval = {"accuracy": accuracy[1], "loss": 0.35} if accuracy else {"loss": 0.35}
    m = {
        "before": {
            "evaluation": before_eval,
            "params": {"sparsity": 0.0},
            "file": {"gzip_bytes": gzip[0]},
            "latency_ms": (latency or {}).get("before", {}),
        },
        "after": {
            "evaluation": after_eval,
            "params": {"sparsity": sparsity},
            "file": {"gzip_bytes": gzip[1]},
            "latency_ms": (latency or {}).get("after", {}),
        },
        "summary": {
            "sparsity_after": sparsity,
            "gzip_size_ratio": gzip[1] / gzip[0],
            "within_tolerance": within,
            "notes": ["QUALITY COLLAPSED: held-out accuracy fell"] if within is False else [],
        },
    }
    if accuracy:
        m["summary"]["quality"] = {"accuracy": {"before": accuracy[0], "after": accuracy[1], "kind": "accuracy"}}
    if budget is not None:
        m["budget"] = budget
    return m


def only(results):
    [r] = results
    return r


@pytest.mark.parametrize("limit, ok", [(0.02, True), (0.019, False)])
def test_accuracy_drop_is_absolute_and_inclusive(limit, ok):
    r = only(check(manifest(accuracy=(0.90, 0.88)), Gates(max_accuracy_drop=limit)))
    assert r.ok is ok and "held-out accuracy 0.9000 -> 0.8800 (drop +0.0200" in r.line


def test_accuracy_drop_equal_to_the_limit_in_float32_meets_the_gate():
    before, after = float(np.float32(0.944)), float(np.float32(0.9335))  # 0.010500014 apart in float32
    assert only(check(manifest(accuracy=(before, after)), Gates(max_accuracy_drop=0.0105))).ok


def test_accuracy_gate_without_an_accuracy_metric_is_missed():
    r = only(check(manifest(accuracy=None), Gates(max_accuracy_drop=0.5)))
    assert not r.ok and "no accuracy-like held-out metric" in r.line


@pytest.mark.parametrize(
    "gates, name, ok",
    [
        (Gates(min_sparsity=0.8), "min-sparsity", True),
        (Gates(min_sparsity=0.81), "min-sparsity", False),
        (Gates(max_size_ratio=0.4), "max-size-ratio", True),
        (Gates(max_size_ratio=0.39), "max-size-ratio", False),
    ],
)
def test_sparsity_and_size_gates_compare_with_the_summary(gates, name, ok):
    r = only(check(manifest(sparsity=0.8, gzip=(1000, 400)), gates))
    assert (r.name, r.ok) == (name, ok)
    assert ("0.8000" if name == "min-sparsity" else "0.4000 (1,000 -> 400 bytes gzipped)") in r.line


def lat(median, p25, p75):
    return {"median": median, "p25": p25, "p75": p75}


def test_a_speedup_counts_only_beyond_the_spread_of_the_measurements():
    clear = {"before": {"batch_1": lat(2.0, 1.9, 2.1)}, "after": {"batch_1": lat(1.0, 0.95, 1.05)}}
    noisy = {"before": {"batch_1": lat(2.0, 1.0, 3.0)}, "after": {"batch_1": lat(1.0, 0.5, 2.5)}}
    assert only(check(manifest(latency=clear), Gates(min_speedup=2.0))).ok
    missed = only(check(manifest(latency=clear), Gates(min_speedup=2.5)))
    assert not missed.ok and "2.00x at batch_1" in missed.line
    inside = only(check(manifest(latency=noisy), Gates(min_speedup=1.5)))
    assert not inside.ok and "inside the noise" in inside.line
    unmeasured = only(check(manifest(), Gates(min_speedup=1.1)))
    assert not unmeasured.ok and "latency was not measured" in unmeasured.line


def test_budget_gate_reads_the_budget_search():
    met = {
        "met": True,
        "max_drop": 0.01,
        "metric": "accuracy",
        "chosen": 1,
        "trials": [{"drop": 0.03}, {"drop": 0.008}],
    }
    r = only(check(manifest(budget=met), Gates(budget=True)))
    assert r.ok and "chosen trial's drop 0.0080" in r.line
    assert not only(check(manifest(budget={**met, "met": False}), Gates(budget=True))).ok
    r = only(check(manifest(), Gates(budget=True)))
    assert not r.ok and "no budget search" in r.line


def test_gates_also_read_the_test_arrays_when_the_job_had_them():
    m = manifest(accuracy=(0.90, 0.89))
    m["before"]["test_evaluation"], m["after"]["test_evaluation"] = {"accuracy": 0.91}, {"accuracy": 0.88}
    r = only(check(m, Gates(max_accuracy_drop=0.02)))
    assert not r.ok  # within on the held-out data, 3 points on test
    assert "held-out accuracy 0.9000 -> 0.8900" in r.line and "test accuracy 0.9100 -> 0.8800 (drop +0.0300" in r.line
    assert only(check(m, Gates(max_accuracy_drop=0.03))).ok
    budget = {"met": True, "max_drop": 0.01, "metric": "accuracy", "chosen": 0, "trials": [{"drop": 0.01}]}
    missed = {**budget, "test": {"drop": 0.03, "within_budget": False}}
    r = only(check(manifest(budget=missed), Gates(budget=True)))
    assert not r.ok and "on the test data: drop 0.0300, beyond" in r.line
    r = only(check(manifest(budget={**missed, "test": {"drop": 0.004, "within_budget": True}}), Gates(budget=True)))
    assert r.ok and "on the test data: drop 0.0040, within" in r.line


def test_the_jobs_own_quality_check_always_counts():
    assert check(manifest(within=True), Gates()) == []
    r = only(check(manifest(within=False), Gates()))
    assert (r.name, r.ok) == ("quality", False) and "QUALITY COLLAPSED" in r.line


def test_gates_round_trip_through_a_dict_and_flags_override_saved_ones():
    saved = Gates(min_sparsity=0.9, max_size_ratio=0.5, budget=True)
    assert Gates.from_dict(saved.to_dict()) == saved
    assert Gates.from_dict({"min_sparsity": 0.9, "unknown": 1}) == Gates(min_sparsity=0.9)
    merged = saved.merged(Gates(min_sparsity=0.4))
    assert merged == Gates(min_sparsity=0.4, max_size_ratio=0.5, budget=True)
