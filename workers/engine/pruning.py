"""Unstructured pruning of Keras 3 models: mask state and the facade (the training callback that updates the
masks during `fit` is `pruning_callback.PruningCallback`).

Public API (used by `pipeline`)::

    PruneSettings(method, params: MaskParams, scope="global", schedule=ONE_SHOT, epochs=0)   one step, plain values
    pruner = Pruner(model, weights: list[PrunableWeight], overrides: dict[str, LayerOverride] | None = None)
    pruner.prune(step: PruneSettings, targets=None) -> None  one-shot: masks to the step's final target
    pruner.callback(step: PruneSettings, steps_per_epoch: int, targets=None) -> PruningCallback   gradual pruning
    pruner.keys() -> list[str]                               "path/role" of every weight, in order
    pruner.max_zeros(sparsity) -> dict[str, int]             global scope's floors at a target (see below)
    pruner.pool() -> dict[str, int]                          the weights a global target is spread over
    pruner.sensitivity_targets(sparsity, layer_curves, hold=, field=) -> targets   from a sensitivity analysis
    pruner.hold_zeros() -> None                              mask = (w != 0): hold zeros made earlier
    pruner.sparsity() -> float                               zeros / size over all the pruner's weights
    pruner.layer_sparsity() -> dict[str, float]              the same per layer path
    pruner.detach() -> None                                  remove the constraints: a clean, stock model
    MaskConstraint(mask, inner=None)                         w -> inner(w) * mask

How zeros are held. The pruner keeps one non-trainable `keras.Variable` mask per weight, *not* attached to any
layer (so it is never saved), and sets `variable.constraint = MaskConstraint(mask)`. Keras 3's optimizer
applies `variable.constraint` to every trainable variable right after each gradient update
(`BaseOptimizer.apply`), inside the compiled train step, so pruned weights are exactly 0.0 after every batch
whatever the optimizer (momentum and Adam moments cannot revive them). A constraint the layer already had
(e.g. `kernel_constraint=max_norm`) is applied first and restored by `detach()`. Layer configs are untouched
(`Dense.get_config` reads `layer.kernel_constraint`, not the variable's), so after `detach()` the model saves to
`.keras` and loads with stock `keras.saving.load_model` and no custom objects.

Compile after attaching or detaching. `model.fit` traces its train function once and `compile()` resets it:
the constraint is read at trace time. Create the Pruner (and call `hold_zeros`/`prune`) *before* the
`compile()` that precedes training, and compile again after `detach()` before training further. Mask *values*
may change at any time (they are variables read by the traced function), which is how the callback works.

Scopes. `scope="layer"`: every weight reaches its own target (the step's, or `overrides[name]`), count-based
and exact for magnitude/block. `scope="global"`: the weights without a per-layer override form one pool. By
default it spares the layers that produce a model output when they hold together at most OUTPUT_LAYER_BUDGET (10%)
of the pool (a model whose output layer holds most of its weights, such as Conv -> Flatten -> Dense(10), must prune
it), and the smallest tensors holding together at most 1% of the candidates (`masks.spared_small`), unless they are
named explicitly (in `layers.include` by name, or given a per-layer target). `pruner.spared` lists them as
"path/role". The target holds over the whole pool, spared weights included: the others make up for them, so the
pool ends with exactly target_count(target, pool size) zeros.

Global magnitude allocation (the default). An allocation across the pool decides how many zeros each weight gets,
then each weight is masked by exact-count magnitude. The rule (`pruner.score`): in a model with a normalization
layer (BatchNormalization, LayerNormalization, GroupNormalization), the Erdos-Renyi-kernel rule
(`masks.erk_allocation`, Evci et al. 2020: density proportional to sum(shape) / prod(shape)), since a normalized
layer's scale says nothing about its importance (raw |w| emptied whole MobileNetV2 layers) and shapes do: ERK keeps
the depthwise kernels far denser than the LAMP ranking (Lee et al., ICLR 2021; `masks.lamp_allocation`, the rule
before) and measured better on MobileNetV2 and the BN ResNet (docs/BENCHMARKS.md part 5b); NORMALIZED_RULE =
"lamp" brings LAMP back. In a model without normalization: one raw |w| ranking (`lamp_allocation` with score
"magnitude"), where a layer's scale is part of its function and the raw ranking measured better on LeNet-300-100
(docs/BENCHMARKS.md parts 1-2).
Rules, measured on MobileNetV2, a BatchNorm ResNet and LeNet-300-100:
- floor: a weight not named explicitly keeps at least FLOOR_SHARE (1/4) of the pool's average density
  ((1 - target) / 4, at least one weight), so no layer is disconnected (raw |w| ranking emptied whole layers);
- depthwise kernels (DepthwiseConv, SeparableConv's depthwise part) keep the largest weight of every filter, so
  no channel is cut off (a depthwise channel has no other path);
- 1x1 projections and the output layer: no special case beyond the above; ERK gives wide 1x1 layers the highest
  sparsity; a small output layer and the tiny layers stay spared (not sparing them cost MobileNetV2 accuracy at
  80 %); sparing the depthwise kernels too (SPARE_ROLES) scored below ERK (part 5b);
- zeros held from an earlier step stay and count towards the weight's share (ERK's lower bound, LAMP scores 0);
- a weight named explicitly has no floor and may be emptied.
`targets` ("path/role" -> sparsity, e.g. from `allocation.allocate` on a sensitivity analysis) gives those weights
their own exact targets, as per-layer overrides would; the other weights are planned as usual.
When sparing makes the target unreachable under the floors, nothing is spared; a target the floors still cannot
reach is refused with a SpecError on `target_sparsity` (stating the most that is reachable) when the step is
planned, before any training. `pruner.allocation` ("path/role" -> sparsity) holds the per-weight targets of the
last plan or mask update (spared weights 0.0; layer-scope weights their own target). `block` keeps one raw ranking
of block means over the pool, its pool target raised to make up for the spared weights (exact up to a block).

Held zeros. `hold_zeros()` records a floor: weights that are zero then stay zero through every later mask
update (new mask = computed mask AND floor). When an earlier step left more zeros in a layer than the new
target, that layer ends above its target.

Speed. Masks are recomputed (numpy, on the host) only at the schedule's update steps; what the callback does
per batch is in `pruning_callback`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import keras
import numpy as np

from workers.engine.allocation import weight_targets
from workers.engine.errors import SpecError
from workers.engine.masks import (
    MaskMethod,
    MaskParams,
    count_mask,
    erk_allocation,
    get_method,
    lamp_allocation,
    spared_small,
    target_count,
)
from workers.engine.pruning_callback import PruningCallback
from workers.engine.registry import PrunableWeight, output_layer_paths, walk_layers
from workers.engine.schedules import ONE_SHOT, OneShot, ScheduleSettings, make_schedule
from workers.engine.selection import LayerOverride, override_for

OUTPUT_LAYER_BUDGET = 0.10  # global scope spares the output layers only when they hold at most this share
SPARE_ROLES: tuple[str, ...] = ()  # roles global scope leaves dense (none; bench.zoo_explore measures the depthwise)
NORMALIZED_RULE = "erk"  # global magnitude allocation in a model with normalization layers ("erk" or "lamp")
FLOOR_SHARE = 0.25  # global scope: a layer keeps at least this share of the pool's average density
NORMALIZATIONS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)


class MaskConstraint(keras.constraints.Constraint):
    """w -> inner(w) * mask, where `mask` is a 0/1 variable of w's dtype that the pruner updates.

    A product is the cheapest op to run after every update; it leaves -0.0 at negative pruned weights, which
    `Pruner.detach()` turns into +0.0 (it compresses better).
    """

    def __init__(self, mask: keras.Variable, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        mask = self.mask if self.mask.dtype == w.dtype else keras.ops.cast(self.mask, w.dtype)
        return keras.ops.multiply(w, mask)

    def get_config(self):  # lives on a variable only, never in a layer config
        return {}


@dataclass(frozen=True)
class _Group:
    """Weights masked together with one set of parameters: one weight (layer scope) or a global pool."""

    indices: tuple[int, ...]
    params: MaskParams
    scope: str  # "layer" | "global"
    spared: tuple[int, ...] = ()  # global: weights left dense whose size still counts in the target
    max_zeros: tuple[int, ...] = ()  # global magnitude: per weight, the most zeros it may hold (its floor)
    filter_axes: tuple[int, ...] = ()  # global magnitude: 2 for depthwise kernels (a weight kept per filter)


def _masked(value: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """value where keep, else +0.0 (a product, then + 0 to turn -0.0 into +0.0: much faster than np.where)."""
    return (value * keep + value.dtype.type(0)).astype(value.dtype, copy=False)


SCOPES = ("layer", "global")


@dataclass(frozen=True)
class PruneSettings:
    """One unstructured prune step as plain values: the mask method and its parameters (`masks.MaskParams`:
    sparsity for magnitude and block, threshold, n and m, block_shape), the scope, and for gradual pruning the
    schedule and the epochs it spans (`config.prune_settings` builds it from the job spec, default schedule
    included)."""

    method: str = "magnitude"
    params: MaskParams = MaskParams()
    scope: str = "global"
    schedule: ScheduleSettings = ONE_SHOT
    epochs: int = 0

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise SpecError(f"unknown scope '{self.scope}'; allowed: {', '.join(SCOPES)}", field="scope")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise SpecError(f"epochs must be an integer >= 0, got {self.epochs!r}", field="epochs")


class Pruner:
    """Mask state beside the prunable weights of one model; see the module docstring."""

    def __init__(self, model, weights: Sequence[PrunableWeight], overrides: Mapping[str, LayerOverride] | None = None):
        self.model = model
        self.overrides = {k: LayerOverride.of(v) for k, v in (overrides or {}).items()}
        self.weights: list[PrunableWeight] = [
            w for w in weights if not ((o := override_for(self.overrides, w.path, w.name)) is not None and o.skip)
        ]
        self.spared: list[str] = []
        self.allocation: dict[str, float] = {}  # "path/role" -> sparsity planned by the last plan or update
        self._outputs = output_layer_paths(model)
        # global magnitude: ERK allocation in a model with normalization layers, one raw |w| ranking in one without
        normalized = any(isinstance(layer, NORMALIZATIONS) for _, _, layer in walk_layers(model))
        self.score = NORMALIZED_RULE if normalized else "magnitude"
        self._floors: list[np.ndarray | None] = [None] * len(self.weights)
        # exact zeros per weight as of the last mask update (what the callback reports without re-reading)
        self._zeros: list[int] = [w.size - int(np.count_nonzero(w.variable.numpy())) for w in self.weights]
        self._masks: list[keras.Variable] = []
        self._inner = []
        for w in self.weights:
            v = w.variable
            name = f"{w.path}_{w.role}_mask".replace("/", "__")
            mask = keras.Variable(np.ones(w.shape, dtype=v.dtype), dtype=v.dtype, trainable=False, name=name)
            self._masks.append(mask)
            self._inner.append(v.constraint)
            v.constraint = MaskConstraint(mask, v.constraint)
        self._attached = True

    # ----------------------------------------------------------------- state

    def __enter__(self) -> Pruner:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return self._attached

    def _check_attached(self) -> None:
        if not self._attached:
            raise RuntimeError("this Pruner was detached; create a new one (and recompile) to prune again")

    def masks(self) -> dict[str, np.ndarray]:
        """The current keep-masks (bool) by "path/role"."""
        return {f"{w.path}/{w.role}": m.numpy() != 0 for w, m in zip(self.weights, self._masks)}

    def _set(self, i: int, keep: np.ndarray, current: np.ndarray | None = None) -> None:
        floor = self._floors[i]
        if floor is not None:
            keep = keep & floor
        w = self.weights[i].variable
        current = w.numpy() if current is None else current
        new = _masked(current, keep)
        self._masks[i].assign(keep.astype(current.dtype))
        w.assign(new)
        self._zeros[i] = new.size - int(np.count_nonzero(new))

    def _sparsity_after_update(self) -> float:
        total = sum(w.size for w in self.weights)
        return sum(self._zeros) / total if total else 0.0

    def hold_zeros(self) -> None:
        """Hold every weight that is zero now at zero from here on (mask = w != 0)."""
        self._check_attached()
        for i, w in enumerate(self.weights):
            value = w.variable.numpy()
            self._floors[i] = value != 0
            self._set(i, self._floors[i], value)

    def sparsity(self) -> float:
        """Fraction of exact zeros over all the pruner's weights."""
        total = sum(w.size for w in self.weights)
        if total == 0:
            return 0.0
        zeros = sum(w.size - int(np.count_nonzero(w.variable.numpy())) for w in self.weights)
        return zeros / total

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros per layer path (a SeparableConv's two kernels count together)."""
        sizes: dict[str, list[int]] = {}
        for w in self.weights:
            zeros = w.size - int(np.count_nonzero(w.variable.numpy()))
            z, n = sizes.setdefault(w.path, [0, 0])
            sizes[w.path] = [z + zeros, n + w.size]
        return {path: (z / n if n else 0.0) for path, (z, n) in sizes.items()}

    def detach(self) -> None:
        """Re-apply the masks one last time (pruned weights become +0.0) and restore the original constraints.
        Idempotent.

        Recompile the model before training it further: the traced train function still holds the masks.
        """
        if not self._attached:
            return
        for w, mask, inner in zip(self.weights, self._masks, self._inner):
            value = w.variable.numpy()
            keep = mask.numpy() != 0
            if not keep.all():
                w.variable.assign(_masked(value, keep))
            w.variable.constraint = inner
        self._attached = False

    # ----------------------------------------------------------------- planning

    def keys(self) -> list[str]:
        return [f"{w.path}/{w.role}" for w in self.weights]

    def max_zeros(self, sparsity: float) -> dict[str, int]:
        """Per weight, the most zeros global scope gives it at `sparsity` (its floor; see the module docstring)."""
        return {key: self._max_zeros(i, sparsity) for i, key in enumerate(self.keys())}

    def pool(self) -> dict[str, int]:
        """ "path/role" -> size of the weights a global target is spread over: all but those with their own
        target_sparsity override."""
        return {
            key: w.size
            for key, w in zip(self.keys(), self.weights)
            if (o := override_for(self.overrides, w.path, w.name)) is None or o.target_sparsity is None
        }

    def sensitivity_targets(
        self, sparsity: float, layer_curves: Mapping, *, hold: bool, field: str
    ) -> dict[str, float]:
        """Per-weight targets from sensitivity curves ("path" -> (fractions, drops), `sensitivity.curves`) that put
        exactly target_count(sparsity, pool) zeros in the pool with the smallest predicted drop, within the global
        floors (`allocation.weight_targets`); the zeros there are now stay when `hold`. Pass the result to
        `prune` / `callback` as `targets`. SpecError on `field` when a layer has no curve or the floors forbid it."""
        pool = self.pool()
        held = (
            {
                k: w.size - int(np.count_nonzero(w.variable.numpy()))
                for k, w in zip(self.keys(), self.weights)
                if k in pool
            }
            if hold
            else {}
        )
        try:
            return weight_targets(
                pool, held, self.max_zeros(sparsity), layer_curves, target_count(sparsity, sum(pool.values()))
            )
        except KeyError as e:  # a layer the analysis did not measure (it was made before the model changed)
            raise SpecError(
                f"the sensitivity analysis has no curve for layer {e}; run it after the steps that change the model",
                field=field,
            ) from None
        except ValueError as e:
            raise SpecError(
                f"sparsity {sparsity:g} cannot be allocated without disconnecting a layer: {e}", field=field
            ) from None

    def _plan(
        self, step: PruneSettings, method: MaskMethod, targets: Mapping[str, float] | None = None
    ) -> list[_Group]:
        """Split the weights into groups: per-layer targets, and for global scope one pool (minus spared)."""
        base = step.params
        groups: list[_Group] = []
        pool: list[int] = []
        for i, w in enumerate(self.weights):
            target = None if targets is None else targets.get(f"{w.path}/{w.role}")
            if target is not None:
                groups.append(_Group((i,), replace(base, sparsity=float(target)), "layer"))
                continue
            params = self._layer_params(w, base)
            # a method without a global ranking (threshold, N:M) applies its per-tensor rule everywhere
            if step.scope == "layer" or method.global_ is None or params != base:
                groups.append(_Group((i,), params, "layer"))
            else:
                pool.append(i)
        self.spared = []
        if pool:
            outputs = [i for i in pool if not self.weights[i].explicit and self.weights[i].path in self._outputs]
            pool_size = sum(self.weights[i].size for i in pool)
            if sum(self.weights[i].size for i in outputs) > OUTPUT_LAYER_BUDGET * pool_size:
                outputs = []  # the output layers are most of the model: sparing them would prune next to nothing
            candidates = [i for i in pool if i not in outputs]
            candidates = [i for i in candidates if self.weights[i].role not in SPARE_ROLES or self.weights[i].explicit]
            small = spared_small([self.weights[i].size for i in candidates])
            candidates = [i for j, i in enumerate(candidates) if j not in small or self.weights[i].explicit]
            if not candidates:  # sparing would leave nothing to prune: spare nothing
                candidates = pool
            group = self._global_group(candidates, pool, base, method)
            self.spared = [f"{self.weights[i].path}/{self.weights[i].role}" for i in group.spared]
            groups.append(group)
        self.allocation = {
            f"{self.weights[i].path}/{self.weights[i].role}": float(g.params.sparsity)
            for g in groups
            if g.params.sparsity is not None
            for i in g.indices
        }
        self.allocation.update(
            {f"{self.weights[i].path}/{self.weights[i].role}": 0.0 for g in groups for i in g.spared}
        )
        return groups

    def _global_group(self, candidates: list[int], pool: list[int], base: MaskParams, method: MaskMethod) -> _Group:
        """The global pool with its floors; when sparing makes the target unreachable, nothing is spared, and
        a target still out of reach of the floors is refused (SpecError on target_sparsity)."""
        if method.name != "magnitude" or base.sparsity is None:
            return _Group(tuple(candidates), base, "global", tuple(i for i in pool if i not in candidates))
        total = sum(self.weights[i].size for i in pool)
        need = target_count(base.sparsity, total)
        for cands in (candidates, pool):
            caps = tuple(self._max_zeros(i, base.sparsity) for i in cands)
            if sum(caps) >= need:
                break
        else:
            reach = sum(caps) / total if total else 0.0
            raise SpecError(
                f"target_sparsity {base.sparsity} cannot be reached by scope 'global' without disconnecting a "
                f"layer: every layer keeps at least {FLOOR_SHARE:g} of the average density (depthwise kernels "
                f"one weight per filter), which allows at most {reach:.4f}; name the layers to prune further in "
                f"layers.include, or use scope 'layer'",
                field="target_sparsity",
            )
        axes = tuple(
            2 if self.weights[i].role == "depthwise_kernel" and not self.weights[i].explicit else 0 for i in cands
        )
        return _Group(tuple(cands), base, "global", tuple(i for i in pool if i not in cands), caps, axes)

    def _max_zeros(self, i: int, sparsity: float) -> int:
        """The most zeros global scope may give weight i: a weight named explicitly may be emptied; any other
        keeps at least FLOOR_SHARE of the average density (1 - sparsity), and at least one weight (a
        depthwise kernel: one per filter)."""
        w = self.weights[i]
        if w.explicit:
            return w.size
        keep = max(1, math.ceil(FLOOR_SHARE * (1.0 - sparsity) * w.size - 1e-9))
        if w.role == "depthwise_kernel" and len(w.shape) > 2:
            keep = max(keep, w.shape[-1] * w.shape[-2])
        return max(0, w.size - keep)

    def _layer_params(self, w: PrunableWeight, base: MaskParams) -> MaskParams:
        o = override_for(self.overrides, w.path, w.name)
        if o is None:
            return base
        changes = {}
        if o.target_sparsity is not None and base.sparsity is not None:
            changes["sparsity"] = o.target_sparsity
        if o.threshold is not None and base.threshold is not None:
            changes["threshold"] = o.threshold
        return replace(base, **changes) if changes else base

    def _apply(self, method: MaskMethod, groups: Sequence[_Group], params: Sequence[MaskParams]) -> None:
        for group, p in zip(groups, params):
            values = [self.weights[i].variable.numpy() for i in group.indices]
            if group.scope == "global" and group.max_zeros:
                self._apply_allocated(group, p.sparsity, values)
                continue
            if group.scope == "global" and group.spared and p.sparsity is not None:  # block: make up the spared
                pool = sum(v.size for v in values)
                zeros = target_count(p.sparsity, pool + sum(self.weights[i].size for i in group.spared))
                p = replace(p, sparsity=min(1.0, zeros / pool) if pool else 0.0)
            try:
                keeps = method.masks(values, p, [self.weights[i].input_axis for i in group.indices], scope=group.scope)
            except SpecError as e:
                where = ", ".join(self.weights[i].path for i in group.indices[:5])
                raise SpecError(f"{e.message} (layer {where})", field=e.field) from None
            for i, keep, value in zip(group.indices, keeps, values):
                self._set(i, keep, value)

    def _apply_allocated(self, group: _Group, sparsity: float, values: Sequence[np.ndarray]) -> None:
        """Global magnitude: the allocation (`self.score`: ERK shapes, or a LAMP / raw |w| ranking) decides each
        weight's count (`masks.erk_allocation`, `masks.lamp_allocation`) so that the pool and its spared weights
        together hold target_count(sparsity, their size) zeros, within the floors; each weight is then masked by
        exact-count magnitude."""
        idx = group.indices
        total = sum(self.weights[i].size for i in idx + group.spared)
        spared_zeros = sum(
            self.weights[i].size - int(np.count_nonzero(self.weights[i].variable.numpy())) for i in group.spared
        )  # small: at most ~11% of the pool
        zeros = target_count(sparsity, total) - spared_zeros
        caps, held = [], []
        for i, cap in zip(idx, group.max_zeros):
            floor = self._floors[i]
            held.append(0 if floor is None else floor.size - int(np.count_nonzero(floor)))
            caps.append(max(cap, held[-1]))  # zeros held from an earlier step stay, whatever the floor
        if self.score == "erk":
            counts = erk_allocation([v.shape for v in values], zeros, caps, held)
        else:
            counts = lamp_allocation(values, zeros, caps, self.score)
        for i, value, count, axes in zip(idx, values, counts, group.filter_axes):
            self._set(i, count_mask(value, count, axes), value)
            self.allocation[f"{self.weights[i].path}/{self.weights[i].role}"] = count / max(1, value.size)

    # ----------------------------------------------------------------- pruning

    def prune(self, step: PruneSettings, targets: Mapping[str, float] | None = None) -> None:
        """Prune once to the step's final targets (its method and scope, and the per-layer overrides; `targets`
        per "path/role" first)."""
        self._check_attached()
        method = get_method(step.method)
        groups = self._plan(step, method, targets)
        self._apply(method, groups, [g.params for g in groups])

    def callback(
        self, step: PruneSettings, steps_per_epoch: int, targets: Mapping[str, float] | None = None
    ) -> PruningCallback:
        """A Keras callback that prunes on the step's schedule over its `epochs` epochs of `steps_per_epoch`.

        Compile the model after creating it if the model was compiled before (see the module docstring).
        """
        self._check_attached()
        method = get_method(step.method)
        schedule = step.schedule
        if schedule.kind != "one_shot" and not method.gradual:
            raise SpecError(
                f"method '{step.method}' prunes once; a {schedule.kind} schedule cannot ramp it", field="schedule"
            )
        groups = self._plan(step, method, targets)
        schedules = [
            make_schedule(schedule, g.params.sparsity, steps_per_epoch, max(step.epochs, 1))
            if method.gradual
            else OneShot(0.0)
            for g in groups
        ]
        return PruningCallback(self, method, groups, schedules)
