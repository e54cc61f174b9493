"""Gradual structured pruning: units leave during the fine-tune, then one surgery removes exactly those units.

The structured step's `removal: "gradual"`, and its default when it fine-tunes a model whose units to remove pass
through a squeeze-excite gate (`default_removal`): the step does not cut once and then fine-tune. The model keeps
its shape while it trains, and at ramp updates (a polynomial schedule as the unstructured pruner's, here linear:
from keep 1.0 at the first step down to the step's keep_ratio at END of the fine-tune steps, every FREQUENCY steps
at most) the units are re-scored on the current weights with the step's criterion and scope (`prune._allocate`),
and the units to remove for the current keep ratio r_t are added to those removed before. Removal is monotonic: a
unit removed once scores 0 from then on (it ranks last in its group) and stays removed.

A removed unit is held out of the network exactly as `masked_reference` describes the rebuilt model: every consumer
(Dense / Conv kernels, SeparableConv pointwise kernels) has the input rows of removed channels at zero, held after
every optimizer update by a mask constraint on those kernels (`pruning.MaskConstraint`). Nothing downstream then
reads the removed channels (their producers get no gradient from the loss), so the final surgery (`prune._surgery`
with the removed set, no compensation: the rows it would fold are zero) gives a smaller model whose outputs equal
the masked model's. In training mode each BatchNorm after a masked consumer re-centres on batch statistics, which
absorbs the mean the removed channels passed on (what compensation does for the one-shot cut).
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from workers.engine.pruning import MaskConstraint
from workers.engine.schedules import ScheduleSettings, make_schedule
from workers.engine.selection import LayerOverride, LayerSelection
from workers.engine.structured.handlers import ReshapeHandler
from workers.engine.structured.prune import StructuredReport, _allocate, _prepare, _surgery

END = 0.75  # the ramp ends at this fraction of the fine-tune's optimizer steps (the rest trains at keep_ratio)
FREQUENCY = 10  # ramp updates every this many steps at most (`schedules.ramp_frequency` keeps >= 8 updates)
# the removed share's polynomial power (Zhu & Gupta 2017 use 3 for weights); linear measured better for units
# (docs/BENCHMARKS.md 5b, EfficientNetB0 keep 0.75, seeds 0 / 1: cubic -10.05 / -15.0 points, linear -1.9 / -3.75)
POWER = 1.0
# global scope: a group's scores, removed units at 0, are normalized by their mean before the removals (False, as
# the one-shot ranking) or by their mean with those zeros (True: the survivors of a group cut before rise, which
# spreads later cuts over other groups; measured worse in 5b)
RENORMALIZE = False


def default_removal(model, *, x_calib=None, **args) -> str:
    """The structured step's removal when the spec leaves it out and the step fine-tunes (`args`: all of
    structured_prune's keyword arguments; `x_calib` is not needed): "gradual" when a chosen group's units pass
    through a traced Reshape (squeeze-excite's gate, `handlers.ReshapeHandler`), else "one_shot". Measured
    (docs/BENCHMARKS.md 5b, 3b, 5): with squeeze-excite channels open, EfficientNetB0 at keep 0.75 scored 89.45 %
    gradually and 67.55 % after one cut; without a gate the one cut was better in most comparisons (MobileNetV2
    88.05 % against 84.3 %, the BN ResNet 98.0 % against 97.15 %) and within 0.65 points on the toy models."""
    _, _, g, chosen, _ = _prepare(model, **args)
    prunable = {int(r) for grp in chosen for r in grp.classes}
    for name, handler in g.handlers.items():
        if isinstance(handler, ReshapeHandler) and any(prunable & set(g.root[m].tolist()) for m in g.in_maps[name]):
            return "gradual"
    return "one_shot"


class GradualStructured:
    """Masks beside one model's consumer kernels, updated to a keep ratio on the current weights; `finish` cuts."""

    def __init__(
        self,
        model,
        *,
        criterion: str,
        keep_ratio: float,
        scope: str = "global",
        round_to: int = 1,
        selection: LayerSelection | None = None,
        x_calib=None,
        overrides: Mapping[str, LayerOverride] | None = None,
    ):
        self.model = model
        self.keep_ratio = float(keep_ratio)
        self.scope = scope
        self.x_calib = x_calib
        self.crit, self.round_to, self.g, self.chosen, self.skipped = _prepare(
            model, criterion, keep_ratio, scope, round_to, selection, overrides
        )
        self._base = [grp.keep_ratio for grp in self.chosen]  # each group's final keep ratio (overrides included)
        self.removed: set[int] = set()
        self.updates: list[dict] = []  # one record per ramp update: step, keep ratio, units removed so far
        self.ratio = 1.0
        prunable = {int(r) for grp in self.chosen for r in grp.classes}
        self._consumers: list[tuple[str, list, list[tuple[keras.Variable, keras.Variable, object]]]] = []
        for name, handler in self.g.handlers.items():
            ins = self.g.in_maps[name]
            if not handler.consumer or not any(prunable & set(self.g.root[m].tolist()) for m in ins):
                continue
            layer = self.g.node_of[name].layer
            ones = [(v.name, np.ones(v.shape, dtype=v.dtype)) for v in layer.weights]
            every = handler.zero_inputs(layer, ones, [np.arange(len(m)) for m in ins])
            held = []
            for v, w in zip(layer.weights, every):
                if np.all(w == 1):
                    continue  # never zeroed by a removed input (bias, ...)
                mask = keras.Variable(np.ones(v.shape, dtype=v.dtype), dtype=v.dtype, trainable=False)
                held.append((v, mask, v.constraint))
                v.constraint = MaskConstraint(mask, v.constraint)
            self._consumers.append((name, ones, held))
        self._attached = True

    # ----------------------------------------------------------------- masks

    def _hold(self) -> None:
        """Masks for the current removed set; the kernels take them now (the constraints keep them after updates)."""
        gone = np.asarray(sorted(self.removed), dtype=np.int64)
        for name, ones, held in self._consumers:
            handler, layer = self.g.handlers[name], self.g.node_of[name].layer
            removed_in = [np.flatnonzero(np.isin(self.g.root[m], gone)) for m in self.g.in_maps[name]]
            masks = dict(zip([v.name for v in layer.weights], handler.zero_inputs(layer, ones, removed_in)))
            for v, mask, _ in held:
                keep = masks[v.name]
                mask.assign(keep)
                v.assign(keras.ops.convert_to_numpy(v) * keep)

    def update(self, ratio: float, step: int | None = None) -> None:
        """Remove units (on top of those removed before) until the chosen groups keep `ratio` of their units (each
        overridden group: its own ratio scaled alike), ranked on the current weights."""
        ratio = float(ratio)
        share = 1.0 if self.keep_ratio >= 1.0 else (1.0 - ratio) / (1.0 - self.keep_ratio)  # 0 -> 1 over the ramp
        for grp, base in zip(self.chosen, self._base):
            grp.keep_ratio = 1.0 - (1.0 - base) * share
        _allocate(
            self.g,
            self.chosen,
            self.crit,
            ratio,
            self.scope,
            self.round_to,
            self.x_calib,
            forced=self.removed,
            renormalize=RENORMALIZE,
        )
        for grp in self.chosen:
            order = np.argsort(-grp.scores, kind="stable")
            self.removed |= {int(r) for r in grp.classes[order[grp.keep :]]}
        self._hold()
        self.ratio = ratio
        self.updates.append({"step": step, "keep_ratio": ratio, "removed": len(self.removed)})

    def detach(self) -> None:
        """Re-apply the masks and restore the kernels' own constraints (idempotent). Recompile before training."""
        if not self._attached:
            return
        for _, _, held in self._consumers:
            for v, mask, inner in held:
                v.assign(keras.ops.convert_to_numpy(v) * keras.ops.convert_to_numpy(mask))
                v.constraint = inner
        self._attached = False

    # ----------------------------------------------------------------- training and the cut

    def callback(self, steps_per_epoch: int, epochs: int) -> keras.callbacks.Callback:
        settings = ScheduleSettings("polynomial", begin=0.0, end=END, frequency=FREQUENCY, power=POWER)
        schedule = make_schedule(settings, 1.0 - self.keep_ratio, steps_per_epoch, epochs)
        return _RampCallback(self, schedule)

    def finish(self) -> tuple[keras.Model, StructuredReport]:
        """Reach the final keep ratio if the ramp did not, detach, and cut exactly the removed units."""
        if self.ratio != self.keep_ratio or not self.updates:
            self.update(self.keep_ratio)
        self.detach()
        for grp, base in zip(self.chosen, self._base):
            grp.keep_ratio = base
        drops = [{int(r) for r in grp.classes if int(r) in self.removed} for grp in self.chosen]
        return _surgery(
            self.model,
            self.g,
            self.chosen,
            drops,
            self.skipped,
            criterion=self.crit.name,
            scope=self.scope,
            keep_ratio=self.keep_ratio,
            round_to=self.round_to,
            x_calib=None,  # the removed rows are zero: nothing to fold back
        )


class _RampCallback(keras.callbacks.Callback):
    """Calls `update` at the schedule's steps (optimizer updates since `on_train_begin`, as `PruningCallback`)."""

    def __init__(self, gradual: GradualStructured, schedule):
        super().__init__()
        self.gradual, self.schedule = gradual, schedule
        self.steps = schedule.update_steps()
        self._next = self._start = self._base = 0

    def _iterations(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        return 0 if opt is None else int(keras.ops.convert_to_numpy(opt.iterations))

    def _advance(self, t: int) -> None:
        last = None
        while self._next < len(self.steps) and self.steps[self._next] <= t:
            last = self.steps[self._next]
            self._next += 1
        if last is not None:
            self._update(last)

    def _update(self, t: int) -> None:
        final = t >= self.steps[-1]
        self.gradual.update(self.gradual.keep_ratio if final else 1.0 - self.schedule.value(t), step=t)

    def on_train_begin(self, logs=None):
        self._start, self._base, self._next = self._iterations(), 0, 0
        self._advance(0)

    def on_epoch_begin(self, epoch, logs=None):
        self._base = self._iterations() - self._start

    def on_train_batch_begin(self, batch, logs=None):
        if self._next < len(self.steps) and self._base + batch >= self.steps[self._next]:
            self._advance(self._base + batch)

    def on_epoch_end(self, epoch, logs=None):
        self._advance(self._iterations() - self._start)

    def on_train_end(self, logs=None):
        if self._next < len(self.steps):  # fewer steps than planned: reach the final ratio
            self._next = len(self.steps)
            self._update(self.steps[-1])
