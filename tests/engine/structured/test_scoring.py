"""Scores: weight criteria (BatchNorm-aware), data criteria on calibration samples, group sums."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.engine.structured.helpers import kept, l1_normalized, merged_model, prune, sample_inputs
from workers.engine.errors import DataError
from workers.engine.structured import scoring, structured_prune

L = keras.layers


@pytest.mark.parametrize("criterion, order", [("l1", 1), ("l2", 2)])
def test_weight_criteria_keep_the_units_with_the_largest_incoming_norm(zoo, criterion, order):
    model = zoo["mlp_sequential"]
    _, report = prune(model, criterion=criterion)
    k = model.get_layer("fc1").get_weights()[0]
    norms = np.linalg.norm(k, ord=order, axis=0)
    assert kept(report, "fc1") == sorted(np.argsort(-norms, kind="stable")[:32].tolist())


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_weight_criteria_read_the_scale_of_a_following_batchnorm(criterion):
    """A BatchNorm divides out the kernel's scale: a unit with a large kernel but gamma ~ 0 passes on nothing."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, use_bias=False, name="h"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.Dense(2, name="out"),
        ]
    )
    k = model.get_layer("h").get_weights()[0]
    k[:, [0, 2, 4, 6]] *= 10.0  # the largest kernels ...
    model.get_layer("h").set_weights([k])
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    gamma[[0, 2, 4, 6]] = 1e-3  # ... scaled to nearly nothing by the BatchNorm
    var[:] = 4.0
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    _, report = prune(model, criterion=criterion)
    assert kept(report, "h") == [1, 3, 5, 7]


@pytest.mark.parametrize("criterion", ["mean_activation", "apoz"])
def test_data_criteria_remove_the_units_dead_on_the_calibration_data(criterion):
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((5,)), L.Dense(8, activation="relu", name="h"), L.Dense(2, name="out")])
    k, b = model.get_layer("h").get_weights()
    b[[0, 2, 4, 6]] = -50.0  # never active on standard-normal inputs, whatever their weights
    k[:, [0, 2, 4, 6]] *= 10.0  # ... and the largest weights, so a weight criterion would keep them
    model.get_layer("h").set_weights([k, b])
    _, report = prune(model, criterion=criterion)
    assert kept(report, "h") == [1, 3, 5, 7]
    _, by_weight = prune(model, criterion="l1")
    assert kept(by_weight, "h") == [0, 2, 4, 6]


@pytest.mark.parametrize("criterion", ["mean_activation", "apoz"])
def test_data_scores_do_not_depend_on_the_calibration_batch_size(zoo, criterion, monkeypatch):
    model = zoo["residual_functional"]
    x = sample_inputs(model, n=50, seed=2)
    _, whole = prune(model, criterion=criterion, x_calib=x)
    monkeypatch.setattr(scoring, "CALIBRATION_BATCH", 7)  # 8 batches, the last one partial
    _, batched = prune(model, criterion=criterion, x_calib=x)
    assert [g.kept_indices for g in batched.groups] == [g.kept_indices for g in whole.groups]


def test_group_importance_is_the_sum_of_per_member_normalized_scores():
    keras.utils.set_random_seed(8)
    model = merged_model()
    k, bias = model.get_layer("b").get_weights()
    model.get_layer("b").set_weights([k * 1000.0, bias])  # a raw sum would let b alone decide
    _, report = prune(model, criterion="l1")
    score = l1_normalized(model.get_layer("a")) + l1_normalized(model.get_layer("b"))
    expected = sorted(np.argsort(-score, kind="stable")[:8].tolist())
    assert kept(report, "a") == kept(report, "b") == expected
    assert expected != sorted(np.argsort(-l1_normalized(model.get_layer("b")))[:8].tolist())


@pytest.mark.parametrize("criterion", ["mean_activation", "apoz"])
def test_data_criteria_without_calibration_data_raise_a_data_error(zoo, criterion):
    with pytest.raises(DataError, match="x_calib"):
        structured_prune(zoo["mlp_sequential"], criterion=criterion, keep_ratio=0.5)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((4, 7), "float32"), "does not fit"),
        (np.zeros((0, 20), "float32"), "empty"),
        (np.full((4, 20), np.nan, "float32"), "NaN"),
    ],
)
def test_bad_calibration_data_is_a_data_error_naming_x_calib(zoo, x, match):
    with pytest.raises(DataError, match=match) as err:
        structured_prune(zoo["mlp_sequential"], criterion="apoz", keep_ratio=0.5, x_calib=x)
    assert err.value.field == "x_calib"
