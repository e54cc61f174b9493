"""Sparsity-inducing penalties on prunable weights, attached to variables so layer configs stay clean.

Public API (used by `pipeline`)::

    GroupLasso(weight, axis=-1)                     keras Regularizer: weight * sum over units of ||w_unit||_2
    WeightPenalty(l1=0, l2=0, group_lasso=0, axis=-1, inner=None)   the sum attached to one variable
    handle = attach_regularization(weights: list[PrunableWeight], l1=0.0, l2=0.0, group_lasso=0.0)
    handle.detach()                                 restore every variable's previous regularizer (idempotent)

The penalty added to the training loss, per prunable weight w, is

    l1 * sum|w| + l2 * sum w^2 + group_lasso * sum_u ||w_u||_2

where w_u are the weights of one unit: the slice at index u of the weight's unit axis
(`PrunableWeight.unit_axis`: the last axis for Dense and Conv kernels, the output axis of transposed
convolutions, the channel axis of depthwise kernels). Group lasso drives whole units to zero norm, which the
structured pruning step then removes.

`attach_regularization` sets `variable.regularizer`; Keras 3 collects the regularization losses of a model
from `variable.regularizer` of its trainable weights (`Layer._get_regularization_losses`, part of
`model.losses`, added by `model.compute_loss`). `Dense.get_config` reads `layer.kernel_regularizer`, so nothing
reaches the saved config. A regularizer the variable already had is kept and added. As with masks, the loss is
traced into the train function: compile after attaching and again after detaching.

The group norm uses a safe square root (its gradient at an all-zero unit is 0, not NaN), so penalties can be
combined with held zeros from an earlier pruning step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from workers.engine.errors import SpecError
from workers.engine.registry import PrunableWeight


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SpecError(f"{name} must be a finite number >= 0, got {value!r}", field=name)
    return float(value)


def _unit_norms(x, axis: int):
    """The L2 norm of each slice along `axis`, with a zero gradient at zero norm."""
    ndim = len(x.shape)
    axis = axis % ndim
    squares = ops.sum(ops.square(x), axis=[a for a in range(ndim) if a != axis])
    positive = squares > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, squares, ops.ones_like(squares))), ops.zeros_like(squares))


class GroupLasso(keras.regularizers.Regularizer):
    """weight * sum over the slices along `axis` (the units) of their L2 norm."""

    def __init__(self, weight: float, axis: int = -1):
        self.weight = _check_weight("group_lasso", weight)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise SpecError(f"axis must be an integer, got {axis!r}", field="axis")
        self.axis = axis

    def __call__(self, x):
        if self.weight == 0:
            return ops.convert_to_tensor(0.0, dtype=x.dtype)
        if len(x.shape) == 0:
            raise SpecError("group lasso needs a weight with at least one axis", field="group_lasso")
        return self.weight * ops.sum(_unit_norms(x, self.axis))

    def get_config(self):
        return {"weight": self.weight, "axis": self.axis}


class WeightPenalty(keras.regularizers.Regularizer):
    """l1 * sum|w| + l2 * sum w^2 + group_lasso * sum_u ||w_u|| (+ the variable's previous regularizer)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0, group_lasso: float = 0.0, axis: int = -1, inner=None):
        self.l1 = _check_weight("l1", l1)
        self.l2 = _check_weight("l2", l2)
        self.group_lasso = GroupLasso(group_lasso, axis)
        self.inner = inner

    def __call__(self, x):
        total = ops.convert_to_tensor(0.0, dtype=x.dtype)
        if self.l1:
            total = total + self.l1 * ops.sum(ops.abs(x))
        if self.l2:
            total = total + self.l2 * ops.sum(ops.square(x))
        if self.group_lasso.weight:
            total = total + self.group_lasso(x)
        if self.inner is not None:
            total = total + ops.cast(self.inner(x), x.dtype)
        return total

    def get_config(self):  # lives on a variable only, never in a layer config
        return {"l1": self.l1, "l2": self.l2, "group_lasso": self.group_lasso.weight, "axis": self.group_lasso.axis}


class RegularizationHandle:
    """What `attach_regularization` changed; `detach()` restores it."""

    def __init__(self, attached: Sequence[tuple[PrunableWeight, object]]):
        self._attached = list(attached)

    @property
    def weights(self) -> list[PrunableWeight]:
        return [w for w, _ in self._attached]

    def detach(self) -> None:
        for w, previous in self._attached:
            w.variable.regularizer = previous
        self._attached = []

    def __enter__(self) -> RegularizationHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_regularization(
    weights: Sequence[PrunableWeight], l1: float = 0.0, l2: float = 0.0, group_lasso: float = 0.0
) -> RegularizationHandle:
    """Add the penalty to each weight's variable (group lasso along its unit axis); compile afterwards."""
    l1, l2, group_lasso = _check_weight("l1", l1), _check_weight("l2", l2), _check_weight("group_lasso", group_lasso)
    attached = []
    if l1 == 0 and l2 == 0 and group_lasso == 0:
        return RegularizationHandle(attached)
    for w in weights:
        previous = w.variable.regularizer
        w.variable.regularizer = WeightPenalty(l1, l2, group_lasso, axis=w.unit_axis, inner=previous)
        attached.append((w, previous))
    return RegularizationHandle(attached)
