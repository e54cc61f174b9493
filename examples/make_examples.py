"""Regenerate the example files the README's walk-through uses (needs ../shared/data/mnist, run once).

    .venv/bin/python examples/make_examples.py

Writes examples/mnist_small.keras (a small compiled CNN trained on 2,000 real MNIST digits; a Rescaling layer
takes raw uint8 pixels) and examples/mnist_small.npz (x_train/y_train 2,000 digits, x_val/y_val 500, uint8).
"""

import gzip
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist"


def _idx(name, header):
    with gzip.open(MNIST / name, "rb") as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


def main():
    x = _idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)
    y = _idx("t10k-labels-idx1-ubyte.gz", 8).astype("int64")
    x_train, y_train, x_val, y_val = x[:2000], y[:2000], x[9500:], y[9500:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="dense"),
            keras.layers.Dense(10, activation="softmax", name="predictions"),
        ],
        name="mnist_small",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    print("held-out accuracy", model.evaluate(x_val, y_val, verbose=0)[1])
    # recompile so the saved file carries the loss and metrics but not 2x the weights of Adam state
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(HERE / "mnist_small.keras")
    np.savez_compressed(HERE / "mnist_small.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


if __name__ == "__main__":
    main()
