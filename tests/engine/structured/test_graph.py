"""Graph tracing: coupled producers, barriers that fix the channels reaching them, models that cannot be traced."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.engine.structured.helpers import assert_same_outputs, kept, prune, sample_inputs, units
from workers.engine.errors import ModelRejected
from workers.engine.structured import masked_reference, structured_prune

L = keras.layers


def test_residual_add_prunes_every_branch_identically(zoo):
    model = zoo["residual_functional"]
    new, report = prune(model, criterion="l2")
    group = next(g for g in report.groups if "stem" in g.layers)
    assert group.layers == ["stem", "conv_b1", "conv_b2"]
    assert group.kept_indices["stem"] == group.kept_indices["conv_b1"] == group.kept_indices["conv_b2"]
    assert {"stem_bn", "bn_b1", "bn_b2", "add1", "add2", "conv_a1", "conv_a2", "head_conv"} <= set(group.dependents)
    k = group.kept_indices["stem"]
    np.testing.assert_array_equal(
        new.get_layer("conv_a2").get_weights()[0],
        model.get_layer("conv_a2").get_weights()[0][:, :, k][..., kept(report, "conv_a2")],
    )


class ScaledDense(L.Dense):
    """A custom layer: the tracing does not know what it computes, so it must be a barrier."""

    def call(self, inputs):
        return super().call(inputs) * 2.0


def _barrier_reshape():
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="producer")(inp)
    x = L.Reshape((4, 4), name="barrier")(x)
    x = L.Conv1D(8, 2, activation="relu", name="after")(x)
    return keras.Model(inp, L.Dense(2, name="out")(L.Flatten()(x)))


def _barrier_permute():
    inp = keras.Input((5, 6))
    x = L.Conv1D(8, 2, activation="relu", name="producer")(inp)
    x = L.Permute((2, 1), name="barrier")(x)
    x = L.Dense(12, activation="relu", name="after")(x)
    return keras.Model(inp, L.Dense(2, name="out")(L.Flatten()(x)))


def _barrier_softmax_layer():
    inp = keras.Input((8,))
    x = L.Dense(16, name="producer")(inp)
    x = L.Softmax(name="barrier")(x)
    x = L.Dense(12, activation="relu", name="after")(x)
    return keras.Model(inp, L.Dense(2, name="out")(x))


def _barrier_softmax_activation():
    inp = keras.Input((8,))
    x = L.Dense(16, activation="softmax", name="producer")(inp)
    x = L.Dense(12, activation="relu", name="after")(x)
    return keras.Model(inp, L.Dense(2, name="out")(x))


def _barrier_custom_layer():
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="producer")(inp)
    x = ScaledDense(10, name="barrier")(x)
    x = L.Dense(12, activation="relu", name="after")(x)
    return keras.Model(inp, L.Dense(2, name="out")(x))


def _barrier_shared_layer():
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="producer")(inp)
    shared = L.Dense(16, activation="relu", name="barrier")
    x = shared(shared(x))
    x = L.Dense(12, activation="relu", name="after")(x)
    return keras.Model(inp, L.Dense(2, name="out")(x))


def _barrier_nested_model():
    inner = keras.Sequential([keras.Input((16,)), L.Dense(10, activation="relu", name="inner_dense")], name="barrier")
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="producer")(inp)
    x = inner(x)
    x = L.Dense(12, activation="relu", name="after")(x)
    return keras.Model(inp, L.Dense(2, name="out")(x))


def _barrier_add_into_output():
    inp = keras.Input((8,))
    h = L.Dense(12, activation="relu", name="after")(inp)
    a = L.Dense(4, name="producer")(h)
    b = L.Dense(4, name="barrier")(inp)
    return keras.Model(inp, L.Add(name="out")([a, b]))


BARRIERS = {
    "reshape": (_barrier_reshape, "barrier"),
    "permute": (_barrier_permute, "barrier"),
    "softmax_layer": (_barrier_softmax_layer, "barrier"),
    "softmax_activation": (_barrier_softmax_activation, "softmax"),
    "custom_layer": (_barrier_custom_layer, "barrier"),
    "shared_layer": (_barrier_shared_layer, "shared"),
    "nested_model": (_barrier_nested_model, "nested model"),
    "add_into_output": (_barrier_add_into_output, "model output"),
}


@pytest.mark.parametrize("case", sorted(BARRIERS))
def test_producers_feeding_a_barrier_keep_all_units_and_the_rest_is_pruned(case):
    build, reason = BARRIERS[case]
    keras.utils.set_random_seed(4)
    model = build()
    new, report = prune(model)
    assert units(new)["producer"] == units(model)["producer"]
    assert reason in report.skipped["producer"]
    assert units(new)["after"] == units(model)["after"] // 2
    assert_same_outputs(new, masked_reference(model, report), sample_inputs(model))


def test_multi_input_model_with_an_input_concatenated_to_pruned_channels():
    keras.utils.set_random_seed(5)
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = L.Dense(16, activation="relu", name="h")(a)
    x = L.Concatenate(name="cat")([b, h])  # h's channels start at offset 4, behind fixed input channels
    x = L.Dense(8, activation="relu", name="g")(x)
    model = keras.Model([a, b], L.Dense(2, name="out")(x))
    new, report = prune(model, criterion="apoz")
    assert units(new) == {"h": 8, "g": 4, "out": 2}
    assert new.get_layer("g").get_weights()[0].shape == (12, 4)
    assert_same_outputs(new, masked_reference(model, report), sample_inputs(model))


def test_subclassed_models_are_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(4)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ModelRejected, match="subclassed"):
        structured_prune(net, criterion="l1", keep_ratio=0.5)
