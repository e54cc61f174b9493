"""The pruner's global scope: one ranking over layers, the output and tiny layers spared and made up elsewhere,
floors that never disconnect a layer, ERK allocation in normalized models, exact targets."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.engine.pruning_models import (
    L,
    compile_,
    conv_zoo,
    depthwise_residual,
    fresh_small,
    lenet_300_100,
    prune_step,
    scale_imbalanced,
)
from tests.helpers import layer_sparsity
from workers.engine.errors import SpecError
from workers.engine.masks import target_count
from workers.engine.pruning import Pruner
from workers.engine.registry import prunable_weights
from workers.engine.schedules import ScheduleSettings
from workers.engine.selection import LayerOverride, LayerSelection


def test_global_scope_spares_the_output_layer_and_makes_it_up_elsewhere():
    model = lenet_300_100()
    pruner = Pruner(model, prunable_weights(model), {})
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.9, scope="global"))
    per_layer = pruner.layer_sparsity()
    assert pruner.spared == ["out/kernel"] and per_layer["out"] == 0.0
    assert pruner.allocation["out/kernel"] == 0.0
    zeros = sum(int((w.variable.numpy() == 0).sum()) for w in pruner.weights)
    # the target holds over all the pruner's weights: the spared output layer is made up by the others
    assert zeros == target_count(0.9, sum(w.size for w in pruner.weights))
    for w in pruner.weights:
        assert pruner.allocation[f"{w.path}/{w.role}"] == pytest.approx(per_layer[w.path])
    assert per_layer["fc1"] != per_layer["fc2"]  # one ranking, not per-layer targets
    assert pruner.sparsity() == pytest.approx(zeros / sum(w.size for w in pruner.weights))
    assert layer_sparsity(pruner.weights) == pytest.approx(per_layer)
    pruner.detach()


def test_global_scope_spares_tiny_layers_unless_named_and_honours_overrides():
    model = conv_zoo()
    weights = prunable_weights(model)
    pruner = Pruner(model, weights, {})
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.5, scope="global"))
    # 'out' produces the output; of the 75,640 other weights the kernels of dw (144), sep's depthwise (144) and
    # conv (216) are the smallest and hold 504 <= 1% together (adding sep's pointwise, 256, would exceed 1%)
    assert pruner.spared == ["conv/kernel", "dw/depthwise_kernel", "sep/depthwise_kernel", "out/kernel"]
    spared = {"conv", "dw", "out"}
    for w in pruner.weights:
        if w.path in spared or w.role == "depthwise_kernel":
            assert not np.any(w.variable.numpy() == 0), w.path
    assert sum(int((w.variable.numpy() == 0).sum()) for w in pruner.weights) == target_count(
        0.5, sum(w.size for w in pruner.weights)
    )
    pruner.detach()

    model = conv_zoo()
    selection = LayerSelection(
        include=["conv", "out", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense"],
        overrides={"up": LayerOverride(target_sparsity=0.2)},
    )
    weights = prunable_weights(model, selection)
    pruner = Pruner(model, weights, selection.overrides)
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.5, scope="global"))
    # conv and out are named: pruned; dw and sep are matched by class only: still spared when tiny
    assert pruner.spared == ["dw/depthwise_kernel", "sep/depthwise_kernel"]
    (up,) = [w for w in pruner.weights if w.path == "up"]
    assert int((up.variable.numpy() == 0).sum()) == target_count(0.2, up.size)
    pool = [w for w in pruner.weights if w.path in ("conv", "out", "fc") or w.role == "pointwise_kernel"]
    spared_too = [w for w in pruner.weights if w.role == "depthwise_kernel"]
    assert sum(int((w.variable.numpy() == 0).sum()) for w in pool) == target_count(
        0.5, sum(w.size for w in pool + spared_too)
    )
    assert all(np.any(w.variable.numpy() == 0) for w in pool)
    pruner.detach()


def test_global_scope_with_only_an_output_layer_prunes_it_rather_than_nothing():
    model = keras.Sequential([keras.Input((30,)), L.Dense(10, name="only")])
    pruner = Pruner(model, prunable_weights(model), {})
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.5, scope="global"))
    assert pruner.spared == [] and pruner.sparsity() == 0.5
    pruner.detach()


# --------------------------------------------------------------------------- global allocation (ERK, floors, targets)


def test_global_scope_never_disconnects_a_layer_of_ascale_imbalanced_depthwise_residual_model():
    model = scale_imbalanced(depthwise_residual())
    weights = prunable_weights(model)
    from workers.engine.masks import global_magnitude_masks  # the raw ranking this replaces

    raw = global_magnitude_masks([w.variable.numpy() for w in weights], 0.8)
    assert {"dw0", "dw1", "head"} <= {w.path for w, k in zip(weights, raw) if not k.any()}  # the old failure
    pruner = Pruner(model, weights, {})
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.8, scope="global"))
    assert pruner.spared == []  # nothing is both tiny and within 1% here
    per_layer = pruner.layer_sparsity()
    for w in pruner.weights:
        kept = int(np.count_nonzero(w.variable.numpy()))
        assert kept >= int(np.ceil(0.25 * 0.2 * w.size)), (w.path, per_layer[w.path])  # the density floor
        if w.role == "depthwise_kernel":  # and every channel keeps a weight
            assert np.count_nonzero(w.variable.numpy().reshape(9, -1), axis=0).min() >= 1
    assert max(per_layer.values()) < 0.98
    total = sum(w.size for w in pruner.weights)
    assert pruner.sparsity() == target_count(0.8, total) / total
    assert pruner.allocation == pytest.approx({f"{w.path}/{w.role}": per_layer[w.path] for w in pruner.weights})
    pruner.detach()


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8, 0.9, 0.95])
def test_global_target_is_met_over_all_weights_with_spared_layers_made_up(target):
    model = conv_zoo()
    pruner = Pruner(model, prunable_weights(model), {})
    pruner.prune(prune_step(method="magnitude", target_sparsity=target, scope="global"))
    assert pruner.spared  # small layers and the output layer are spared ...
    assert all(pruner.layer_sparsity()[s.split("/")[0]] == 0.0 for s in pruner.spared if s != "sep/depthwise_kernel")
    total = sum(w.size for w in pruner.weights)
    assert abs(pruner.sparsity() - target) <= 0.002  # ... and made up by the others
    assert pruner.sparsity() == target_count(target, total) / total
    pruner.detach()


def test_global_block_target_is_met_over_all_weights_with_spared_layers_made_up():
    model = conv_zoo()
    pruner = Pruner(model, prunable_weights(model), {})
    pruner.prune(prune_step(method="block", block_shape=[1, 4], target_sparsity=0.8, scope="global"))
    assert pruner.spared
    assert abs(pruner.sparsity() - 0.8) <= 0.002
    pruner.detach()


def test_gradual_global_pruning_ends_on_target_with_the_output_layer_spared(mnist, trained_small):
    model = fresh_small(trained_small)
    pruner = Pruner(model, prunable_weights(model), {})
    step = prune_step(
        method="magnitude",
        target_sparsity=0.9,
        scope="global",
        epochs=1,
        schedule=ScheduleSettings("polynomial", end=0.75, frequency=4),
    )
    cb = pruner.callback(step, 8)
    compile_(model)
    model.fit(mnist[0][:512], mnist[1][:512], epochs=1, batch_size=64, verbose=0, callbacks=[cb])
    assert pruner.spared == ["out/kernel"] and pruner.layer_sparsity()["out"] == 0.0
    total = sum(w.size for w in pruner.weights)
    assert cb.sparsity == pruner.sparsity() == target_count(0.9, total) / total
    assert [s for _, s in cb.updates] == sorted(s for _, s in cb.updates)
    pruner.detach()


def test_floors_refuse_an_unreachable_target_unless_the_layers_are_named_explicitly():
    def model_():  # 576 depthwise weights in 64 filters (each keeps one: at most 512 zeros) + a 640-weight head
        return keras.Sequential(
            [
                keras.Input((2, 2, 64)),
                L.DepthwiseConv2D(3, padding="same", name="dw"),
                L.GlobalAveragePooling2D(),
                L.Dense(10, name="out"),
            ]
        )

    model = model_()
    selection = LayerSelection(include=["DepthwiseConv2D", "Dense"])  # matched by class: not named
    pruner = Pruner(model, prunable_weights(model, selection), {})
    with pytest.raises(SpecError, match=r"0.95 cannot be reached .* at most 0\.9408") as err:
        pruner.prune(prune_step(method="magnitude", target_sparsity=0.95, scope="global"))
    assert err.value.field == "target_sparsity"
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.9, scope="global"))
    assert pruner.sparsity() == target_count(0.9, 1216) / 1216
    pruner.detach()

    model = model_()
    selection = LayerSelection(include=["dw", "out"])  # named: no floor
    pruner = Pruner(model, prunable_weights(model, selection), {})
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.95, scope="global"))
    assert pruner.sparsity() == target_count(0.95, 1216) / 1216
    pruner.detach()


def test_global_scope_ranks_raw_magnitudes_without_normalization_and_allocates_by_erk_with_it():
    from workers.engine.masks import global_magnitude_masks, lamp_allocation

    model = lenet_300_100()  # no normalization: a layer's scale is part of its function, raw |w| compares
    pruner = Pruner(model, prunable_weights(model), {})
    assert pruner.score == "magnitude"
    values = [w.variable.numpy() for w in pruner.weights[:2]]
    zeros = target_count(0.9, 266_200)  # fc1 and fc2 make up for the spared output layer
    raw = global_magnitude_masks(values, zeros / sum(v.size for v in values))
    lamp = lamp_allocation(values, zeros)
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.9, scope="global"))
    per_layer = pruner.layer_sparsity()
    for w, keep, _n_lamp in zip(pruner.weights, raw, lamp):
        assert per_layer[w.path] == pytest.approx(1 - keep.mean(), abs=0.01)  # raw ranking (fc1 sampled)
    assert per_layer["fc2"] < lamp[1] / 30_000 - 0.1  # LAMP would prune fc2 much harder
    pruner.detach()

    model = depthwise_residual()
    assert Pruner(model, prunable_weights(model), {}).score == "erk"


def test_erk_allocation_keeps_depthwise_kernels_denser_than_1x1_projections_and_honours_held_zeros():
    model = scale_imbalanced(depthwise_residual())  # ERK reads shapes only: the scale changes nothing
    pruner = Pruner(model, prunable_weights(model), {})
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.7, scope="global"))
    per_layer = pruner.layer_sparsity()
    total = sum(w.size for w in pruner.weights)
    assert pruner.sparsity() == target_count(0.7, total) / total
    # density ~ sum(shape) / prod(shape): 3x3x16x1 -> 29/144, 1x1x16x16 -> 34/256, 1x1x16x64 -> 82/1024
    assert per_layer["dw0"] < per_layer["pw0"] < per_layer["head"]
    assert per_layer["dw0"] == per_layer["dw1"] and per_layer["pw0"] == per_layer["pw1"]
    unclipped = [p for p in ("pw0", "head") if 0.0 < per_layer[p] < 1.0]
    dens = {p: 1.0 - per_layer[p] for p in unclipped}
    assert dens["pw0"] / dens["head"] == pytest.approx((34 / 256) / (82 / 1024), rel=0.02)
    pruner.detach()

    # zeros held from an earlier step stay, and count towards the target (the others get fewer)
    model = depthwise_residual()
    head = model.get_layer("head").kernel
    head.assign(np.where(np.arange(head.numpy().size).reshape(head.shape) < 900, 0.0, head.numpy()))
    pruner = Pruner(model, prunable_weights(model), {})
    pruner.hold_zeros()
    pruner.prune(prune_step(method="magnitude", target_sparsity=0.5, scope="global"))
    assert pruner.layer_sparsity()["head"] >= 900 / 1024
    total = sum(w.size for w in pruner.weights)
    assert pruner.sparsity() == target_count(0.5, total) / total
    pruner.detach()


def test_global_pruning_is_deterministic():
    def run():
        keras.utils.set_random_seed(3)
        model = scale_imbalanced(depthwise_residual())
        pruner = Pruner(model, prunable_weights(model), {})
        pruner.prune(prune_step(method="magnitude", target_sparsity=0.7, scope="global"))
        out = pruner.masks()
        pruner.detach()
        return out

    first, second = run(), run()
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
