"""The job summary: no win when the held-out metric collapsed, speed claimed only beyond the measurement spread."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.engine.metrics import latency_stats
from workers.engine.summary import METRIC_TIE, SPEED_WIN, quality_check, summarize, within_limit
from workers.spec import JobSpec, load_spec

PRUNE = {"steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.8}]}
STRUCTURED = {"steps": [{"kind": "structured", "keep_ratio": 0.5}]}


def _latency(samples_ms) -> dict:
    """A latency entry as metrics.latency computes it from repeated timings."""
    return latency_stats(samples_ms, 1)


def _measure(evaluation, gzip_bytes=1000, latency_ms=None) -> dict:
    return {
        "evaluation": evaluation,
        "params": {"total": 100, "nonzero": 100, "sparsity": 0.0},
        "file": {"bytes": gzip_bytes * 2, "gzip_bytes": gzip_bytes},
        "latency_ms": latency_ms,
    }


def _spec(d: dict, **evaluation) -> JobSpec:
    return JobSpec.model_validate({**d, "evaluation": {"latency": True, **evaluation}})


def test_collapsed_accuracy_gives_no_win_and_the_first_note_says_so():
    before = _measure({"loss": 0.9, "accuracy": 0.716})
    after = _measure({"loss": 2.3, "accuracy": 0.103}, gzip_bytes=300)  # 3x smaller, but at chance
    s = summarize(before, after, {}, _spec(PRUNE))
    assert s["win"] == "none" and s["within_tolerance"] is False
    assert s["notes"][0].startswith("QUALITY COLLAPSED: held-out accuracy fell from 71.6% to 10.3% (-61.3 points")
    assert s["quality"]["accuracy"]["ok"] is False
    assert "loss" not in s["quality"]  # accuracy-like metrics decide when the task has one


def test_drop_within_the_tolerance_keeps_the_size_win():
    before = _measure({"loss": 0.30, "accuracy": 0.950})
    after = _measure({"loss": 0.45, "accuracy": 0.921}, gzip_bytes=300)  # -2.9 points, loss +50%
    s = summarize(before, after, {}, _spec(PRUNE))
    assert s["win"] == "size" and s["within_tolerance"] is True
    assert not s["notes"][0].startswith("QUALITY")


def test_accuracy_tolerance_is_the_spec_field():
    before, after = _measure({"accuracy": 0.95}), _measure({"accuracy": 0.921}, gzip_bytes=300)
    s = summarize(before, after, {}, _spec(PRUNE, max_accuracy_drop=0.02))
    assert s["win"] == "none" and "tolerance 2.0 points" in s["notes"][0]


def test_a_drop_exactly_at_the_tolerance_counts_as_within_although_float32_overshoots():
    """Keras reports float32 accuracies: 944 and 933.5 digits of 1,000 differ by 0.010500014, a tie with 0.0105."""
    before, tie, below = (float(np.float32(v)) for v in (0.944, 0.9335, 0.9330))
    assert before - tie > 0.0105  # what a comparison without the tie margin refused
    ev = _spec(PRUNE, max_accuracy_drop=0.0105).evaluation
    assert quality_check({"accuracy": before}, {"accuracy": tie}, ev)["within_tolerance"] is True
    assert quality_check({"accuracy": before}, {"accuracy": below}, ev)["within_tolerance"] is False
    assert within_limit(before - tie, 0.0105) and not within_limit(before - tie, 0.0105 - 10 * METRIC_TIE)


def test_regression_loss_is_judged_relative():
    ev = _spec(PRUNE).evaluation
    assert quality_check({"loss": 0.20, "mae": 0.30}, {"loss": 0.21, "mae": 0.32}, ev)["within_tolerance"] is True
    q = quality_check({"loss": 0.20, "mae": 0.30}, {"loss": 0.30, "mae": 0.31}, ev)
    assert q["within_tolerance"] is False
    assert q["note"].startswith("QUALITY COLLAPSED: held-out loss rose from 0.2 to 0.3 (+50%; tolerance +10%)")


def test_non_finite_after_metric_fails_and_no_data_is_not_judged():
    ev = _spec(PRUNE).evaluation
    assert quality_check({"loss": 0.2}, {"loss": math.nan}, ev)["within_tolerance"] is False
    assert quality_check({"accuracy": 0.9}, {"accuracy": None}, ev)["within_tolerance"] is False
    assert quality_check(None, None, ev) == {"within_tolerance": None, "metrics": {}, "note": None}


def test_speed_win_needs_the_gain_beyond_the_spread():
    rng = np.random.default_rng(0)
    base = _latency(10 + rng.normal(0, 0.2, 30))
    faster = _latency(7 + rng.normal(0, 0.2, 30))  # 1.4x, distributions far apart
    noisy_before = _latency(np.linspace(6, 14, 30))  # median 10, interquartile range 8..12
    noisy_after = _latency(np.linspace(4.5, 13, 30))  # median 8.75 (1.14x), interquartile range 6.6..10.9
    ev = {"accuracy": 0.9}
    s = summarize(
        _measure(ev, latency_ms={"batch_1": base}), _measure(ev, 300, {"batch_1": faster}), {}, _spec(STRUCTURED)
    )
    assert s["win"] == "size+speed" and s["latency_speedup_beyond_spread"] == {"batch_1": True}
    s = summarize(
        _measure(ev, latency_ms={"batch_1": noisy_before}),
        _measure(ev, 300, {"batch_1": noisy_after}),
        {},
        _spec(STRUCTURED),
    )
    assert s["latency_speedup"]["batch_1"] >= SPEED_WIN  # the medians alone would have claimed it
    assert s["win"] == "size" and s["latency_speedup_beyond_spread"] == {"batch_1": False}
    assert any("within the spread" in n for n in s["notes"])


def test_collapse_wins_over_a_real_speed_gain():
    fast = _latency(np.full(10, 5.0))
    slow = _latency(np.full(10, 10.0))
    s = summarize(
        _measure({"accuracy": 0.9}, latency_ms={"batch_1": slow}),
        _measure({"accuracy": 0.5}, 300, {"batch_1": fast}),
        {},
        _spec(STRUCTURED),
    )
    assert s["win"] == "none" and s["latency_speedup_beyond_spread"] == {"batch_1": True}


def _tested(evaluation, test, gzip_bytes=1000) -> dict:
    return {**_measure(evaluation, gzip_bytes), "test_evaluation": test}


def test_a_collapse_on_the_test_arrays_alone_fails_the_quality_and_says_where():
    before = _tested({"accuracy": 0.95}, {"accuracy": 0.96})
    after = _tested({"accuracy": 0.94}, {"accuracy": 0.90}, gzip_bytes=300)  # -1 point held out, -6 on test
    s = summarize(before, after, {}, _spec(PRUNE))
    assert s["win"] == "none" and s["within_tolerance"] is False
    assert s["quality"]["accuracy"]["ok"] is True and s["quality_test"]["accuracy"]["ok"] is False
    assert s["notes"][0].startswith("QUALITY COLLAPSED: test accuracy fell from 96.0% to 90.0% (-6.0 points")
    assert s["test_delta"]["accuracy"] == pytest.approx(-0.06)
    # within on both: the size win stands, and the test check is recorded beside the held-out one
    ok = summarize(before, _tested({"accuracy": 0.94}, {"accuracy": 0.95}, 300), {}, _spec(PRUNE))
    assert ok["win"] == "size" and ok["within_tolerance"] is True and ok["quality_test"]["accuracy"]["ok"]
    # no test arrays: no test fields
    plain = summarize(_measure({"accuracy": 0.95}), _measure({"accuracy": 0.94}, 300), {}, _spec(PRUNE))
    assert "quality_test" not in plain and "test_delta" not in plain


def test_a_budget_met_on_the_held_out_data_but_not_on_test_says_so():
    budget = {"metric": "accuracy", "max_drop": 0.01, "met": True, "note": None}
    before = _tested({"accuracy": 0.95}, {"accuracy": 0.96})
    after = _tested({"accuracy": 0.945}, {"accuracy": 0.945}, gzip_bytes=300)
    test = {"baseline": 0.96, "metric": 0.945, "drop": 0.015, "within_budget": False}
    s = summarize(before, after, {}, _spec(PRUNE), budget={**budget, "test": test})
    assert s["budget_met"] is True and s["budget_met_on_test"] is False
    assert any(n.startswith("BUDGET MISSED ON TEST DATA") and "drop is 0.015" in n for n in s["notes"])
    s = summarize(before, after, {}, _spec(PRUNE), budget={**budget, "test": {**test, "within_budget": True}})
    assert s["budget_met_on_test"] is True and not any("ON TEST DATA" in n for n in s["notes"])
    assert "budget_met_on_test" not in summarize(before, after, {}, _spec(PRUNE), budget=budget)


def test_infinity_threshold_spec_never_reaches_the_summary():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        load_spec('{"steps": [{"kind": "prune", "method": "threshold", "threshold": Infinity}]}')
