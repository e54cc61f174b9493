"""Importance criteria: pure numpy scores, one per output unit (last axis)."""

from __future__ import annotations

import numpy as np
import pytest

from workers.engine import importance
from workers.engine.errors import SpecError

WEIGHT_CRITERIA = [n for n, c in importance.CRITERIA.items() if c.needs == "weights"]
DATA_CRITERIA = [n for n, c in importance.CRITERIA.items() if c.needs == "activations"]


def test_registry_holds_two_weight_and_two_data_criteria():  # the spec's: see test_config
    assert set(WEIGHT_CRITERIA) == {"l1", "l2"} and set(DATA_CRITERIA) == {"mean_activation", "apoz"}


def test_unknown_criterion_is_a_spec_error_naming_the_allowed_ones():
    with pytest.raises(SpecError, match="'taylor'.*apoz, l1, l2, mean_activation") as err:
        importance.get_criterion("taylor")
    assert err.value.field == "criterion"


@pytest.mark.parametrize("name", sorted(importance.CRITERIA))
@pytest.mark.parametrize("shape", [(7, 5), (3, 3, 4, 5), (2, 6, 6, 5)])
def test_every_criterion_gives_one_finite_nonnegative_score_per_last_axis_unit(name, shape):
    a = np.random.default_rng(0).normal(size=shape).astype("float32")
    scores = importance.get_criterion(name)(a)
    assert scores.shape == (5,)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)


@pytest.mark.parametrize("name, order", [("l1", 1), ("l2", 2)])
def test_weight_criteria_are_the_norm_of_each_units_incoming_weights(name, order):
    kernel = np.random.default_rng(1).normal(size=(3, 3, 4, 6))  # conv kernel: (kh, kw, in, out)
    scores = importance.get_criterion(name)(kernel)
    expected = [np.linalg.norm(kernel[..., j].ravel(), ord=order) for j in range(6)]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


@pytest.mark.parametrize("name", WEIGHT_CRITERIA)
def test_weight_criteria_rank_larger_units_higher(name):
    kernel = np.ones((8, 4)) * np.array([0.1, 3.0, 0.5, 1.0])
    assert list(np.argsort(importance.get_criterion(name)(kernel))) == [0, 2, 3, 1]


def test_mean_activation_is_the_mean_absolute_value_over_samples_and_positions():
    acts = np.random.default_rng(2).normal(size=(5, 4, 4, 3))
    scores = importance.get_criterion("mean_activation")(acts)
    np.testing.assert_allclose(scores, [np.abs(acts[..., c]).mean() for c in range(3)], rtol=1e-12)


def test_apoz_score_is_one_minus_the_fraction_of_zeros():
    acts = np.zeros((4, 10, 3))
    acts[:, :5, 1] = 2.0  # half of unit 1 is non-zero
    acts[..., 2] = 0.3  # unit 2 is never zero; unit 0 always is
    np.testing.assert_allclose(importance.get_criterion("apoz")(acts), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("name", DATA_CRITERIA)
def test_data_criteria_combine_over_batches_as_a_row_weighted_mean(name):
    """structured pruning streams calibration data batch by batch; the weighted mean must equal the one-shot score."""
    rng = np.random.default_rng(3)
    acts = np.maximum(rng.normal(size=(11, 3, 3, 4)), 0.0)  # relu-like: real zeros for APoZ
    crit = importance.get_criterion(name)
    batches = [acts[:4], acts[4:8], acts[8:]]
    combined = sum(crit(b) * importance.rows(b) for b in batches) / sum(importance.rows(b) for b in batches)
    np.testing.assert_allclose(combined, crit(acts), rtol=1e-12)


def test_normalize_gives_mean_one_and_is_scale_invariant():
    s = np.array([1.0, 2.0, 5.0, 0.0])
    n = importance.normalize(s)
    assert n.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(importance.normalize(1000.0 * s), n)
    assert list(np.argsort(n)) == list(np.argsort(s))


def test_normalize_leaves_all_zero_scores_at_zero():
    np.testing.assert_array_equal(importance.normalize(np.zeros(4)), np.zeros(4))
