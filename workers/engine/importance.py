"""Importance criteria for structured pruning: one score per output unit, higher = more important.

Each criterion is a pure numpy function in a registry keyed by name:

* weight criteria ("l1", "l2") take a producer's kernel, whose last axis is the output units, and score each
  unit by the norm of its incoming weights (`structured` then multiplies by |gamma| / sigma of a BatchNorm that
  follows the producer, which divides the kernel's scale out);
* activation criteria ("mean_activation", "apoz") take activations whose last axis is the units (any leading
  axes: samples, positions) and score each unit by a mean over every leading axis. Because they are means,
  scores computed batch by batch combine exactly as an average weighted by the rows of each batch
  (`rows(activations)`), which is how `structured` streams calibration data without keeping it in memory.

`normalize` makes scores of different layers comparable (mean 1), used to aggregate the members of a coupled
group and to rank units globally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from workers.engine.errors import SpecError

ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Criterion:
    name: str
    needs: Literal["weights", "activations"]
    fn: ScoreFn
    description: str

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return self.fn(array)


def _units_last(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] == 0:
        raise ValueError(f"expected an array whose last axis holds the units, got shape {a.shape}")
    return a.reshape(-1, a.shape[-1])


def l1_norm(kernel: np.ndarray) -> np.ndarray:
    """Sum of |w| over each unit's incoming weights (every axis but the last)."""
    return np.abs(_units_last(kernel)).sum(axis=0)


def l2_norm(kernel: np.ndarray) -> np.ndarray:
    """Euclidean norm of each unit's incoming weights (every axis but the last)."""
    return np.sqrt(np.square(_units_last(kernel)).sum(axis=0))


def mean_activation(activations: np.ndarray) -> np.ndarray:
    """Mean |a| of each unit over samples and positions."""
    return np.abs(_units_last(activations)).mean(axis=0)


def apoz_score(activations: np.ndarray) -> np.ndarray:
    """1 - APoZ (Hu et al., 2016): the fraction of samples/positions where the unit is non-zero."""
    return 1.0 - (_units_last(activations) == 0).mean(axis=0)


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            "l1",
            "weights",
            l1_norm,
            "L1 norm of the unit's incoming weights (times a following BatchNorm's |gamma|/sigma)",
        ),
        Criterion(
            "l2",
            "weights",
            l2_norm,
            "L2 norm of the unit's incoming weights (times a following BatchNorm's |gamma|/sigma)",
        ),
        Criterion("mean_activation", "activations", mean_activation, "mean |activation| on calibration data"),
        Criterion("apoz", "activations", apoz_score, "1 - average percentage of zeros after the activation"),
    )
}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise SpecError(
            f"unknown structured pruning criterion '{name}'; allowed: {', '.join(sorted(CRITERIA))}",
            field="criterion",
        ) from None


def rows(activations: np.ndarray) -> int:
    """How many values per unit an activation batch holds (its weight when averaging batch scores)."""
    shape = np.shape(activations)
    return int(np.prod(shape[:-1])) if len(shape) > 1 else 1


def normalize(scores: np.ndarray) -> np.ndarray:
    """Scale scores to mean 1 so that layers of different scale compare; all-zero scores stay zero."""
    s = np.asarray(scores, dtype=np.float64)
    mean = float(s.mean()) if s.size else 0.0
    if not np.isfinite(mean) or mean <= 0.0:
        return np.zeros_like(s)
    return s / mean
