"""Fixtures shared by the engine's tests."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.engine.pruning_models import compile_, small_mlp


@pytest.fixture(scope="module")
def bn_files(tmp_path_factory, mnist):
    """A small BN CNN on 2,000 digits trained with BN momentum 0.999: its moving statistics lag its weights."""
    x_train, y_train, x_test, y_test = mnist
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            L.Reshape((28, 28, 1)),
            L.Conv2D(8, 3, strides=2, use_bias=False, name="conv1"),
            L.BatchNormalization(momentum=0.999, name="bn1"),
            L.ReLU(),
            L.Conv2D(16, 3, strides=2, use_bias=False, name="conv2"),
            L.BatchNormalization(momentum=0.999, name="bn2"),
            L.ReLU(),
            L.Flatten(),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax", name="predictions"),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train[:2000], y_train[:2000], epochs=2, batch_size=64, verbose=0)
    d = tmp_path_factory.mktemp("bn")
    model.save(d / "bn.keras")
    np.savez(d / "digits.npz", x_train=x_train[:2000], y_train=y_train[:2000], x_val=x_test[:1000], y_val=y_test[:1000])
    return d / "bn.keras", d / "digits.npz"


@pytest.fixture(scope="module")
def trained_small(mnist):
    """Weights of the small MLP (tests/engine/pruning_models.py) after one epoch on the digits."""
    keras.utils.set_random_seed(0)
    model = small_mlp()
    compile_(model)
    model.fit(mnist[0], mnist[1], epochs=1, batch_size=128, verbose=0)
    return model.get_weights()
