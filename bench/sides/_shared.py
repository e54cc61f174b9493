"""Helpers both sides use: the data (loaded once per worker), kernel sparsity, seeds and a stopwatch."""

from __future__ import annotations

import functools
import gzip
import io
import os
import random
import time

import numpy as np

from bench.common import load_mnist


@functools.cache
def data():
    return load_mnist()


def seed_everything(seed: int) -> None:
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def held_out_accuracy(model) -> float:
    """Top-1 accuracy on the 2,000 held-out digits (argmax of a batched predict; no compiled metric involved)."""
    _, _, x_test, y_test = data()
    probs = model.predict(x_test, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(probs, axis=-1) == y_test))


# The budget parts (6, 6c, 6e-6g) split the 2,000 held-out digits in two: a budget job gets the even positions as its
# x_val and makes every choice on them (its trials, pruned or fine-tuned, retries); the bench judges both tools on the
# odd positions, which no job ever sees. Scored on the digits it chose on, the budget's model looks better than it is.
VAL, TEST = slice(0, None, 2), slice(1, None, 2)


def val_split() -> tuple[np.ndarray, np.ndarray]:
    """The 1,000 held-out digits a budget job gets as x_val / y_val."""
    _, _, x, y = data()
    return x[VAL], y[VAL]


def halves_accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> dict:
    """Top-1 accuracy on the two halves of held-out samples (`val`: the job's, `test`: never shown to a job) and on
    all of them (`all`), from one predict; `test_right`: which test-half samples it got right (`pack_right`), so that
    two models can be compared digit by digit on the same samples (`bench.budget_tfmot.margin_interval`)."""
    right = np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1) == y
    return {
        "val": float(right[VAL].mean()),
        "test": float(right[TEST].mean()),
        "all": float(right.mean()),
        "test_right": pack_right(right[TEST]),
    }


def pack_right(right: np.ndarray) -> dict:
    """A boolean vector as JSON: {"n": its length, "bits": its packed bits in hex} (1,000 samples: 250 characters)."""
    return {"n": int(right.size), "bits": np.packbits(right.astype(bool)).tobytes().hex()}


def unpack_right(packed: dict) -> np.ndarray:
    """`pack_right`'s vector back."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed["bits"]), dtype=np.uint8))
    return bits[: packed["n"]].astype(bool)


def split_accuracy(model) -> dict:
    """`halves_accuracy` on the 2,000 held-out digits (`all` = held_out_accuracy)."""
    _, _, x, y = data()
    return halves_accuracy(model, x, y)


def kernel_sparsity(model) -> dict:
    """Zeros among the kernels of Conv/Dense layers (the weights both tools prune), overall and per layer."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        w = np.asarray(kernel.numpy() if hasattr(kernel, "numpy") else kernel)
        z = int(np.sum(w == 0))
        per_layer[layer.name] = {"size": int(w.size), "sparsity": z / w.size}
        zeros, total = zeros + z, total + w.size
    return {"overall": zeros / total if total else 0.0, "layers": per_layer}


def weights_gzip_bytes(model) -> int:
    """gzip (level 9) of the model's weights saved as one .npz: a size that does not depend on either Keras's file
    format (both sides compute it the same way)."""
    buf = io.BytesIO()
    np.savez(buf, *model.get_weights())
    return len(gzip.compress(buf.getvalue(), compresslevel=9))


def nonzero_weights(model) -> int:
    """Non-zero values among all the model's weights (kernels, biases, anything else it holds)."""
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


class Stopwatch:
    """Wall-clock and process CPU time (all threads) at named marks since construction."""

    def __init__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.marks: dict[str, tuple[float, float]] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter() - self.t0, time.process_time() - self.c0)

    def between(self, a: str | None, b: str, cpu: bool = False) -> float:
        i = 1 if cpu else 0
        return self.marks[b][i] - (self.marks[a][i] if a else 0.0)

    def report(self, *, fit: tuple[str, str] = ("compiled", "fitted"), end: str = "saved") -> dict:
        return {
            "fit_s": self.between(*fit),
            "fit_cpu_s": self.between(*fit, cpu=True),
            "job_s": self.between(None, end),
            "job_cpu_s": self.between(None, end, cpu=True),
            "setup_s": self.between(None, fit[0]),
        }
