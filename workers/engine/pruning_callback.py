"""The Keras training callback of gradual unstructured pruning: masks updated at the schedule's steps.

Public API (used through `pruning`)::

    PruningCallback(pruner: Pruner, method: MaskMethod, groups, schedules)   built by `Pruner.callback(...)`
    callback.updates -> list[tuple[int, float]]              (step, sparsity) after each mask update
    callback.sparsity -> float | None                        the pruner's sparsity after the last update

The callback only changes mask *values* (the pruner's `_apply`); the constraints that hold the zeros are attached
by the `Pruner` (see `pruning`'s module docstring: compile after creating the callback if the model was compiled
before). The step is the number of optimizer updates applied since `on_train_begin`; `on_train_end` reaches the
final sparsity even if training ran fewer steps than planned.

Speed. Masks are recomputed (numpy, on the host) only at the schedule's update steps. Per batch the callback
does one integer comparison in `on_train_batch_begin`, which Keras dispatches synchronously without
converting logs, and it leaves `on_train_batch_end` alone so Keras keeps its asynchronous batch-end dispatch.
The optimizer step is read from `optimizer.iterations` once per epoch (and before validation), not per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from workers.engine.masks import MaskMethod
    from workers.engine.pruning import Pruner, _Group


def _value_at(schedule, t: int) -> float:
    value = schedule(t)
    if value is None:  # not one of this schedule's own update steps (schedules of a step share them)
        value = schedule.value(t) if hasattr(schedule, "value") else schedule.final_sparsity
    return value


class PruningCallback(keras.callbacks.Callback):
    """Updates the masks at the schedule's steps; `sparsity` is the pruner's sparsity after the last update.

    The step is the number of optimizer updates applied since `on_train_begin`, read from
    `optimizer.iterations` at each epoch start and counted by batch index in between.
    """

    def __init__(self, pruner: Pruner, method: MaskMethod, groups: Sequence[_Group], schedules: Sequence):
        super().__init__()
        self.pruner, self.method = pruner, method
        self.groups, self.schedules = list(groups), list(schedules)
        self.update_steps = sorted({t for s in self.schedules for t in s.update_steps()})
        self.updates: list[tuple[int, float]] = []  # (step, sparsity) after each mask update
        self.sparsity: float | None = None
        self._next = 0
        self._start = 0
        self._base = 0
        self._training = False

    def _iterations(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        return 0 if opt is None else int(keras.ops.convert_to_numpy(opt.iterations))

    def _update(self, t: int) -> None:
        if self.method.gradual:
            params = [replace(g.params, sparsity=_value_at(s, t)) for g, s in zip(self.groups, self.schedules)]
        else:
            params = [g.params for g in self.groups]
        self.pruner._apply(self.method, self.groups, params)
        self.sparsity = self.pruner._sparsity_after_update()
        self.updates.append((t, self.sparsity))

    def _advance(self, t: int) -> None:
        last = None
        while self._next < len(self.update_steps) and self.update_steps[self._next] <= t:
            last = self.update_steps[self._next]
            self._next += 1
        if last is not None:
            self._update(last)

    def on_train_begin(self, logs=None):
        self._start = self._iterations()
        self._base = 0
        self._next = 0
        self._training = True
        self._advance(0)

    def on_epoch_begin(self, epoch, logs=None):
        self._base = self._iterations() - self._start

    def on_train_batch_begin(self, batch, logs=None):
        if self._next < len(self.update_steps) and self._base + batch >= self.update_steps[self._next]:
            self._advance(self._base + batch)

    def on_test_begin(self, logs=None):
        if self._training:  # validation inside fit: bring the masks up to date first
            self._advance(self._iterations() - self._start)

    def on_epoch_end(self, epoch, logs=None):
        self._advance(self._iterations() - self._start)

    def on_train_end(self, logs=None):
        # reach the final sparsity even if training ran fewer steps than planned
        if self._next < len(self.update_steps):
            self._next = len(self.update_steps)
            self._update(self.update_steps[-1])
        self._training = False
