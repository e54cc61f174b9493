"""Model builders shared by both sides. Each takes the Keras module to build with (`keras` 3 or `tf_keras`), so
Secateurs and tfmot train exactly the same architecture with the same (copied) weights.

The zoo's image nets (`keras.applications`, `weights=None`) take 32x32 RGB; `digits(name, ...)` gives every model the
MNIST digits in the form its input expects (`INPUT_FORMS`).
"""

from __future__ import annotations

import functools

import numpy as np


def tutorial_cnn(K):
    """The tfmot pruning tutorial's MNIST CNN: Reshape -> Conv2D(12, 3) -> MaxPool -> Flatten -> Dense(10)."""
    L = K.layers
    return K.Sequential(
        [
            K.Input((28, 28)),
            L.Reshape((28, 28, 1), name="reshape"),
            L.Conv2D(12, 3, activation="relu", name="conv"),
            L.MaxPooling2D(2, name="pool"),
            L.Flatten(name="flatten"),
            L.Dense(10, activation="softmax", name="probs"),
        ],
        name="tutorial_cnn",
    )


def lenet_300_100(K):
    """LeNet-300-100 (LeCun et al. 1998; Han et al. 2015): 784-300-100-10, ReLU, 266,610 parameters."""
    L = K.layers
    return K.Sequential(
        [
            K.Input((28, 28)),
            L.Flatten(name="flatten"),
            L.Dense(300, activation="relu", name="fc1"),
            L.Dense(100, activation="relu", name="fc2"),
            L.Dense(10, activation="softmax", name="probs"),
        ],
        name="lenet_300_100",
    )


def resnet_bn(K, width: int = 32, name: str = "resnet_bn"):
    """A small residual conv net with BatchNorm: stem, two residual stages (Add), global pooling, Dense head."""
    L = K.layers

    def conv_bn(x, filters, name, stride=1, relu=True):
        x = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x) if relu else x

    def block(x, filters, name):
        y = conv_bn(x, filters, f"{name}a")
        y = conv_bn(y, filters, f"{name}b", relu=False)
        return L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([x, y]))

    inp = K.Input((28, 28), name="image")
    x = L.Reshape((28, 28, 1), name="reshape")(inp)
    x = conv_bn(x, width, "stem")
    x = block(x, width, "s1b1")
    x = block(x, width, "s1b2")
    x = conv_bn(x, 2 * width, "down", stride=2)
    x = block(x, 2 * width, "s2b1")
    x = block(x, 2 * width, "s2b2")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, activation="softmax", name="probs")(x)
    return K.Model(inp, out, name=name)


def resnet_bn16(K):
    """`resnet_bn` at width 16 (stages of 16 and 32 filters): the zoo's BN ResNet, a quarter of the MACs."""
    return resnet_bn(K, width=16, name="resnet_bn16")


def mobilenet_v2(K):
    """`keras.applications.MobileNetV2`, alpha 0.35, 32x32x3, 10 classes, random init: depthwise convolutions,
    ReLU6, inverted residuals (Add) and BatchNorm after every convolution."""
    return K.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)


def efficientnet_b0(K):
    """`keras.applications.EfficientNetB0`, 32x32x3, 10 classes, random init: swish, squeeze-excite (`Multiply`),
    depthwise convolutions, BatchNorm, dropout; its own Rescaling(1/255) + Normalization stem (inputs 0..255)."""
    return K.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10)


BUILDERS = {
    "tutorial_cnn": tutorial_cnn,
    "lenet_300_100": lenet_300_100,
    "resnet_bn": resnet_bn,
    "resnet_bn16": resnet_bn16,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
}

# the input each model expects: "gray28" (28x28 in [0, 1]) or "rgb32" (padded to 32x32, grey repeated to RGB), and
# the pixel scale (EfficientNet rescales 0..255 itself)
INPUT_FORMS = {"mobilenet_v2": ("rgb32", 1.0), "efficientnet_b0": ("rgb32", 255.0)}


@functools.cache
def digits(name: str, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first `n_train` training and the first `n_test` held-out digits of `bench.common.load_mnist`, shaped
    for model `name`: (x_train, y_train, x_test, y_test), float32 images and int64 labels."""
    from bench.common import load_mnist

    x, y, xt, yt = load_mnist()
    form, scale = INPUT_FORMS.get(name, ("gray28", 1.0))

    def shape(a: np.ndarray) -> np.ndarray:
        if form == "rgb32":
            a = np.repeat(np.pad(a, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1)
        return np.ascontiguousarray(a * np.float32(scale), dtype="float32")

    return shape(x[:n_train]), y[:n_train], shape(xt[:n_test]), yt[:n_test]


def build(name: str, K):
    try:
        return BUILDERS[name](K)
    except KeyError:
        raise ValueError(f"unknown benchmark model '{name}'; known: {', '.join(BUILDERS)}") from None
