"""Shared fixtures: the real MNIST digits, deterministic seeds, quiet TensorFlow."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


def load_mnist():
    """The real MNIST test set: first 8,000 to train, last 2,000 held out. Pixels scaled to [0, 1]."""
    images = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    labels = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images.exists():
        pytest.skip(f"MNIST not found at {MNIST_DIR}")
    x = _read_idx(images, 16).reshape(10_000, 28, 28).astype("float32") / 255.0
    y = _read_idx(labels, 8).astype("int64")
    return x[:8000], y[:8000], x[8000:], y[8000:]


@pytest.fixture(scope="session")
def mnist():
    return load_mnist()


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield
