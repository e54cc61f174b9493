"""Small real job inputs shared by the worker and service tests: an MNIST model (.keras), an .npz and specs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUICK_SPEC = {  # one short epoch of gradual pruning, no latency timing
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 1}],
    "training": {"batch_size": 64},
    "evaluation": {"latency": False},
}
LONG_SPEC = {  # many small batches: long enough to cancel or interrupt while it trains
    "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 200}],
    "training": {"batch_size": 8},
    "evaluation": {"latency": False},
}


@dataclass(frozen=True)
class JobFiles:
    model: Path
    data: Path
    samples: int

    def spec_text(self, spec: dict = QUICK_SPEC) -> str:
        return json.dumps(spec)


def make_job_files(directory: Path, mnist, samples: int = 512) -> JobFiles:
    import keras

    x, y = mnist[0][:samples], mnist[1][:samples]
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="predictions"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "mnist.keras")
    np.savez(directory / "mnist.npz", x_train=x, y_train=y)
    return JobFiles(model=directory / "mnist.keras", data=directory / "mnist.npz", samples=samples)
