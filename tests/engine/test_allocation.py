"""Allocation from sensitivity curves: exact totals, bounds, monotonicity and optimality (pure numpy)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from workers.engine.allocation import (
    Curve,
    allocate,
    highest_target,
    predicted_drop,
    total_for_drop,
    unit_keeps,
    weight_targets,
)

LEVELS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def curve(size, drops, **kw) -> Curve:
    return Curve(size, LEVELS, tuple(drops), **kw)


FLAT = (0.0, 0.0, 0.001, 0.002, 0.01, 0.03)  # a big, redundant layer
STEEP = (0.01, 0.05, 0.2, 0.4, 0.6, 0.8)  # a sensitive one


def test_predicted_drop_interpolates_from_zero_clips_noise_and_extrapolates_upwards():
    c = curve(1000, (0.02, -0.01, 0.05, 0.1, 0.2, 0.3))  # a negative drop is noise: counted as 0, then cummax
    assert predicted_drop(c, 0) == 0.0
    assert predicted_drop(c, 150) == pytest.approx(0.01)  # halfway to the first point
    assert predicted_drop(c, 500) == pytest.approx(0.02)  # the -0.01 became the running maximum 0.02
    assert predicted_drop(c, 900) == pytest.approx(0.2)
    beyond = predicted_drop(c, 1000)
    assert beyond > 0.3  # past the last level: still rising


def test_allocate_meets_the_total_exactly_and_gives_the_sensitive_layer_less():
    curves = [curve(10_000, FLAT), curve(1_000, STEEP)]
    for total in (0, 3_000, 8_000, 9_000, 9_900):
        counts = allocate(curves, total)
        assert sum(counts) == total
        assert all(0 <= n <= c.size for n, c in zip(counts, curves))
        if total:
            assert counts[0] / 10_000 > counts[1] / 1_000  # the flat layer takes a larger share


def test_allocate_respects_bounds_and_refuses_what_they_cannot_give():
    curves = [curve(100, FLAT, max_removed=80, min_removed=10), curve(100, STEEP, max_removed=90)]
    counts = allocate(curves, 120)
    assert sum(counts) == 120 and 10 <= counts[0] <= 80 and 0 <= counts[1] <= 90
    assert allocate(curves, 10) == [10, 0]
    with pytest.raises(ValueError, match="cannot remove 171"):
        allocate(curves, 171)
    with pytest.raises(ValueError, match="cannot remove 5"):
        allocate(curves, 5)


def test_allocation_is_monotone_in_the_total():
    rng = np.random.default_rng(0)
    curves = [curve(int(n), np.sort(rng.uniform(0, 0.5, len(LEVELS)))) for n in rng.integers(50, 500, 6)]
    high = sum(c.size for c in curves)
    previous = [0] * len(curves)
    for total in range(0, high + 1, max(1, high // 40)):
        counts = allocate(curves, total)
        assert all(a >= b for a, b in zip(counts, previous)), "a larger total took weights back from a layer"
        previous = counts


def test_allocate_is_optimal_on_convex_curves_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        # convex curves: increasing slopes, so the hull is the curve itself and greedy must be optimal
        curves = []
        for _ in range(3):
            slopes = np.sort(rng.uniform(0, 1, 4))
            xs = np.array([0.25, 0.5, 0.75, 1.0])
            drops = np.cumsum(slopes * 0.25)
            curves.append(Curve(8, tuple(xs), tuple(drops)))
        total = int(rng.integers(1, 20))
        got = allocate(curves, total)
        cost = sum(predicted_drop(c, n) for c, n in zip(curves, got))
        best = min(
            sum(predicted_drop(c, n) for c, n in zip(curves, combo))
            for combo in itertools.product(range(9), repeat=3)
            if sum(combo) == total
        )
        assert cost == pytest.approx(best, abs=1e-9)


def test_free_pruning_is_spread_evenly_across_flat_layers():
    curves = [curve(1000, (0, 0, 0, 0, 0.1, 0.2)), curve(1000, (0, 0, 0, 0, 0.1, 0.2))]
    counts = allocate(curves, 1000)
    assert counts == [500, 500]


def test_total_for_drop_is_the_largest_total_within_the_predicted_drop():
    curves = [curve(10_000, FLAT), curve(1_000, STEEP)]
    total = total_for_drop(curves, 0.01)
    assert 8_000 < total < 11_000
    counts = allocate(curves, total)
    assert sum(predicted_drop(c, n) for c, n in zip(curves, counts)) <= 0.01 + 1e-9
    more = allocate(curves, total + 50)
    assert sum(predicted_drop(c, n) for c, n in zip(curves, more)) > 0.01
    assert total_for_drop(curves, 0.0) < total


def test_weight_targets_are_exact_counts_and_split_a_separable_layer_by_size():
    weights = {"fc1/kernel": 784 * 30, "sep/depthwise_kernel": 90, "sep/pointwise_kernel": 300, "out/kernel": 300}
    layer_curves = {"fc1": (LEVELS, FLAT), "sep": (LEVELS, STEEP), "out": (LEVELS, STEEP)}
    total = math.floor(0.9 * sum(weights.values()) + 0.5)
    caps = {k: n - max(1, math.ceil(0.25 * 0.1 * n)) for k, n in weights.items()}
    targets = weight_targets(weights, {}, caps, layer_curves, total)
    zeros = {k: math.floor(targets[k] * n + 0.5) for k, n in weights.items()}
    assert sum(zeros.values()) == total  # exact: the pruner's target_count of each sparsity gives these counts
    assert all(zeros[k] <= caps[k] for k in weights)
    assert targets["fc1/kernel"] > targets["out/kernel"]
    # held zeros stay: a weight already sparser than its share keeps its zeros
    held = {"out/kernel": 290}
    again = weight_targets(weights, held, caps, layer_curves, total)
    assert math.floor(again["out/kernel"] * 300 + 0.5) >= 290
    with pytest.raises(KeyError):
        weight_targets({"other/kernel": 10}, {}, {}, layer_curves, 5)


def test_unit_keeps_keep_the_ratio_overall_and_protect_the_sensitive_group():
    units = {"conv1": 64, "conv2": 128, "fc": 256}
    unit_curves = {"conv1": (LEVELS, STEEP), "conv2": (LEVELS, FLAT), "fc": (LEVELS, FLAT)}
    keeps = unit_keeps(units, units, unit_curves, 0.5)
    assert sum(keeps.values()) == math.ceil(0.5 * 448)
    assert keeps["conv1"] / 64 > keeps["conv2"] / 128
    rounded = unit_keeps(units, units, unit_curves, 0.5, round_to=8)
    assert all(k % 8 == 0 for k in rounded.values()) and all(k >= 8 for k in rounded.values())
    # from a model that already lost units: never more than it has now
    current = {"conv1": 40, "conv2": 128, "fc": 100}
    again = unit_keeps(units, current, unit_curves, 0.3)
    assert all(again[k] <= current[k] for k in units) and sum(again.values()) == math.ceil(0.3 * 448)


def test_highest_target_is_where_the_floors_stop_the_pool():
    pool = {"a/kernel": 1000, "b/kernel": 1000}

    def floors(s):  # each weight keeps a quarter of the average density (as the pruner's global floors)
        return {k: n - max(1, math.ceil(0.25 * (1 - s) * n)) for k, n in pool.items()}

    assert highest_target(pool, floors, 0.995) == 0.995
    assert highest_target({"a/kernel": 4}, lambda s: {"a/kernel": 2}, 0.99) == pytest.approx(0.5, abs=0.13)
