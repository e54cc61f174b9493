"""The rebuilt model is genuinely smaller and, before any fine-tuning, computes exactly what the masked original
computes (removed units zeroed where they are consumed); compensation folds the removed channels' mean back."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.engine.structured import models as M
from tests.engine.structured.helpers import assert_same_outputs, kept, outputs, prune, sample_inputs, units
from workers.engine.importance import CRITERIA
from workers.engine.selection import LayerSelection
from workers.engine.structured import masked_reference

L = keras.layers
CRITERION_NAMES = sorted(CRITERIA)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("criterion", CRITERION_NAMES)
@pytest.mark.parametrize("name", sorted(M.BUILDERS))
def test_rebuilt_model_computes_what_the_masked_original_computes(zoo, name, criterion, scope):
    model = zoo[name]
    x = sample_inputs(model)
    new, report = prune(model, criterion=criterion, scope=scope)
    ref = masked_reference(model, report)
    assert_same_outputs(new, ref, x)
    # not vacuous: the removed units did contribute to the original outputs
    assert np.abs(outputs(model, x) - outputs(ref, x)).max() > 1e-4 * np.abs(outputs(model, x)).max()
    assert new.count_params() < model.count_params()
    assert report.params_before == model.count_params() and report.params_after == new.count_params()
    out = model.layers[-1].name
    assert units(new)[out] == units(model)[out]  # the model's output units are never removed
    assert new.output_shape == model.output_shape


def test_keep_ratio_one_rebuilds_an_identical_model(zoo):
    model = zoo["residual_functional"]
    new, report = prune(model, keep_ratio=1.0)
    assert new.count_params() == model.count_params()
    assert all(g.units_after == g.units_before for g in report.groups)
    np.testing.assert_array_equal(outputs(new, sample_inputs(model)), outputs(model, sample_inputs(model)))


def test_masked_reference_equals_zeroing_the_removed_units_at_their_source():
    """An independent construction for a ReLU MLP: zero the removed units' kernel columns and biases."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((10,)),
            L.Dense(24, activation="relu", name="h1"),
            L.Dense(16, activation="relu", name="h2"),
            L.Dense(3, name="out"),
        ]
    )
    new, report = prune(model, criterion="l2", keep_ratio=0.4, x_calib=None)  # no data: no compensation
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())
    for name in ("h1", "h2"):
        layer = zeroed.get_layer(name)
        k, b = layer.get_weights()
        drop = np.setdiff1d(np.arange(layer.units), kept(report, name))
        k[:, drop], b[drop] = 0.0, 0.0
        layer.set_weights([k, b])
    x = sample_inputs(model)
    assert_same_outputs(new, zeroed, x)
    assert_same_outputs(masked_reference(model, report), zeroed, x)


@pytest.mark.parametrize("model_kind", ["dense", "conv_bn"])
def test_units_that_pass_on_a_constant_are_removed_without_changing_the_outputs(model_kind):
    """Removed channels take their mean contribution with them; with calibration data it is folded back into the
    consumer's bias (Dense) or the moving mean of the BatchNorm after it (a Conv without bias). Channels that
    are constant (zero kernel, positive bias through a ReLU) are then removed exactly."""
    keras.utils.set_random_seed(4)
    if model_kind == "dense":
        model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
        consumer, where = "out", "bias"
    else:  # valid padding: a constant channel contributes the same at every position
        model = keras.Sequential(
            [
                keras.Input((9, 9, 2)),
                L.Conv2D(8, 3, activation="relu", name="h"),
                L.Conv2D(4, 3, use_bias=False, name="c2"),
                L.BatchNormalization(name="bn"),
                L.GlobalAveragePooling2D(),
                L.Dense(3, name="out"),
            ]
        )
        consumer, where = "c2", "bn"
    k, b = model.get_layer("h").get_weights()
    k[..., [0, 2, 4, 6]] = 0.0  # constant units: relu(bias) whatever the input, and the smallest kernel norms
    b[[0, 2, 4, 6]] = [0.5, 1.0, 1.5, 2.0]
    model.get_layer("h").set_weights([k, b])
    x = sample_inputs(model, n=64, seed=5)
    only_h = LayerSelection(include=["h"])
    new, report = prune(model, criterion="l1", x_calib=x, selection=only_h)
    assert kept(report, "h") == [1, 3, 5, 7]
    assert report.compensated == [consumer] and report.shifts[consumer][0] == where
    assert "shifts" not in report.to_dict() and report.to_dict()["compensated"] == [consumer]
    assert_same_outputs(new, model, x, rel=1e-5)
    assert_same_outputs(new, model, sample_inputs(model, n=16, seed=9), rel=1e-5)  # not only on the calibration data
    assert_same_outputs(new, masked_reference(model, report), x)
    # without data: sliced only, the outputs move
    plain, plain_report = prune(model, criterion="l1", x_calib=None, selection=only_h)
    assert plain_report.compensated == []
    assert np.abs(outputs(plain, x) - outputs(model, x)).max() > 0.1


@pytest.mark.parametrize("name", sorted(M.BUILDERS))
def test_rebuilt_model_saves_and_loads_without_custom_objects(zoo, name, tmp_path):
    model = zoo[name]
    new, _ = prune(model)
    assert type(new) is type(model)
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]
    assert all(type(layer).__module__.startswith("keras.") for layer in new.layers)
    new.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = sample_inputs(model)
    np.testing.assert_allclose(outputs(loaded, x), outputs(new, x), rtol=0, atol=1e-6)


def test_rebuilt_model_trains_with_a_compiled_step(zoo):
    model = zoo["residual_functional"]
    new, _ = prune(model)
    new.compile("adam", "mse")
    x = sample_inputs(model, n=16)
    history = new.fit(x, np.zeros((16, 4), "float32"), epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


APPLICATIONS = {  # stock architectures, random weights (no download): depthwise + residual, bottlenecks, dense concat
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    ),
    "ResNet50": lambda: keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10),
    "DenseNet121": lambda: keras.applications.DenseNet121(input_shape=(32, 32, 3), weights=None, classes=10),
}


@pytest.mark.parametrize(
    "name",
    [
        "MobileNetV2",
        pytest.param("ResNet50", marks=pytest.mark.slow),
        pytest.param("DenseNet121", marks=pytest.mark.slow),
    ],
)
def test_stock_architectures_are_pruned_and_match_their_masked_reference(name):
    keras.utils.set_random_seed(0)
    model = M.randomize_batchnorm(APPLICATIONS[name]())
    new, report = prune(model, keep_ratio=0.5, round_to=8)
    assert new.count_params() < 0.4 * model.count_params()
    assert len(report.groups) > 20 and set(report.skipped) == {"predictions"}
    assert units(new)["predictions"] == 10
    assert_same_outputs(new, masked_reference(model, report), sample_inputs(model, n=4))
