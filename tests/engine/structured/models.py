"""Small model builders for the structured pruning tests: every dependency pattern the rebuild must handle.

Each builder returns a freshly built, untrained model with deterministic weights (the autouse fixture resets the
seed) and BatchNormalization moving statistics set to non-trivial values, so that a wrong slice shows.
"""

from __future__ import annotations

import keras
import numpy as np

L = keras.layers


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give every BatchNormalization non-trivial gamma/beta/moving statistics (as after training)."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, L.BatchNormalization):
            new = []
            for v, w in zip(layer.weights, layer.get_weights()):
                if v.name == "moving_variance":
                    new.append(rng.uniform(0.5, 2.0, w.shape).astype(w.dtype))
                elif v.name == "gamma":
                    new.append(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
                else:
                    new.append(rng.normal(0.0, 0.3, w.shape).astype(w.dtype))
            layer.set_weights(new)
    return model


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        yield layer


def mlp_sequential() -> keras.Model:
    """Dense -> Dropout -> Dense -> BN -> Dense(out)."""
    return keras.Sequential(
        [
            keras.Input((20,)),
            L.Dense(64, activation="relu", name="fc1"),
            L.Dropout(0.2, name="drop"),
            L.Dense(32, name="fc2"),
            L.BatchNormalization(name="bn"),
            L.Activation("relu", name="act"),
            L.Dense(10, activation="softmax", name="out"),
        ],
        name="mlp",
    )


def cnn_sequential() -> keras.Model:
    """Conv -> BN -> ReLU -> MaxPool -> Conv -> ZeroPadding -> AvgPool -> Flatten -> Dense -> Dense(out)."""
    return randomize_batchnorm(
        keras.Sequential(
            [
                keras.Input((12, 12, 3)),
                L.Conv2D(16, 3, padding="same", name="conv1"),
                L.BatchNormalization(name="bn1"),
                L.ReLU(name="relu1"),
                L.MaxPooling2D(2, name="pool1"),
                L.Conv2D(24, 3, activation="relu", name="conv2"),
                L.ZeroPadding2D(1, name="pad"),
                L.SpatialDropout2D(0.1, name="sdrop"),
                L.AveragePooling2D(2, name="pool2"),
                L.Flatten(name="flat"),
                L.Dense(32, activation="relu", name="fc"),
                L.Dense(5, name="out"),
            ],
            name="cnn",
        )
    )


def residual_functional() -> keras.Model:
    """A residual chain: stem and two blocks add into the same channels, so stem, conv_b1 and conv_b2 are one
    group; conv_a1/conv_a2 are single-layer groups; the head reads the channels through GAP."""
    inp = keras.Input((10, 10, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    for i in (1, 2):
        y = L.Conv2D(12, 3, padding="same", activation="relu", name=f"conv_a{i}")(x)
        y = L.Conv2D(16, 3, padding="same", name=f"conv_b{i}")(y)
        y = L.BatchNormalization(name=f"bn_b{i}")(y)
        x = L.Add(name=f"add{i}")([x, y])
        x = L.ReLU(name=f"relu{i}")(x)
    x = L.UpSampling2D(2, name="up")(x)
    x = L.Conv2D(24, 3, strides=2, activation="relu", name="head_conv")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(4, name="out")(x)
    return randomize_batchnorm(keras.Model(inp, out, name="residual"))


def concat_depthwise_functional() -> keras.Model:
    """Two branches concatenated (offsets), a depthwise conv with depth_multiplier 2 and BN following the
    concatenated channels, a separable conv, a GlobalMaxPooling head."""
    inp = keras.Input((9, 9, 4))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="branch_a")(inp)
    b = L.Conv2D(12, 1, activation="relu", name="branch_b")(inp)
    x = L.Concatenate(name="concat")([a, b])
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.Activation("relu", name="dw_relu")(x)
    x = L.SeparableConv2D(16, 3, depth_multiplier=2, activation="relu", name="sep")(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = L.GlobalMaxPooling2D(name="gmp")(x)
    out = L.Dense(3, name="out")(x)
    return randomize_batchnorm(keras.Model(inp, out, name="concat_dw"))


def conv1d_functional() -> keras.Model:
    """Conv1D -> BN -> ReLU; a Conv1D branch added back; Cropping; pooling; DepthwiseConv1D (multiplier 2) and
    SeparableConv1D; GlobalAveragePooling1D -> Dense."""
    inp = keras.Input((24, 5))
    x = L.Conv1D(16, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="c1_bn")(x)
    x = L.ReLU(name="c1_relu")(x)
    y = L.Conv1D(16, 5, padding="same", activation="relu", name="c2")(x)
    x = L.Add(name="add")([x, y])
    x = L.Cropping1D((1, 1), name="crop")(x)
    x = L.MaxPooling1D(2, name="pool")(x)
    x = L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", activation="relu", name="dw1d")(x)
    x = L.SeparableConv1D(8, 3, padding="same", activation="relu", name="sep1d")(x)
    x = L.Conv1D(8, 3, activation="relu", name="c3")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    out = L.Dense(2, name="out")(x)
    return randomize_batchnorm(keras.Model(inp, out, name="conv1d"))


def conv3d_sequential() -> keras.Model:
    """Conv3D -> BN -> ReLU -> MaxPooling3D -> Conv3D -> GlobalAveragePooling3D -> Dense."""
    return randomize_batchnorm(
        keras.Sequential(
            [
                keras.Input((4, 6, 6, 2)),
                L.Conv3D(8, 3, padding="same", name="c3d1"),
                L.BatchNormalization(name="bn"),
                L.ReLU(name="relu"),
                L.MaxPooling3D(2, name="pool"),
                L.Conv3D(12, (1, 3, 3), activation="relu", name="c3d2"),
                L.GlobalAveragePooling3D(name="gap"),
                L.Dense(3, name="out"),
            ],
            name="conv3d",
        )
    )


def merge_functional(merge: str) -> keras.Model:
    """Two Dense branches merged by `merge` (Add, Subtract, Multiply, Average, Maximum, Minimum)."""
    inp = keras.Input((12,))
    a = L.Dense(16, activation="tanh", name="a")(inp)
    b = L.Dense(16, activation="sigmoid", name="b")(inp)
    x = getattr(L, merge)(name="merge")([a, b])
    x = L.Dense(8, activation="relu", name="c")(x)
    out = L.Dense(3, name="out")(x)
    return keras.Model(inp, out, name=f"merge_{merge.lower()}")


def conv_net_600k() -> keras.Model:
    """A ~600k-parameter conv net (28x28x1 input) for the latency sanity check."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(64, 3, padding="same", name="c1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(name="r1"),
            L.Conv2D(64, 3, padding="same", activation="relu", name="c2"),
            L.MaxPooling2D(2, name="p1"),
            L.Conv2D(128, 3, padding="same", activation="relu", name="c3"),
            L.Conv2D(128, 3, padding="same", activation="relu", name="c4"),
            L.MaxPooling2D(2, name="p2"),
            L.Conv2D(256, 3, padding="same", activation="relu", name="c5"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(128, activation="relu", name="fc"),
            L.Dense(10, name="out"),
        ],
        name="net600k",
    )


BUILDERS = {
    "mlp_sequential": mlp_sequential,
    "cnn_sequential": cnn_sequential,
    "residual_functional": residual_functional,
    "concat_depthwise_functional": concat_depthwise_functional,
    "conv1d_functional": conv1d_functional,
    "conv3d_sequential": conv3d_sequential,
}
