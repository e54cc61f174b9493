"""Gradual structured pruning (`structured.gradual`, a screening switch off by default): units leave during real
training, held at zero in every consumer, and the final surgery removes exactly those units (its outputs equal the
masked model's)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from tests.engine.structured import models as M
from tests.engine.structured.helpers import assert_same_outputs, outputs, sample_inputs, units
from workers.engine.pipeline import compress
from workers.engine.structured import gradual, masked_reference
from workers.engine.structured.graph import keep_indices
from workers.spec import JobSpec

L = keras.layers


def _squeeze_excite_residual() -> keras.Model:
    """Stem -> BN, then an MBConv-like block (expand -> BN -> depthwise -> squeeze-excite -> project -> BN) added
    back to the stem, then GAP and a Dense head: BatchNorm, a residual Add and squeeze-excite's Reshape."""
    inp = keras.Input((8, 8, 3))
    s = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    s = L.BatchNormalization(name="stem_bn")(s)
    s = L.Activation("swish", name="stem_act")(s)
    x = L.Conv2D(16, 1, use_bias=False, name="expand")(s)
    x = L.BatchNormalization(name="expand_bn")(x)
    x = L.Activation("swish", name="expand_act")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    se = L.GlobalAveragePooling2D(name="squeeze")(x)
    se = L.Reshape((1, 1, 16), name="se_reshape")(se)
    se = L.Conv2D(4, 1, activation="swish", name="se_reduce")(se)
    se = L.Conv2D(16, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="excite")([x, se])
    x = L.Conv2D(8, 1, use_bias=False, name="project")(x)
    x = L.BatchNormalization(name="project_bn")(x)
    x = L.Add(name="add")([s, x])
    x = L.Conv2D(12, 1, activation="relu", name="head")(x)
    out = L.Dense(3, activation="softmax", name="out")(L.GlobalAveragePooling2D(name="gap")(x))
    return M.randomize_batchnorm(keras.Model(inp, out, name="se_residual"))


