"""What the export writers and readers of both file kinds (export.py: Keras; export_tflite.py: TFLite) share: the
held-out samples every written file is run on (`HeldOut`), the records of what a file holds (`_Measured`) and how
it was written (`_Written`), and how many held-out samples a model's evaluation uses (`_sample_count`, bounded by a
MAC budget)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from workers.engine.counting import macs

__all__ = ["HeldOut"]


@dataclass(frozen=True)
class HeldOut:
    """Held-out samples every artifact is evaluated on, by running the written file.

    Loss and metrics are the in-memory model's compiled ones. At most `max_samples` samples are used, fewer when
    the model is big: ``samples * MACs per sample <= mac_budget`` (at least `min_samples`), so evaluating the
    files of a big model costs a bounded few seconds; the evaluation entry says how many were used.
    """

    x: Any  # an array, or a list of arrays (one per model input)
    y: np.ndarray
    batch_size: int = 256
    max_samples: int = 10_000
    min_samples: int = 256
    mac_budget: float = 2e11


@dataclass(frozen=True)
class _Measured:
    params: int
    nonzero: int
    sparsity: float
    preserved: bool
    measured: str
    note: str = ""


@dataclass(frozen=True)
class _Written:
    encoding: str = ""
    note: str = ""


def _length(x) -> int:
    return len(x[0]) if isinstance(x, (list, tuple)) else len(x)


def _head(x, n: int):
    return [a[:n] for a in x] if isinstance(x, (list, tuple)) else x[:n]


def _sample_count(model: keras.Model, held_out: HeldOut) -> int:
    n = min(_length(held_out.x), held_out.max_samples)
    per_sample = max(1, macs(model)["macs"])
    return int(min(n, max(held_out.min_samples, held_out.mac_budget // per_sample)))
