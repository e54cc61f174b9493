"""Models and settings shared by the pruner's tests (test_pruning.py, test_pruning_global.py)."""

from __future__ import annotations

import keras
import numpy as np

from workers.engine.masks import MaskParams
from workers.engine.pruning import PruneSettings
from workers.engine.schedules import ONE_SHOT, ScheduleSettings

L = keras.layers


def prune_step(
    method: str = "magnitude",
    *,
    scope: str = "global",
    target_sparsity=None,
    threshold=None,
    n=None,
    m=None,
    block_shape=None,
    schedule: ScheduleSettings = ONE_SHOT,
    epochs: int = 0,
) -> PruneSettings:
    """A prune step's settings, with the job spec's field names and defaults (schedule: one-shot unless given)."""
    params = MaskParams(
        sparsity=target_sparsity,
        threshold=threshold,
        n=n,
        m=m,
        block_shape=tuple(block_shape) if block_shape is not None else None,
    )
    return PruneSettings(method=method, params=params, scope=scope, schedule=schedule, epochs=epochs)


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "sgd": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-3),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.01),
}


def small_mlp() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            L.Flatten(name="flat"),
            L.Dense(64, activation="relu", name="fc1"),
            L.Dense(10, activation="softmax", name="out"),
        ],
        name="small",
    )


def lenet_300_100() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            L.Flatten(name="flat"),
            L.Dense(300, activation="relu", name="fc1"),
            L.Dense(100, activation="relu", name="fc2"),
            L.Dense(10, activation="softmax", name="out"),
        ],
        name="lenet_300_100",
    )


def conv_zoo() -> keras.Model:
    inp = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep")(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", name="up")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(16, activation="relu", name="fc")(x)
    return keras.Model(inp, L.Dense(5, name="out")(x), name="zoo")


def token_model() -> keras.Model:
    return keras.Sequential(
        [keras.Input((6,), dtype="int32"), L.Embedding(50, 8, name="emb"), L.Flatten(), L.Dense(4, name="out")],
        name="tokens",
    )


def compile_(model, optimizer="adam"):
    opt = OPTIMIZERS[optimizer]() if isinstance(optimizer, str) else optimizer
    model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])


class ZeroWatch(keras.callbacks.Callback):
    """Records, after every epoch, the largest |w| at positions that must stay zero."""

    def __init__(self, pruned: dict[str, np.ndarray], weights):
        super().__init__()
        self.pruned, self.weights, self.max_abs = pruned, weights, []

    def on_epoch_end(self, epoch, logs=None):
        self.max_abs.append(
            max(float(np.abs(w.variable.numpy()[self.pruned[w.path]]).max(initial=0.0)) for w in self.weights)
        )


def fresh_small(weights) -> keras.Model:
    model = small_mlp()
    model.set_weights(weights)
    return model


def depthwise_residual() -> keras.Model:
    """A tiny MobileNet-like block stack: depthwise + BatchNorm + 1x1 projections + residual Adds."""
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.ReLU()(L.BatchNormalization()(x))
    for i in range(2):
        y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        y = L.ReLU()(L.BatchNormalization()(y))
        y = L.Conv2D(16, 1, use_bias=False, name=f"pw{i}")(y)
        x = L.Add()([x, L.BatchNormalization()(y)])
    x = L.Conv2D(64, 1, use_bias=False, name="head")(x)
    x = L.GlobalAveragePooling2D()(L.ReLU()(L.BatchNormalization()(x)))
    return keras.Model(inp, L.Dense(10, name="out")(x), name="dw_residual")


def scale_imbalanced(model) -> keras.Model:
    """BatchNorm makes a layer's scale meaningless; give the depthwise kernels and the head a tiny one."""
    for name, scale in (("dw0", 1e-3), ("dw1", 1e-3), ("head", 1e-2), ("pw0", 30.0)):
        kernel = model.get_layer(name).weights[0]
        kernel.assign(kernel.numpy() * scale)
    return model
