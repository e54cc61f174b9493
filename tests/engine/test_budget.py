"""The budget search: level proposals, warm starts, the chosen trial, met/not met and cancellation.

The search logic is exercised with trial functions whose drop is a known function of the fraction removed (the
model side of a trial is covered by tests/engine/test_pipeline_search.py); `measure` on a real Keras model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from workers.engine.budget import LevelSearch, Trial, choose, measure, needed, search
from workers.engine.errors import Cancelled


def trial_fn(drop_of, max_drop, calls):
    def run(removed, start):
        calls.append((removed, start))
        d = drop_of(removed)
        return Trial(
            level=removed,
            metric=0.9 - d,
            drop=d,
            nonzero_params=int(1000 * (1 - removed)),
            size_bytes=int(4000 * (1 - removed)),
            macs=int(1000 * (1 - removed)),
            latency_ms=None,
            within_budget=d <= max_drop,
            epochs=1,
        )

    return run


def test_level_search_expands_then_bisects_in_log_density():
    s = LevelSearch(first=0.8, highest=0.99)
    assert s.next() == 0.8
    s.record(0.8, True)
    assert s.next() == pytest.approx(0.9)  # half the density
    s.record(0.9, True)
    assert s.next() == pytest.approx(0.95)
    s.record(0.95, False)
    assert s.next() == pytest.approx(1 - np.sqrt(0.1 * 0.05))  # geometric mean of the densities
    s.record(1 - np.sqrt(0.1 * 0.05), False)
    nxt = s.next()
    assert 0.9 < nxt < 1 - np.sqrt(0.1 * 0.05)


def test_level_search_stops_at_the_highest_level_and_when_converged():
    s = LevelSearch(first=0.5, highest=0.6)
    s.record(0.5, True)
    assert s.next() == 0.6
    s.record(0.6, True)
    assert s.next() is None
    s = LevelSearch(first=0.9, highest=0.99, min_ratio=1.05)
    s.record(0.9, True)
    s.record(0.904, False)
    assert s.next() is None


def test_search_finds_the_most_compressed_trial_within_budget_and_warm_starts_from_it():
    calls = []
    threshold = 0.93  # the drop crosses the budget here
    result = search(
        trial_fn(lambda r: 0.002 if r <= threshold else 0.05, 0.01, calls),
        first=0.8,
        highest=0.99,
        max_trials=6,
        objective="nonzero_params",
    )
    assert result.met
    levels = [t.removed for t in result.trials]
    within = [t.removed for t in result.trials if t.within_budget]
    chosen = result.trials[result.chosen]
    assert chosen.removed == max(within) and chosen.within_budget
    assert 0.9 <= chosen.removed <= threshold
    assert len(result.trials) <= 6 and levels[0] == 0.8
    # every trial started from the most compressed trial within budget before it (none for the first)
    for i, (_removed, start) in enumerate(calls):
        ok_before = [j for j in range(i) if result.trials[j].within_budget]
        expected = max(ok_before, key=lambda j: result.trials[j].removed) if ok_before else None
        assert start == expected and result.trials[i].start == expected


def test_search_that_cannot_meet_the_budget_returns_the_closest_trial():
    calls = []
    result = search(
        trial_fn(lambda r: 0.02 + r / 10, 0.01, calls), first=0.5, highest=0.99, max_trials=4, objective="size"
    )
    assert not result.met and len(result.trials) == 4
    drops = [t.drop for t in result.trials]
    assert result.trials[result.chosen].drop == min(drops)
    assert all(start is None for _, start in calls)  # nothing within budget to warm-start from
    assert [t.removed for t in result.trials] == sorted([t.removed for t in result.trials], reverse=True)


def test_choose_uses_the_objective_among_trials_within_budget():
    def t(removed, within, latency):
        return Trial(
            level=removed,
            metric=0.9,
            drop=0.0,
            nonzero_params=100,
            size_bytes=100,
            macs=100,
            latency_ms=latency,
            within_budget=within,
            epochs=1,
            removed=removed,
        )

    trials = [t(0.5, True, 2.0), t(0.7, True, 3.0), t(0.9, False, 1.0)]
    assert choose(trials, "latency") == (0, True)  # the fastest within budget, not the most compressed
    assert choose(trials, "nonzero_params") == (1, True)  # a tie in the objective: the more compressed
    assert needed(trials, "latency") == {0, 1}  # the choice and the next warm start


def test_search_checks_cancellation_between_trials():
    calls, cancel = [], []
    with pytest.raises(Cancelled):
        search(
            trial_fn(lambda r: 0.0, 0.01, calls),
            first=0.5,
            highest=0.99,
            max_trials=6,
            objective="nonzero_params",
            should_cancel=lambda: len(cancel) >= 2,
            on_trial=lambda i, trial: cancel.append(i),
        )
    assert len(calls) == 2


def test_measure_reports_nonzero_parameters_size_and_macs_of_a_real_model(tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a"), keras.layers.Dense(4, name="b")])
    dense = measure(model, tmp_path, method="magnitude")
    kernel = model.get_layer("a").kernel
    kernel.assign(np.where(np.arange(128).reshape(8, 16) % 4 == 0, kernel.numpy(), 0.0))
    sparse = measure(model, tmp_path, method="magnitude", latency_runs=3)
    assert dense["nonzero_params"] - sparse["nonzero_params"] == 96
    assert dense["macs"] == 8 * 16 + 16 * 4 and sparse["macs"] == 32 + 16 * 4  # zero-skipping for magnitude
    assert sparse["size_bytes"] < dense["size_bytes"] and dense["latency_ms"] is None
    assert sparse["latency_ms"] > 0 and sparse["extra"]["params"] == 8 * 16 + 16 + 16 * 4 + 4
    assert not list(tmp_path.glob("*.keras"))
