"""Handlers: every layer type slices its weights along the kept channels (and passes them on as traced)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.engine.structured import models as M
from tests.engine.structured.helpers import assert_same_outputs, kept, prune, sample_inputs, units, weights
from workers.engine.structured import HANDLERS, handlers, masked_reference

L = keras.layers

MERGES = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"]


def test_next_layer_input_rows_shrink_with_the_producer(zoo):
    model = zoo["mlp_sequential"]
    new, report = prune(model, x_calib=None)  # without data the kept rows and biases are sliced, nothing else
    k1, k2 = kept(report, "fc1"), kept(report, "fc2")
    old, got = weights(model.get_layer("fc2")), weights(new.get_layer("fc2"))
    np.testing.assert_array_equal(got["kernel"], old["kernel"][k1][:, k2])
    np.testing.assert_array_equal(got["bias"], old["bias"][k2])
    assert new.get_layer("out").get_weights()[0].shape == (16, 10)


@pytest.mark.parametrize(
    "name, producer, bn",
    [("mlp_sequential", "fc2", "bn"), ("cnn_sequential", "conv1", "bn1"), ("conv1d_functional", "c1", "c1_bn")],
)
def test_batchnorm_gamma_beta_and_moving_statistics_follow_the_kept_channels(zoo, name, producer, bn):
    model = zoo[name]
    new, report = prune(model)
    k = kept(report, producer)
    old, got = weights(model.get_layer(bn)), weights(new.get_layer(bn))
    assert set(got) == {"gamma", "beta", "moving_mean", "moving_variance"}
    for key in got:
        np.testing.assert_array_equal(got[key], old[key][k])
    assert bn in next(g for g in report.groups if producer in g.layers).dependents


def test_flatten_to_dense_rows_map_spatial_index_times_channels_plus_channel(zoo):
    model = zoo["cnn_sequential"]
    new, report = prune(model)
    kc, kf = kept(report, "conv2"), kept(report, "fc")
    old = model.get_layer("fc").get_weights()[0]
    positions = old.shape[0] // 24
    expected = old.reshape(positions, 24, 32)[:, kc, :][:, :, kf].reshape(positions * len(kc), len(kf))
    np.testing.assert_array_equal(new.get_layer("fc").get_weights()[0], expected)


@pytest.mark.parametrize("merge", MERGES)
def test_merge_layers_couple_their_inputs_into_one_group(merge):
    keras.utils.set_random_seed(1)
    model = M.merge_functional(merge)
    new, report = prune(model, criterion="l1")
    group = next(g for g in report.groups if "a" in g.layers)
    assert group.layers == ["a", "b"] and group.kept_indices["a"] == group.kept_indices["b"]
    assert units(new) == {"a": 8, "b": 8, "c": 4, "out": 3}
    assert_same_outputs(new, masked_reference(model, report), sample_inputs(model))


def test_concatenate_offsets_and_depthwise_multiplier_are_respected(zoo):
    model = zoo["concat_depthwise_functional"]
    new, report = prune(model, criterion="l2")
    ka, kb = kept(report, "branch_a"), kept(report, "branch_b")
    concat = sorted(ka + [8 + c for c in kb])  # channel c of the second input lives at offset 8 + c
    dw_old, dw_new = weights(model.get_layer("dw")), weights(new.get_layer("dw"))
    np.testing.assert_array_equal(dw_new["kernel"], dw_old["kernel"][:, :, concat, :])
    expanded = [c * 2 + j for c in concat for j in range(2)]  # depth_multiplier 2: outputs c*m .. c*m+m-1
    np.testing.assert_array_equal(dw_new["bias"], dw_old["bias"][expanded])
    np.testing.assert_array_equal(
        new.get_layer("dw_bn").get_weights()[0], model.get_layer("dw_bn").get_weights()[0][expanded]
    )
    sep_old, sep_new = weights(model.get_layer("sep")), weights(new.get_layer("sep"))
    np.testing.assert_array_equal(sep_new["depthwise_kernel"], sep_old["depthwise_kernel"][:, :, expanded, :])
    mid = [c * 2 + j for c in expanded for j in range(2)]
    np.testing.assert_array_equal(
        sep_new["pointwise_kernel"], sep_old["pointwise_kernel"][:, :, mid, :][..., kept(report, "sep")]
    )


def test_conv1d_filters_are_pruned_through_add_crop_pooling_and_1d_depthwise(zoo):
    model = zoo["conv1d_functional"]
    new, report = prune(model, criterion="l1", keep_ratio=0.25)
    assert units(new) == {"c1": 4, "c2": 4, "sep1d": 2, "c3": 2, "out": 2}
    assert new.get_layer("dw1d").get_weights()[0].shape == (3, 4, 2)  # follows the 4 kept channels, multiplier 2
    assert new.get_layer("sep1d").get_weights()[1].shape == (1, 8, 2)  # pointwise rows: 4 channels * 2
    assert new.get_layer("c3").get_weights()[0].shape == (3, 2, 2)
    assert_same_outputs(new, masked_reference(model, report), sample_inputs(model))


@pytest.mark.parametrize("axis, pruned", [(-1, False), ((1, 2), True)])
def test_layer_normalization_over_channels_is_a_barrier_and_over_positions_passes_through(axis, pruned):
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = L.LayerNormalization(axis=axis, name="ln")(x)
    x = L.Conv2D(8, 3, activation="relu", name="conv2")(L.ReLU(name="relu")(x))
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="gap")(x)))
    new, report = prune(model)
    assert units(new)["conv"] == (4 if pruned else 8)
    assert units(new)["conv2"] == 4
    if not pruned:
        assert "ln" in report.skipped["conv"] and "channel axis" in report.skipped["conv"]
    assert_same_outputs(new, masked_reference(model, report), sample_inputs(model))


def test_every_registered_handler_names_a_stock_keras_layer():
    assert all(isinstance(getattr(keras.layers, name, None), type) for name in HANDLERS)


def _squeeze_excite(target=(1, 1, 12)):
    """EfficientNet's squeeze-excite: expand -> depthwise -> GAP -> Reshape((1, 1, C)) -> reduce -> expand ->
    Multiply with the depthwise output -> project."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(12, 1, name="expand")(inp)
    x = L.BatchNormalization(name="expand_bn")(x)
    x = L.Activation("swish", name="expand_act")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    se = L.GlobalAveragePooling2D(name="squeeze")(x)
    se = L.Reshape(target, name="se_reshape")(se)
    se = L.Conv2D(4, 1, activation="swish", name="se_reduce")(se)
    se = L.Conv2D(12, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="excite")([x, se])
    x = L.Conv2D(6, 1, name="project")(x)
    return M.randomize_batchnorm(keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="gap")(x))))


