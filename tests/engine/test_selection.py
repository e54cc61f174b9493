"""The one layer selector: keys, order of the reasons, override lookup, name checks and the nested-path rule."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import pytest

from workers.engine.errors import SpecError
from workers.engine.registry import walk_layers
from workers.engine.selection import LayerOverride, LayerSelection, Selector, override_for

L = keras.layers


def _nested_model():
    inner = keras.Sequential([keras.Input((4, 6)), L.Dense(5, name="a"), L.Conv1D(2, 1, name="k")], name="encoder")
    inp = keras.Input((4, 3), name="x")
    x = L.Dense(6, name="pre")(inp)
    return keras.Model(inp, L.Dense(2, name="out")(inner(x)), name="outer")


@pytest.fixture(scope="module")
def layers():
    return list(walk_layers(_nested_model()))


def _selected(selector: Selector, layers) -> list[str]:
    return [path for path, prefix, layer in layers if selector.reason(path, prefix, layer) is None]


def test_walked_layers_carry_paths_and_enclosing_names(layers):
    assert [(path, prefix) for path, prefix, _ in layers] == [
        ("x", ()),
        ("pre", ()),
        ("encoder", ()),
        ("encoder/a", ("encoder",)),
        ("encoder/k", ("encoder",)),
        ("out", ()),
    ]


@pytest.mark.parametrize(
    "include, expected",
    [
        (None, ["x", "pre", "encoder", "encoder/a", "encoder/k", "out"]),
        (["encoder/a"], ["encoder/a"]),  # a path
        (["a", "out"], ["encoder/a", "out"]),  # layer names, nested or not
        (["Conv1D"], ["encoder/k"]),  # a class name
        (["encoder"], ["encoder", "encoder/a", "encoder/k"]),  # an enclosing model: everything inside it
        ([], []),
    ],
)
def test_include_matches_path_name_class_or_enclosing_model(layers, include, expected):
    assert _selected(Selector.of(LayerSelection(include=include)), layers) == expected


def test_reasons_are_checked_include_then_exclude_then_skip(layers):
    selector = Selector.of(
        LayerSelection(include=["Dense"], exclude=["encoder"], overrides={"out": LayerOverride(skip=True)})
    )
    reasons = {path: selector.reason(path, prefix, layer) for path, prefix, layer in layers}
    assert reasons == {
        "x": "not in layers.include",
        "pre": None,
        "encoder": "not in layers.include",
        "encoder/a": "in layers.exclude",
        "encoder/k": "not in layers.include",
        "out": "layers.overrides skip=true",
    }


def test_overrides_match_the_path_first_then_the_name():
    by_path, by_name = SimpleNamespace(skip=True), SimpleNamespace(skip=False)
    overrides = {"encoder/a": by_path, "a": by_name}
    assert override_for(overrides, "encoder/a") is by_path
    assert override_for(overrides, "decoder/a") is by_name  # the name defaults to the path's last component
    assert override_for(overrides, "x/y", "a") is by_name
    assert override_for(overrides, "b") is None
    assert Selector(overrides=overrides).override("decoder/a") is by_name


def test_explicit_overrides_replace_the_selections():
    selection = LayerSelection(include=["pre"], overrides={"pre": LayerOverride(skip=True)})
    assert Selector.of(selection).override("pre").skip is True
    replaced = Selector.of(selection, overrides={"out": {"keep_ratio": 0.5}})
    assert replaced.include == frozenset({"pre"}) and replaced.overrides == {"out": LayerOverride(keep_ratio=0.5)}
    assert Selector.of(None) == Selector()


def test_a_selection_holds_tuples_and_layer_overrides_whatever_it_was_given():
    selection = LayerSelection(
        include=["a", "b"],
        exclude=iter(["c"]),
        overrides={
            "a": {"target_sparsity": 0.3},
            "b": SimpleNamespace(target_sparsity=None, threshold=None, keep_ratio=0.5, skip=False),
        },
    )
    assert selection.include == ("a", "b") and selection.exclude == ("c",)
    assert selection.overrides == {"a": LayerOverride(target_sparsity=0.3), "b": LayerOverride(keep_ratio=0.5)}
    assert LayerSelection() == LayerSelection(include=None, exclude=[], overrides={})
    assert LayerSelection().include is None


@pytest.mark.parametrize(
    "value, field",
    [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"threshold": -1.0}, "threshold"),
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"skip": "yes"}, "skip"),
        ({"keep_ratio": 0.5, "sparsity": 0.2}, "sparsity"),
    ],
)
def test_layer_overrides_out_of_range_or_unknown_are_refused_naming_the_field(value, field):
    with pytest.raises(SpecError) as err:
        LayerOverride.of(value)
    assert err.value.field == field and field in err.value.message


def test_named_means_named_in_include_by_path_or_name_only():
    selector = Selector.of(LayerSelection(include=["Dense", "encoder/a", "out"]))
    assert [selector.named(p, n) for p, n in [("encoder/a", "a"), ("out", "out"), ("pre", "pre")]] == [
        True,
        True,
        False,
    ]
    assert Selector().named("out", "out") is False


@pytest.mark.parametrize(
    "selection, field, blamed",
    [
        (LayerSelection(include=["pre", "ghost"]), "layers.include", "ghost"),
        (LayerSelection(exclude=["encoder/ghost"]), "layers.exclude", "encoder/ghost"),
        (LayerSelection(exclude=["deserialize"]), "layers.exclude", "deserialize"),  # in keras.layers, not a class
        (
            LayerSelection(overrides={"zz": LayerOverride(skip=True), "ghost": LayerOverride(skip=True)}),
            "layers.overrides.ghost",
            "ghost",
        ),
    ],
)
def test_entries_naming_nothing_are_refused_listing_what_is_available(layers, selection, field, blamed):
    with pytest.raises(SpecError) as err:
        Selector.of(selection).check("outer", layers)
    assert err.value.field == field and f"'{blamed}'" in err.value.message
    assert "available layers: " in err.value.message and "encoder/a" in err.value.message


def test_any_keras_layer_class_and_nested_names_pass_the_check(layers):
    Selector.of(
        LayerSelection(
            include=["Embedding", "encoder/k", "a"],
            exclude=["LSTM"],
            overrides={"encoder/a": LayerOverride(skip=True), "k": LayerOverride(skip=True)},
        )
    ).check("outer", layers)


def _refuse(selection, layers):
    Selector.of(selection).refuse_nested("outer", layers, why="WHY", uses=lambda o: o.keep_ratio is not None)


@pytest.mark.parametrize(
    "selection",
    [
        LayerSelection(include=["pre", "Dense", "Conv1D"]),  # top-level names and classes
        LayerSelection(exclude=["encoder/a", "k", "encoder"]),
        LayerSelection(
            overrides={
                "encoder/a": LayerOverride(skip=True),
                "k": LayerOverride(target_sparsity=0.5),
                "out": LayerOverride(keep_ratio=0.5),
                "encoder": LayerOverride(keep_ratio=0.5),
            }
        ),
    ],
)
def test_refuse_nested_accepts_what_a_top_level_step_can_honour(layers, selection):
    _refuse(selection, layers)


@pytest.mark.parametrize(
    "selection, field, message",
    [
        (LayerSelection(include=["encoder/a"]), "layers.include", "'encoder/a', a layer inside 'encoder': WHY"),
        (LayerSelection(include=["pre", "k"]), "layers.include", "'k', a layer inside 'encoder': WHY"),
        (LayerSelection(include=["encoder"]), "layers.include", "'encoder', a nested model or wrapper"),
        (
            LayerSelection(overrides={"encoder/a": LayerOverride(keep_ratio=0.5)}),
            "layers.overrides.encoder/a",
            "'encoder/a', a layer inside 'encoder': WHY",
        ),
        (
            LayerSelection(overrides={"a": LayerOverride(keep_ratio=0.5)}),
            "layers.overrides.a",
            "'a', a layer inside 'encoder': WHY",
        ),
    ],
)
def test_refuse_nested_refuses_entries_asking_to_act_below_the_top_level(layers, selection, field, message):
    with pytest.raises(SpecError) as err:
        _refuse(selection, layers)
    assert err.value.field == field and message in err.value.message