def _train_gradually(model, keep_ratio: float, scope: str = "global", epochs: int = 2):
    """Fit on random labels with the ramp callback; returns the GradualStructured and the weights before."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, *model.inputs[0].shape[1:])).astype("float32")
    y = rng.integers(0, model.outputs[0].shape[-1], size=96)
    before = [w.copy() for w in model.get_weights()]
    g = gradual.GradualStructured(model, criterion="l1", keep_ratio=keep_ratio, scope=scope, x_calib=x[:32])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    steps_per_epoch = math.ceil(len(x) / 8)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[g.callback(steps_per_epoch, epochs)])
    return g, before


def _check(model, g, before):
    ratios = [u["keep_ratio"] for u in g.updates]
    removed = [u["removed"] for u in g.updates]
    assert ratios[0] == 1.0 and removed[0] == 0 and ratios[-1] == g.keep_ratio
    assert ratios == sorted(ratios, reverse=True) and removed == sorted(removed) and removed[-1] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "training changed nothing"
    # every consumer reads the removed channels through rows held at exactly zero after the optimizer's updates
    gone = np.asarray(sorted(g.removed))
    for name, handler in g.g.handlers.items():
        if handler.consumer:
            rows = np.flatnonzero(np.isin(g.g.root[g.g.in_maps[name][0]], gone))
            assert not handler.kernel(g.g.node_of[name].layer)[..., rows, :].any(), name
    masked = keras.Model.from_config(model.get_config())
    masked.set_weights(model.get_weights())
    new, report = g.finish()
    # the cut removes exactly the held units: the final ranking's count per group (its global count, floors aside)
    chosen = sum(len(grp.classes) for grp in g.chosen)
    assert len(g.removed) == sum(len(grp.classes) - grp.keep for grp in g.chosen)
    assert chosen - len(g.removed) >= math.ceil(g.keep_ratio * chosen - 1e-9)
    for grp in report.groups:
        for name, kept in grp.kept_indices.items():
            assert kept == keep_indices(g.g, g.g.producers[name].ids, g.removed).tolist()
            assert units(new)[name] == len(kept)
    assert new.count_params() < model.count_params()
    # exactness: the rebuilt model predicts what the trained masked model predicts (and its masked reference)
    x = sample_inputs(model, n=24, seed=3)
    assert_same_outputs(new, masked, x)
    assert_same_outputs(new, masked_reference(model, report), x)
    return new, report


@pytest.mark.parametrize("renormalize", [True, False])
def test_gradual_residual_model_cuts_exactly_the_held_units(monkeypatch, renormalize):
    monkeypatch.setattr(gradual, "RENORMALIZE", renormalize)
    keras.utils.set_random_seed(1)
    model = M.residual_functional()
    g, before = _train_gradually(model, keep_ratio=0.5)
    new, report = _check(model, g, before)
    stem = next(grp for grp in report.groups if "stem" in grp.layers)
    assert stem.kept_indices["stem"] == stem.kept_indices["conv_b1"] == stem.kept_indices["conv_b2"]
    assert report.compensated == []


def test_gradual_with_squeeze_excite_traced_cuts_exactly_the_held_units(monkeypatch):
    keras.utils.set_random_seed(2)
    model = _squeeze_excite_residual()
    g, before = _train_gradually(model, keep_ratio=0.6)
    new, report = _check(model, g, before)
    se = next(grp for grp in report.groups if "expand" in grp.layers)
    assert se.layers == ["expand", "se_expand"] and se.kept_indices["expand"] == se.kept_indices["se_expand"]
    assert tuple(new.get_layer("se_reshape").target_shape) == (1, 1, units(new)["expand"])


def _job(tmp_path, model, removal):
    """One structured step (keep 0.5, 2 epochs) on random images through `compress`; the step's record and x."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, *model.input_shape[1:])).astype("float32")
    y = (x[:, :4, :, 0].mean(axis=(1, 2)) > 0).astype("int64") + (x[:, 4:, :, 1].mean(axis=(1, 2)) > 0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=x[:128], y_train=y[:128], x_val=x[128:], y_val=y[128:])
    spec = {
        "steps": [{"kind": "structured", "keep_ratio": 0.5, "epochs": 2, "removal": removal}],
        "training": {"batch_size": 16},
        "evaluation": {"latency": False},
    }
    manifest = compress(tmp_path / "m.keras", tmp_path / "d.npz", JobSpec.model_validate(spec), tmp_path / "o")
    return manifest["steps"][0], x


@pytest.mark.parametrize("removal", [None, "gradual", "one_shot"])
def test_a_squeeze_excite_model_is_pruned_gradually_unless_asked_for_one_cut(tmp_path, removal):
    keras.utils.set_random_seed(3)
    record, x = _job(tmp_path, _squeeze_excite_residual(), removal)
    gradually = removal != "one_shot"  # the default where units pass through a squeeze-excite gate
    assert record["removal"] == ("gradual" if gradually else "one_shot")
    assert ("gradual" in record) == gradually
    if gradually:
        assert [u["keep_ratio"] for u in record["gradual"]][-1] == 0.5
        assert record["report"]["compensated"] == []
    out = keras.saving.load_model(tmp_path / "o" / "model.keras")
    kept = {n: len(k) for grp in record["report"]["groups"] for n, k in grp["kept_indices"].items()}
    assert {n: units(out)[n] for n in kept} == kept and kept["expand"] < 16
    assert np.isfinite(outputs(out, x[128:])).all()


@pytest.mark.parametrize("removal", [None, "gradual"])
def test_a_model_without_a_gate_is_cut_once_by_default(tmp_path, removal):
    keras.utils.set_random_seed(4)
    record, _ = _job(tmp_path, M.residual_functional(), removal)
    assert record["removal"] == (removal or "one_shot")
    assert ("gradual" in record) == (removal == "gradual")
    assert any(grp["units_after"] < grp["units_before"] for grp in record["report"]["groups"])
