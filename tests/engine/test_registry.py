"""The prunable-weight registry: what is prunable, how it is named, and how a LayerSelection filters it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from workers.engine.errors import SpecError
from workers.engine.registry import LAYER_REGISTRY, output_layer_paths, prunable_weights, roles_for
from workers.engine.selection import LayerOverride, LayerSelection

L = keras.layers

# (layer, input shape without batch, expected (role, shape, input_axis, unit_axis) per prunable weight)
LAYER_CASES = {
    "Dense": (lambda: L.Dense(4), (6,), [("kernel", (6, 4), 0, -1)]),
    "EinsumDense": (
        lambda: L.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c"),
        (6,),
        [("kernel", (6, 4), -2, -1)],
    ),
    "Conv1D": (lambda: L.Conv1D(4, 3), (8, 5), [("kernel", (3, 5, 4), -2, -1)]),
    "Conv2D": (lambda: L.Conv2D(4, 3), (8, 8, 5), [("kernel", (3, 3, 5, 4), -2, -1)]),
    "Conv3D": (lambda: L.Conv3D(4, 3), (5, 5, 5, 2), [("kernel", (3, 3, 3, 2, 4), -2, -1)]),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(4, 3), (8, 5), [("kernel", (3, 4, 5), -1, -2)]),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(4, 3), (8, 8, 5), [("kernel", (3, 3, 4, 5), -1, -2)]),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(4, 3), (4, 4, 4, 2), [("kernel", (3, 3, 3, 4, 2), -1, -2)]),
    "DepthwiseConv1D": (
        lambda: L.DepthwiseConv1D(3, depth_multiplier=2),
        (8, 5),
        [("depthwise_kernel", (3, 5, 2), -2, -2)],
    ),
    "DepthwiseConv2D": (
        lambda: L.DepthwiseConv2D(3, depth_multiplier=2),
        (8, 8, 5),
        [("depthwise_kernel", (3, 3, 5, 2), -2, -2)],
    ),
    "SeparableConv1D": (
        lambda: L.SeparableConv1D(4, 3, depth_multiplier=2),
        (8, 5),
        [("depthwise_kernel", (3, 5, 2), -2, -2), ("pointwise_kernel", (1, 10, 4), -2, -1)],
    ),
    "SeparableConv2D": (
        lambda: L.SeparableConv2D(4, 3),
        (8, 8, 5),
        [("depthwise_kernel", (3, 3, 5, 1), -2, -2), ("pointwise_kernel", (1, 1, 5, 4), -2, -1)],
    ),
    "Embedding": (lambda: L.Embedding(12, 4), None, [("embeddings", (12, 4), 0, -1)]),
}


def _single_layer_model(name: str) -> tuple[keras.Model, list]:
    make, shape, expected = LAYER_CASES[name]
    layer = make()
    if shape is None:
        model = keras.Sequential([keras.Input((3,), dtype="int32"), layer, L.Flatten(), L.Dense(2, name="head")])
    else:
        model = keras.Sequential([keras.Input(shape), layer, L.Flatten(), L.Dense(2, name="head")])
    return model, expected


def test_registry_covers_exactly_the_layer_classes_of_the_issue():
    names = {cls.__name__ for cls in LAYER_REGISTRY}
    assert names == set(LAYER_CASES)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_every_registered_layer_exposes_its_kernels_with_their_axes_and_never_a_bias(name):
    model, expected = _single_layer_model(name)
    found = [w for w in prunable_weights(model) if w.path != "head"]
    got = [(w.role, w.shape, w.input_axis, w.unit_axis) for w in found]
    assert got == expected
    layer = model.layers[0]
    for w in found:
        assert w.layer is layer and w.layer_type == name and w.path == layer.name
        assert any(w.variable is v for v in layer.trainable_weights)
        assert "bias" not in w.variable.path


def test_biases_batchnorm_and_layernorm_are_never_prunable():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, name="fc"),
            L.BatchNormalization(name="bn"),
            L.LayerNormalization(name="ln"),
            L.Dense(2, name="out"),
        ]
    )
    weights = prunable_weights(model)
    assert [(w.path, w.role) for w in weights] == [("fc", "kernel"), ("out", "kernel")]
    assert all(w.variable.name == "kernel" for w in weights)


def test_subclasses_of_registered_layers_are_prunable_through_the_class_mro():
    class MyDense(L.Dense):
        pass

    model = keras.Sequential([keras.Input((6,)), MyDense(3, name="mine")])
    (w,) = prunable_weights(model)
    assert (w.path, w.layer_type, w.role) == ("mine", "MyDense", "kernel")
    assert roles_for(L.ReLU()) == ()


def test_einsum_dense_axes_follow_the_equation():
    layer = L.EinsumDense("abc,cd->abd", output_shape=(None, 7), bias_axes="d")
    model = keras.Sequential([keras.Input((5, 6)), layer])
    (w,) = prunable_weights(model)
    assert w.shape == (6, 7) and (w.input_axis, w.unit_axis) == (-2, -1)
    heads = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3))
    model = keras.Sequential([keras.Input((5, 6)), heads])
    (w,) = prunable_weights(model)
    assert w.shape == (6, 2, 3) and (w.input_axis, w.unit_axis) == (-3, -1)


def _nested_model() -> keras.Model:
    inner = keras.Sequential([keras.Input((8,)), L.Dense(6, name="a"), L.Dense(5, name="b")], name="encoder")
    inp = keras.Input((8,), name="x")
    h = inner(inp)
    h = L.Dense(4, name="c")(h)
    out = L.Activation("softmax", name="soft")(L.Dense(3, name="logits")(h))
    return keras.Model(inp, out, name="outer")


def test_nested_models_are_walked_with_outer_slash_inner_paths():
    model = _nested_model()
    assert [w.path for w in prunable_weights(model)] == ["encoder/a", "encoder/b", "c", "logits"]


def test_a_shared_layer_appears_once():
    shared = L.Dense(4, name="shared")
    inp = keras.Input((4,))
    out = L.Dense(2, name="out")(shared(shared(inp)))
    model = keras.Model(inp, out)
    assert [w.path for w in prunable_weights(model)] == ["shared", "out"]


def test_output_layer_is_found_through_parameter_free_layers_and_nested_models():
    model = _nested_model()
    assert output_layer_paths(model) == {"logits"}
    wrapper_in = keras.Input((8,))
    wrapper = keras.Model(wrapper_in, model(wrapper_in), name="wrapper")
    assert output_layer_paths(wrapper) == {"outer/logits"}
    seq = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(3, name="h"),
            L.Dense(2, name="o"),
            L.BatchNormalization(name="bn"),
            L.Dropout(0.1),
            L.Softmax(),
        ]
    )
    assert output_layer_paths(seq) == {"o"}


@pytest.mark.parametrize(
    "selection, expected",
    [
        (LayerSelection(include=["c"]), ["c"]),
        (LayerSelection(include=["Dense"]), ["encoder/a", "encoder/b", "c", "logits"]),
        (LayerSelection(include=["encoder"]), ["encoder/a", "encoder/b"]),
        (LayerSelection(include=["encoder/b", "logits"]), ["encoder/b", "logits"]),
        (LayerSelection(exclude=["logits", "a"]), ["encoder/b", "c"]),
        (LayerSelection(exclude=["encoder"]), ["c", "logits"]),
        (LayerSelection(exclude=["Dense"]), []),
        (LayerSelection(overrides={"c": LayerOverride(skip=True)}), ["encoder/a", "encoder/b", "logits"]),
        (LayerSelection(overrides={"encoder/a": LayerOverride(skip=True)}), ["encoder/b", "c", "logits"]),
        (LayerSelection(exclude=["Conv2D"]), ["encoder/a", "encoder/b", "c", "logits"]),
    ],
)
def test_selection_includes_excludes_and_skips_by_name_path_class_or_enclosing_model(selection, expected):
    assert [w.path for w in prunable_weights(_nested_model(), selection)] == expected


def test_explicit_flag_marks_layers_named_in_include_or_given_a_target():
    selection = LayerSelection(include=["Dense"], overrides={"c": LayerOverride(target_sparsity=0.3)})
    flags = {w.path: w.explicit for w in prunable_weights(_nested_model(), selection)}
    assert flags == {"encoder/a": False, "encoder/b": False, "c": True, "logits": False}
    flags = {w.path: w.explicit for w in prunable_weights(_nested_model(), LayerSelection(include=["logits", "c"]))}
    assert flags == {"c": True, "logits": True}


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_unknown_include_or_exclude_names_are_a_spec_error_listing_the_available_names(key):
    selection = LayerSelection(**{key: ["c", "no_such_layer", "Dnse"]})
    with pytest.raises(SpecError) as err:
        prunable_weights(_nested_model(), selection)
    msg = err.value.message
    assert "no_such_layer" in msg and "Dnse" in msg and f"layers.{key}" in msg
    assert "'c'" not in msg.split("available")[0]  # only the unknown names are blamed
    assert "encoder/a" in msg and "logits" in msg  # the available names are listed
    assert err.value.field == f"layers.{key}"


def test_unknown_override_name_is_a_spec_error_naming_it():
    selection = LayerSelection(overrides={"ghost": LayerOverride(target_sparsity=0.5)})
    with pytest.raises(SpecError, match="layers.overrides names \\['ghost'\\].*available layers: .*encoder/a"):
        prunable_weights(_nested_model(), selection)


def test_include_that_selects_nothing_prunable_is_a_spec_error():
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="fc"), L.BatchNormalization(name="bn")])
    with pytest.raises(SpecError, match="selects no prunable layer.*prunable layers: fc"):
        prunable_weights(model, LayerSelection(include=["bn"]))


def test_model_without_prunable_layers_yields_an_empty_list():
    model = keras.Sequential([keras.Input((6,)), L.BatchNormalization(), L.ReLU()])
    assert prunable_weights(model) == []


def test_prunable_weight_is_frozen_and_reports_size():
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, name="fc")])
    (w,) = prunable_weights(model)
    assert w.size == 24 and w.name == "fc"
    with pytest.raises(AttributeError):
        w.path = "other"
    np.testing.assert_array_equal(w.variable.numpy(), model.layers[0].kernel.numpy())