def test_a_reshape_is_a_barrier_with_the_switch_off(monkeypatch):
    monkeypatch.setattr(handlers, "TRACE_UNIT_RESHAPE", False)
    model = _squeeze_excite()
    _, report = prune(model, criterion="l1", keep_ratio=0.5)
    assert "se_reshape" in report.skipped["expand"]
    assert not any("expand" in g.layers for g in report.groups)


def test_a_reshape_that_only_adds_unit_axes_passes_channels_and_follows_the_kept_count():
    """By default (TRACE_UNIT_RESHAPE), squeeze-excite's Reshape((1, 1, C)) does not fix the expanded channels: expand
    and se_expand (coupled through the Multiply) lose the same units, the reshape's target follows them, and the
    rebuilt model matches."""
    model = _squeeze_excite()
    new, report = prune(model, criterion="l1", keep_ratio=0.5)
    group = next(g for g in report.groups if "expand" in g.layers)
    assert group.layers == ["expand", "se_expand"] and group.units_after == 6
    assert group.kept_indices["expand"] == group.kept_indices["se_expand"]
    assert tuple(new.get_layer("se_reshape").target_shape) == (1, 1, 6)
    assert new.get_layer("se_reduce").get_weights()[0].shape == (1, 1, 6, 2)
    assert_same_outputs(new, masked_reference(model, report), sample_inputs(model))
    reloaded = keras.Model.from_config(new.get_config())  # the rebuilt config is a stock, consistent one
    assert tuple(reloaded.get_layer("se_reshape").target_shape) == (1, 1, 6)


def test_a_reshape_that_moves_channels_stays_a_barrier():
    keras.utils.set_random_seed(5)
    inp = keras.Input((12,))
    x = L.Dense(12, activation="relu", name="producer")(inp)
    x = L.Reshape((3, 4), name="moves")(x)
    x = L.Dense(4, name="after")(x)
    model = keras.Model(inp, L.Dense(2, name="out")(L.Flatten(name="flat")(x)))
    new, report = prune(model, keep_ratio=0.5)
    assert "producer" in report.skipped and "moves" in report.skipped["producer"]
    assert units(new)["producer"] == 12
