"""Parameter and MAC counts (workers.engine.counting) checked against hand counts on small models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from workers.engine import counting

L = keras.layers


def _seq(input_shape, *layers, name="m"):
    return keras.Sequential([keras.Input(input_shape), *layers], name=name)


def _zero_fraction(variable, fraction: float, seed: int = 0) -> int:
    """Set exactly round(fraction * size) entries of `variable` to zero; returns how many are left non-zero."""
    w = np.asarray(variable.numpy()).copy()
    w[w == 0] = 1e-3  # start from a fully dense kernel
    idx = np.random.default_rng(seed).permutation(w.size)[: int(round(fraction * w.size))]
    w.reshape(-1)[idx] = 0.0
    variable.assign(w)
    return int(np.count_nonzero(w))


# id -> (model builder, layer name, MACs counted by hand per sample)
MAC_CASES = {
    "dense-784-300": (lambda: _seq((784,), L.Dense(300, name="k")), 784 * 300),
    "dense-per-timestep": (lambda: _seq((7, 4), L.Dense(5, name="k")), 7 * 4 * 5),
    "conv2d-3x3-1-to-12": (lambda: _seq((28, 28, 1), L.Conv2D(12, 3, name="k")), 26 * 26 * 9 * 12),
    "conv2d-strided-same": (
        lambda: _seq((16, 16, 3), L.Conv2D(8, 3, strides=2, padding="same", name="k")),
        8 * 8 * 9 * 3 * 8,
    ),
    "conv2d-channels-first": (
        lambda: _seq((3, 10, 10), L.Conv2D(8, 3, data_format="channels_first", name="k")),
        8 * 8 * 9 * 3 * 8,
    ),
    "conv1d": (lambda: _seq((50, 3), L.Conv1D(8, 5, name="k")), 46 * 5 * 3 * 8),
    "conv3d": (lambda: _seq((8, 8, 8, 2), L.Conv3D(4, 3, name="k")), 6 * 6 * 6 * 27 * 2 * 4),
    "conv2d-transpose": (
        lambda: _seq((7, 7, 4), L.Conv2DTranspose(6, 3, strides=2, name="k")),
        7 * 7 * 9 * 6 * 4,
    ),  # kernel applied at every *input* position
    "conv1d-transpose": (lambda: _seq((10, 3), L.Conv1DTranspose(2, 4, strides=2, name="k")), 10 * 4 * 2 * 3),
    "depthwise2d": (lambda: _seq((10, 10, 3), L.DepthwiseConv2D(3, depth_multiplier=2, name="k")), 8 * 8 * 9 * 3 * 2),
    "depthwise1d": (lambda: _seq((20, 4), L.DepthwiseConv1D(3, name="k")), 18 * 3 * 4),
    "separable2d": (
        lambda: _seq((10, 10, 3), L.SeparableConv2D(16, 3, name="k")),
        8 * 8 * 9 * 3 + 8 * 8 * 3 * 16,
    ),  # depthwise + pointwise
    "separable1d": (
        lambda: _seq((12, 4), L.SeparableConv1D(6, 3, depth_multiplier=2, name="k")),
        10 * 3 * 4 * 2 + 10 * 8 * 6,
    ),
}


@pytest.mark.parametrize("case", sorted(MAC_CASES))
def test_macs_and_flops_match_hand_counts(case):
    build, expected = MAC_CASES[case]
    result = counting.macs(build())
    assert result["layers"]["k"]["macs"] == expected
    assert result["layers"]["k"]["flops"] == 2 * expected
    assert result["macs"] == expected and result["flops"] == 2 * expected
    assert result["effective_macs"] == expected  # a fresh kernel has no zeros
    assert result["unknown"] == []


def test_effective_macs_skip_zero_weights():
    model = _seq((28, 28, 1), L.Conv2D(12, 3, name="conv"), L.Flatten(), L.Dense(300, name="fc"))
    conv_nonzero = _zero_fraction(model.get_layer("conv").kernel, 0.5)
    fc_nonzero = _zero_fraction(model.get_layer("fc").kernel, 0.9)
    result = counting.macs(model)
    assert result["layers"]["conv"]["effective_macs"] == 26 * 26 * conv_nonzero
    assert result["layers"]["fc"]["effective_macs"] == fc_nonzero  # one position
    assert result["effective_macs"] == 26 * 26 * conv_nonzero + fc_nonzero
    assert result["macs"] == 26 * 26 * 9 * 12 + 26 * 26 * 12 * 300
    assert result["effective_flops"] == 2 * result["effective_macs"]


def test_shared_layers_and_nested_models_count_every_call():
    inner = _seq((8,), L.Dense(4, name="inner_dense"), name="inner")
    shared = L.Dense(8, name="shared")
    inp = keras.Input((8,))
    h1 = shared(inp)
    h2 = shared(h1)
    model = keras.Model(inp, L.Add()([inner(h1), inner(h2)]))
    result = counting.macs(model)
    assert result["layers"]["shared"] == {
        "class": "Dense",
        "calls": 2,
        "macs": 2 * 64,
        "effective_macs": 2 * 64,
        "flops": 4 * 64,
        "effective_flops": 4 * 64,
    }
    assert result["layers"]["inner/inner_dense"]["calls"] == 2
    assert result["layers"]["inner/inner_dense"]["macs"] == 2 * 32
    assert result["macs"] == 2 * 64 + 2 * 32


def test_layers_with_unknown_spatial_size_are_listed_not_guessed():
    model = _seq((None, None, 3), L.Conv2D(4, 3, name="conv"), L.GlobalAveragePooling2D(), L.Dense(2, name="fc"))
    result = counting.macs(model)
    assert result["unknown"] == ["conv"]
    assert result["macs"] == 4 * 2 and set(result["layers"]) == {"fc"}


def test_param_stats_counts_every_variable_per_layer_path():
    inner = _seq((16,), L.Dense(8, name="inner_fc"), L.BatchNormalization(name="bn"), name="inner")
    inp = keras.Input((10,))
    model = keras.Model(inp, L.Dense(3, name="out")(inner(L.Dense(16, name="fc")(inp))))
    fc_nonzero = _zero_fraction(model.get_layer("fc").kernel, 0.75)
    stats = counting.param_stats(model)
    assert stats["total"] == model.count_params() == (10 * 16 + 16) + (16 * 8 + 8) + 4 * 8 + (8 * 3 + 3)
    assert stats["non_trainable"] == 2 * 8  # BatchNormalization moving mean and variance
    assert stats["trainable"] == stats["total"] - 16
    assert set(stats["layers"]) == {"fc", "inner/inner_fc", "inner/bn", "out"}
    assert stats["layers"]["fc"]["params"] == 176
    fc_zeros = 160 - fc_nonzero
    assert stats["layers"]["fc"]["nonzero"] == 176 - fc_zeros - 16  # fresh biases are zeros too
    # prunable kernels: fc (160), inner_fc (128), out (24); the only kernel zeros are fc's
    assert stats["prunable"] == {"total": 160 + 128 + 24, "nonzero": 160 + 128 + 24 - fc_zeros}
    assert stats["sparsity"] == pytest.approx(fc_zeros / (160 + 128 + 24))
    assert stats["nonzero"] + stats["zeros"] == stats["total"]
    assert stats["overall_sparsity"] == pytest.approx(stats["zeros"] / stats["total"])


def test_shared_variables_are_counted_once():
    shared = L.Dense(4, name="shared")
    inp = keras.Input((4,))
    model = keras.Model(inp, shared(shared(inp)))
    stats = counting.param_stats(model)
    assert stats["total"] == 4 * 4 + 4 == model.count_params()
    assert stats["prunable"]["total"] == 16
