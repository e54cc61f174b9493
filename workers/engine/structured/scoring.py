"""Scores: how important each unit of a group is, from the weights or from calibration data.

Each member scores its units with the criterion (`importance.py`); scores are normalized per member (mean 1) and
summed per class. Weight criteria read the member's kernel (SeparableConv: its pointwise kernel), times
|gamma| / sqrt(moving_variance + epsilon) of a BatchNormalization that follows it (through pointwise layers): the
BatchNorm divides out the kernel's scale, so the kernel norm alone does not say what a unit passes on (after Liu et
al. 2017, "network slimming", and Torch-Pruning's BN-aware group importance). Data criteria read the member's output
followed through pointwise layers (BatchNorm, activations, dropout), so APoZ counts the zeros after the ReLU. The
calibration samples go through a probe model (a compiled predict, batch by batch, scores averaged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from workers.engine import importance
from workers.engine.errors import DataError
from workers.engine.structured.graph import Graph
from workers.engine.structured.groups import Group

CALIBRATION_BATCH = 128  # samples per compiled predict batch when ranking units on data ...
CALIBRATION_BYTES = 256 * 2**20  # ... fewer when the probed activations of one batch would exceed this


def member_scores(g: Graph, groups: list[Group], criterion: importance.Criterion, x_calib) -> dict[str, np.ndarray]:
    """Per member of `groups`: one score per unit (weight criteria scaled by a following BatchNorm)."""
    names = [n for grp in groups for n in grp.members]
    if criterion.needs == "weights":
        out = {}
        for n in names:
            p = g.producers[n]
            scores = criterion(p.handler.kernel(p.layer))
            scale = g.normalization_scale(p)
            out[n] = scores if scale is None else scores * scale
        return out
    tensors = [g.activation_tensor(g.producers[n]) for n in names]
    return dict(zip(names, activation_scores(g.model, tensors, criterion, x_calib)))


def activation_scores(model, tensors: list, criterion: importance.Criterion, x_calib) -> list[np.ndarray]:
    """The criterion on each of `tensors` over the calibration samples, streamed batch by batch (sample-weighted
    mean of the per-batch scores). DataError (field x_calib) when the samples are missing or do not fit."""
    if x_calib is None:
        raise DataError(
            f"criterion '{criterion.name}' ranks units on data: x_calib (calibration samples) is required",
            field="x_calib",
        )
    leaves = keras.tree.flatten(x_calib)
    n = len(leaves[0]) if leaves else 0
    if n == 0:
        raise DataError(f"x_calib is empty: criterion '{criterion.name}' needs at least one sample", field="x_calib")
    for leaf in leaves:
        if len(leaf) != n:
            raise DataError(f"x_calib arrays have different sample counts ({len(leaf)} vs {n})", field="x_calib")
        if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.all(np.isfinite(leaf)):
            raise DataError("x_calib contains NaN or infinite values", field="x_calib")
    unique: dict[int, Any] = {id(t): t for t in tensors}
    probe = keras.Model(model.inputs, list(unique.values()))
    sums = [0.0] * len(unique)
    counts = [0] * len(unique)
    size = _calibration_batch(unique.values())
    for start in range(0, n, size):
        batch = keras.tree.map_structure(lambda a, start=start: np.asarray(a[start : start + size]), x_calib)
        try:
            outs = probe.predict_on_batch(batch)
        except (ValueError, TypeError) as exc:
            shapes = [tuple(t.shape) for t in keras.tree.flatten(model.inputs)]
            raise DataError(f"x_calib does not fit the model inputs {shapes}: {exc}", field="x_calib") from None
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, a in enumerate(outs):
            a = np.asarray(a)
            rows = importance.rows(a)
            sums[i] = sums[i] + criterion(a) * rows
            counts[i] += rows
    per_tensor = {key: s / c for key, s, c in zip(unique, sums, counts)}
    return [per_tensor[id(t)] for t in tensors]


def _calibration_batch(tensors: Iterable) -> int:
    """Samples per calibration batch: at most CALIBRATION_BATCH, and the probed activations within the budget."""
    per_sample = sum(4 * math.prod(d or 1 for d in t.shape[1:]) for t in tensors)
    return max(1, min(CALIBRATION_BATCH, CALIBRATION_BYTES // max(1, per_sample)))


def group_scores(g: Graph, grp: Group, scores: dict[str, np.ndarray]) -> np.ndarray:
    """Sum over members of per-member normalized scores, per class (channels united by merges)."""
    pos = {int(r): i for i, r in enumerate(grp.classes)}
    total = np.zeros(len(grp.classes))
    for name in grp.members:
        s = importance.normalize(scores[name])
        for r, v in zip(g.root[g.producers[name].ids], s):
            i = pos.get(int(r))
            if i is not None:
                total[i] += v
    return total
