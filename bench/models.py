"""Model builders shared by both sides. Each takes the Keras module to build with (`keras` 3 or `tf_keras`), so
Secateurs and tfmot train exactly the same architecture with the same (copied) weights."""

from __future__ import annotations


def tutorial_cnn(K):
    """The tfmot pruning tutorial's MNIST CNN: Reshape -> Conv2D(12, 3) -> MaxPool -> Flatten -> Dense(10)."""
    L = K.layers
    return K.Sequential([
        K.Input((28, 28)),
        L.Reshape((28, 28, 1), name="reshape"),
        L.Conv2D(12, 3, activation="relu", name="conv"),
        L.MaxPooling2D(2, name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(10, activation="softmax", name="probs"),
    ], name="tutorial_cnn")


def lenet_300_100(K):
    """LeNet-300-100 (LeCun et al. 1998; Han et al. 2015): 784-300-100-10, ReLU, 266,610 parameters."""
    L = K.layers
    return K.Sequential([
        K.Input((28, 28)),
        L.Flatten(name="flatten"),
        L.Dense(300, activation="relu", name="fc1"),
        L.Dense(100, activation="relu", name="fc2"),
        L.Dense(10, activation="softmax", name="probs"),
    ], name="lenet_300_100")


def resnet_bn(K, width: int = 32):
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
    return K.Model(inp, out, name="resnet_bn")


BUILDERS = {"tutorial_cnn": tutorial_cnn, "lenet_300_100": lenet_300_100, "resnet_bn": resnet_bn}


def build(name: str, K):
    try:
        return BUILDERS[name](K)
    except KeyError:
        raise ValueError(f"unknown benchmark model '{name}'; known: {', '.join(BUILDERS)}") from None
