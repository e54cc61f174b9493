"""The budget search: level proposals, warm starts, the chosen trial, met/not met and cancellation.

The search logic is exercised with trial functions whose drop is a known function of the fraction removed (the
model side of a trial is covered by tests/engine/test_pipeline_search.py); `measure` on a real Keras model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from workers.engine.budget import (
    LevelSearch,
    Trial,
    accuracy_noise,
    choose,
    measure,
    near_miss,
    needed,
    search,
    worth_retesting,
)
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


def test_near_miss_is_past_the_budget_by_at_most_the_budget_or_the_noise():
    assert near_miss(0.015, 0.01) and near_miss(0.02, 0.01)
    assert not near_miss(0.0201, 0.01) and not near_miss(0.01, 0.01) and not near_miss(float("inf"), 0.01)
    assert near_miss(0.005, 0.001, noise=0.004) and not near_miss(0.0051, 0.001, noise=0.004)
    # one standard error of an accuracy of 0.97 on 2,000 held-out samples: 0.38 points
    assert accuracy_noise(True, 0.97, 2000) == pytest.approx(np.sqrt(0.97 * 0.03 / 2000))
    assert accuracy_noise(False, 0.5, 2000) == 0.0 and accuracy_noise(True, 0.9, 0) == 0.0


def test_a_near_miss_is_fine_tuned_again_at_its_level_before_the_search_moves_down():
    calls, attempts = [], {}

    def run(removed, start):
        attempts[removed] = attempts.get(removed, 0) + 1
        # 0.9 misses by a little the first time and passes when its model is fine-tuned again; 0.95 fails badly
        drop = {0.8: 0.0, 0.9: 0.012 if attempts[removed] == 1 else 0.008}.get(round(removed, 6), 0.5)
        calls.append((removed, start))
        return trial_fn(lambda r: drop, 0.01, [])(removed, start)

    seen = []
    result = search(
        run,
        first=0.8,
        highest=0.99,
        max_trials=4,
        objective="nonzero_params",
        retry=lambda t: near_miss(t.drop, 0.01),
        on_trial=lambda i, t, pending: seen.append(pending),
    )
    levels = [round(t.removed, 6) for t in result.trials]
    assert levels[:3] == [0.8, 0.9, 0.9]  # the near miss at 0.9 is retried, not bisected away
    assert [t.retry_of for t in result.trials[:3]] == [None, None, 1] and result.trials[2].start == 1
    assert seen[:3] == [None, 1, None]  # the caller is told which model the next trial needs
    assert result.trials[2].within_budget and levels[3] == pytest.approx(0.95)  # then the search goes on up
    assert result.trials[result.chosen].removed == pytest.approx(0.9) and result.met


def test_a_big_miss_or_a_retry_that_misses_again_is_not_retried():
    calls = []
    result = search(
        trial_fn(lambda r: 0.0 if r <= 0.8 else (0.015 if r <= 0.9 else 0.5), 0.01, calls),
        first=0.8,
        highest=0.99,
        max_trials=5,
        objective="nonzero_params",
        retry=lambda t: near_miss(t.drop, 0.01),
    )
    levels = [round(t.removed, 6) for t in result.trials]
    assert levels[:3] == [0.8, 0.9, 0.9]  # the near miss at 0.9, then its retry (which misses again)
    assert levels[3] < 0.9 and result.trials[3].retry_of is None  # not retried twice: the search bisects down
    assert all(t.retry_of is None for t in result.trials if t.removed > 0.9)  # 0.95 (drop 0.5) is never retried


def far_steps_miss(miss: float):
    """Trials past 0.9 within budget (drop 0) only when their start is at most half a halving of density away;
    from further back they lose `miss`."""
    levels_by_index = []

    def run(removed, start):
        frm = 0.0 if start is None else levels_by_index[start]
        levels_by_index.append(removed)
        small_step = (1 - frm) / (1 - removed) <= np.sqrt(2) + 1e-9
        return trial_fn(lambda r: 0.0 if r <= 0.9 or small_step else miss, 0.01, [])(removed, start)

    return run


def test_a_level_missed_from_further_back_is_tried_again_from_the_nearer_model():
    result = search(far_steps_miss(0.5), first=0.8, highest=0.99, max_trials=6, objective="nonzero_params")
    levels = [round(t.removed, 4) for t in result.trials]
    mid = round(1 - np.sqrt(0.1 * 0.05), 4)
    # 0.95 misses from 0.9 (a whole halving); 0.9293 is within from 0.9; 0.95 again, from 0.9293: within
    assert levels[:5] == [0.8, 0.9, 0.95, mid, 0.95]
    assert [t.within_budget for t in result.trials[:5]] == [True, True, False, True, True]
    assert result.trials[4].start == 3 and result.trials[4].retry_of is None
    assert levels[5] == 0.975 and not result.trials[5].within_budget  # then on up, a whole halving: missed
    assert result.trials[result.chosen].removed == pytest.approx(0.95)
    # a miss from the model it is retried from is not tried again: the search bisects
    s = LevelSearch(first=0.8, highest=0.99)
    s.record(0.8, True, 0.0)
    s.record(0.9, False, 0.8)
    s.record(0.86, True, 0.8)
    assert s.next() == pytest.approx(0.9)  # 0.9 was pruned from 0.8, before 0.86 was within
    s.record(0.9, False, 0.86)
    assert s.next() == pytest.approx(1 - np.sqrt(0.14 * 0.1))


def test_worth_retesting_is_past_the_budget_by_at_most_twice_a_near_miss():
    assert worth_retesting(0.03, 0.01) and worth_retesting(0.005, 0.01)  # 2 x 0.01 past it; within it
    assert not worth_retesting(0.0301, 0.01) and not worth_retesting(float("inf"), 0.01)
    assert worth_retesting(0.013, 0.001, noise=0.006) and not worth_retesting(0.0131, 0.001, noise=0.006)


@pytest.mark.parametrize("collapse, retested", [(0.5, False), (0.025, True)])
def test_only_a_miss_within_reach_is_tried_again_from_the_nearer_model(collapse, retested):
    result = search(
        far_steps_miss(collapse),
        first=0.8,
        highest=0.99,
        max_trials=5,
        objective="nonzero_params",
        retest=lambda t: worth_retesting(t.drop, 0.01),
    )
    levels = [round(t.removed, 4) for t in result.trials]
    mid = round(1 - np.sqrt(0.1 * 0.05), 4)
    assert levels[:4] == [0.8, 0.9, 0.95, mid]  # 0.95 missed from 0.9, the bisection point is within
    if retested:  # 2.5 times the budget, 1.5 past it: tried again from 0.9293, where it is within
        assert levels[4] == 0.95 and result.trials[4].start == 3 and result.trials[4].within_budget
    else:  # 50 times the budget: the search bisects between 0.9293 and 0.95 instead
        assert levels[4] == round(1 - np.sqrt((1 - mid) * 0.05), 4) and result.trials[4].start == 3
    # the same through LevelSearch: a miss recorded as not worth re-testing is bisected towards at once
    s = LevelSearch(first=0.8, highest=0.99)
    s.record(0.8, True, 0.0)
    s.record(0.9, False, 0.8, retest=False)
    s.record(0.86, True, 0.8)
    assert s.next() == pytest.approx(1 - np.sqrt(0.14 * 0.1))


def test_a_retried_miss_counts_as_pruned_from_where_its_first_try_started():
    attempts = {}

    def run(removed, start):
        key = round(removed, 6)
        attempts[key] = attempts.get(key, 0) + 1
        # 0.9 is a near miss twice (from 0.8, then the retry); from the bisection point it passes
        drop = 0.0 if removed < 0.9 - 1e-9 or attempts[key] > 2 else 0.015
        return trial_fn(lambda r: drop, 0.01, [])(removed, start)

    result = search(
        run,
        first=0.8,
        highest=0.99,
        max_trials=5,
        objective="nonzero_params",
        retry=lambda t: near_miss(t.drop, 0.01),
    )
    levels = [round(t.removed, 4) for t in result.trials]
    mid = round(1 - np.sqrt(0.2 * 0.1), 4)
    # the retry of 0.9 started from 0.9's own model, but the level was pruned from 0.8, behind the bisection point:
    # so 0.9 is tried again from 0.8586 rather than bisected towards
    assert levels == [0.8, 0.9, 0.9, mid, 0.9]
    assert result.trials[2].retry_of == 1 and result.trials[4].start == 3 and result.trials[4].within_budget
    assert result.trials[result.chosen].removed == pytest.approx(0.9)


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
    assert needed(trials, "latency", pending=2) == {0, 1, 2}  # and the near miss the next trial retries


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
            on_trial=lambda i, trial, pending: cancel.append(i),
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
