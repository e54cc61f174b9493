"""Part 5d's arithmetic (bench/overhead_floor.py): the floor is each piece times the number of times a job needs it,
and the least a job pays adds the cheaper way through what it cannot skip. Plain values, no TensorFlow."""

from __future__ import annotations

import pytest

from bench.overhead_floor import FLOOR, ONE_RUN, analyse, floors

PIECES = {"load": 0.8, "save": 0.7, "gzip": 1.6, "evaluate": 0.3, "batchnorm": 1.5, "latency": 1.4, "reload": 0.9}


def _floor_run(traces: dict | None = None, **changes) -> dict:
    pieces = {**PIECES, ONE_RUN: 0.1, **changes}
    traces = {
        "forward_first_call_s": 0.75,
        "batchnorm_first_call_s": 2.9,
        "batchnorm_eager_s": 3.2,
        "eager_evaluation_fresh_model_s": 0.7,
        "reload_compiled_s": 1.2,
        **(traces or {}),
    }
    return {"pieces": {k: {"s": v} for k, v in pieces.items()}, "traces": traces}


def test_the_floor_counts_each_piece_as_often_as_a_job_needs_it():
    got = floors({**PIECES, ONE_RUN: 0.1})
    # one load and one reload, a save and a gzip before and after, four held-out passes, one BatchNorm pass and a
    # latency timing before and after
    expected = 0.8 + 2 * 0.7 + 2 * 1.6 + 4 * 0.3 + 1.5 + 2 * 1.4 + 0.9
    assert got["engine_settings_s"] == pytest.approx(expected)
    assert got["one_latency_run_s"] == pytest.approx(expected - 2 * 1.4 + 2 * 0.1)
    assert sum(count for count, _ in FLOOR.values()) == 13


def test_the_least_a_job_pays_takes_the_cheaper_way_through_what_it_cannot_skip():
    runs = [_floor_run(), _floor_run(gzip=1.8), _floor_run(gzip=1.4)]  # medians: gzip 1.6
    job = {"wall_s": 50.0, "training_s": 34.0, "outside_training_s": 16.0, "outside_training_cpu_s": 23.0}
    a = analyse(runs, {"plain": [job]})
    floor = a["floors_s"]["engine_settings_s"]
    assert a["pieces_s"]["gzip"] == pytest.approx(1.6)
    # the BatchNorm pass: traced costs 2.9 - 1.5 = 1.4 more, eager 3.2 - 1.5 = 1.7 more: the trace is the cheaper;
    # the fresh model's first evaluation: eager 0.7 - 0.3 = 0.4, cheaper than a 0.75 s trace
    unavoidable = 0.75 + 1.4 + 0.4
    assert a["least_s"]["engine_settings_s"] == pytest.approx(floor + unavoidable)
    assert a["least_s"]["one_latency_run_s"] == pytest.approx(a["floors_s"]["one_latency_run_s"] + unavoidable)
    assert a["least_s"]["gzip_hidden_s"] == pytest.approx(floor + unavoidable - 2 * 1.6)
    assert a["jobs"]["plain"]["outside_training_s"] == 16.0

    # a slow trace (4.0 - 1.5 = 2.5 more) makes the eager pass (1.7 more) the cheaper one; a fresh model whose
    # eager evaluation costs more than a trace is counted at the trace
    slow = {"batchnorm_first_call_s": 4.0, "eager_evaluation_fresh_model_s": 1.5}
    other = analyse([_floor_run(traces=slow)], {"plain": [job]})
    assert other["extra_s"]["batchnorm_trace_s"] == pytest.approx(2.5)
    assert other["least_s"]["engine_settings_s"] == pytest.approx(
        other["floors_s"]["engine_settings_s"] + 0.75 + 1.7 + 0.75
    )
