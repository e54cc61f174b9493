"""Preflight: what a model holds, what the engine can prune in it, and what a spec's steps would leave of it,
in seconds and without training.

Public API::

    StepTarget(kind, method=..., target_sparsity=..., keep_ratio=..., ...)   one step's plain targets
    layer_table(model, selection=None) -> {"layers", "groups", "totals"}
    estimate_steps(model, steps, selection=None) -> [per-step estimate]    prunes `model` itself
    preflight(model, steps=(), selection=None) -> {"model", "layers", "groups", "totals", "steps", "notes"}
    weights_size(model) -> {"size_bytes", "gzip_bytes"}

One row per leaf layer (nested models are walked, paths "outer/inner"; InputLayers are left out):

* ``params`` / ``nonzero``: elements of the layer's variables (`counting.param_stats`); ``macs``: per sample
  (`counting.macs`, None when a spatial size is unknown).
* ``methods``: the methods that can prune the layer under the selection: the unstructured ones (`masks.MASK_METHODS`:
  magnitude, threshold, n_m, block) for a layer with a prunable kernel (`registry.prunable_weights`), and
  ``structured`` for a producer of a structured group whose members are all selected.
* ``prunable``: whether a prune step with the spec's defaults (magnitude, scope global) prunes the layer, or a
  structured step can remove its units. ``reason`` says why not: no prunable kernel, a custom layer class, a
  quantized kernel, the layer selection (include / exclude / overrides skip), or the global scope sparing it
  (an output layer holding at most 10 % of the pool, the smallest layers holding 1 %: the pruner's own plan; with
  steps none of which ranks globally, nothing is spared).
  ``spared`` repeats the sparing when the layer stays prunable by structured pruning.
* ``group``: the id of the structured group the layer belongs to, as a producer or as a layer resliced with it
  (BatchNorm, depthwise, ...): the coupled layers are cut together (`structured`: Add branches, Concatenate,
  Flatten -> Dense, depthwise). ``structured_reason``: why a layer with a kernel has no units to remove (it reaches
  a model output, feeds a barrier, is coupled with an excluded layer, ...).

Estimates per step (`estimate_steps`) apply each step once to the weights as they are, in order, with the engine's
own code, and measure the result: a prune step runs the `Pruner` to its final target (the global allocation, floors,
spared layers and per-layer overrides included; zeros of an earlier prune step are held, as the pipeline does), a
structured step runs `structured.structured_prune` and rebuilds the smaller model (data criteria rank by l1 instead:
the counts are the same with scope "layer"; with scope "global" they depend on the ranking). Training steps
(regularize, finetune) leave the estimate unchanged, and so do sensitivity and budget steps (the budget's level is
found by training); a step that runs a sensitivity sweep (sensitivity, budget, allocation "sensitivity") records
what the sweep costs under "sweep": units × levels held-out evaluations, or None when an earlier step swept the same
method (the job reuses that analysis). So parameters, non-zeros and MACs follow the targets exactly; which weights
and units go, and a threshold's count, will differ after training. Sizes (`weights_size`): ``size_bytes`` is the
weights stored densely at their dtype (the .keras file adds its config and about 2 KiB of HDF5 headers per variable;
pruning leaves it unchanged), ``gzip_bytes`` those bytes gzipped at `metrics.GZIP_LEVEL` (measured on up to
GZIP_SAMPLE_BYTES of evenly spread chunks and scaled when the weights are larger): what zeros save once compressed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields

import keras
import numpy as np

from workers.engine import counting, metrics
from workers.engine.errors import ModelRejected, SpecError
from workers.engine.masks import MASK_METHODS, MaskParams, get_method
from workers.engine.pruning import Pruner, PruneSettings
from workers.engine.registry import output_layer_paths, prunable_weights, roles_for, walk_layers
from workers.engine.selection import LayerSelection, Selector, override_for
from workers.engine.structured import structured_prune
from workers.engine.structured.graph import Graph
from workers.engine.structured.groups import dependents, find_groups, layers_by_class

GZIP_SAMPLE_BYTES = 8 * 2**20  # weights larger than this are gzipped in evenly spread chunks and scaled
GZIP_CHUNK_BYTES = 64 * 2**10
UNSTRUCTURED = tuple(MASK_METHODS)  # magnitude, threshold, n_m, block
DATA_CRITERIA = frozenset({"mean_activation", "apoz"})
TRAINING_KINDS = frozenset({"regularize", "finetune"})  # steps that train without pruning


@dataclass(frozen=True)
class StepTarget:
    """One step's targets, as plain values (the field names of the JobSpec's steps). Kinds other than "prune" and
    "structured" train or measure: they leave the estimate unchanged."""

    kind: str
    method: str = "magnitude"
    target_sparsity: float | None = None
    threshold: float | None = None
    n: int | None = None
    m: int | None = None
    block_shape: tuple[int, int] | None = None
    scope: str = "global"
    criterion: str = "l1"
    keep_ratio: float | None = None
    round_to: int = 1
    allocation: str = "ranking"
    levels: tuple[float, ...] | None = None  # a sensitivity sweep's levels (the caller fills in the defaults)
    samples: int = 2000  # held-out samples per sensitivity measurement
    epochs: int | None = None
    max_trials: int | None = None

    @classmethod
    def of(cls, values: dict) -> StepTarget:
        """From a step's fields (e.g. a spec step's model_dump()); fields this class does not know are ignored."""
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known and v is not None}
        if kept.get("block_shape") is not None:
            kept["block_shape"] = tuple(kept["block_shape"])
        if kept.get("levels") is not None:
            kept["levels"] = tuple(kept["levels"])
        return cls(**kept)

    @property
    def sweeps(self) -> bool:
        """Whether the step runs a sensitivity sweep when none of its method ran before."""
        return self.kind in ("sensitivity", "budget") or self.allocation == "sensitivity"

    @property
    def sweep_method(self) -> str:
        return "structured" if self.kind == "structured" else self.method

    def prune_settings(self) -> PruneSettings:
        """A prune step's settings for the `Pruner` (applied once: no schedule)."""
        return PruneSettings(
            method=self.method,
            scope=self.scope,
            params=MaskParams(
                sparsity=self.target_sparsity,
                threshold=self.threshold,
                n=self.n,
                m=self.m,
                block_shape=self.block_shape,
            ),
        )


# --------------------------------------------------------------------------- the table


def _stock(layer) -> bool:
    return getattr(keras.layers, type(layer).__name__, None) is type(layer)


def _no_kernel_reason(layer, roles) -> str:
    """Why a layer has no prunable weight in the registry's walk."""
    name = type(layer).__name__
    if roles:
        found = {v.path.rsplit("/", 1)[-1]: v for v in layer.weights}
        for role in roles:
            v = found.get(role.variable_name)
            if v is None:
                return f"its {role.role} is not built"
            if "float" not in str(v.dtype):
                return f"quantized kernel ({v.dtype}): only float kernels are pruned"
        return "its kernel is shared with an earlier layer (pruned there)"
    if not layer.weights:
        return "no weights"
    if not _stock(layer):
        return f"custom layer class '{name}': not in the pruning registry"
    names = ", ".join(v.path.rsplit("/", 1)[-1] for v in layer.weights)
    return f"no prunable kernel: {name} holds {names}, which unstructured pruning never zeroes"


def _spared(model, weights, selection: LayerSelection | None) -> dict[str, str]:
    """path -> why a global magnitude step leaves the layer dense: the pruner's own plan for such a step."""
    if not weights:
        return {}
    pruner = Pruner(model, weights, selection.overrides if selection is not None else None)
    try:
        # planning only: no mask is computed and no weight changes; the masks are dropped again by detach()
        pruner._plan(PruneSettings("magnitude", MaskParams(sparsity=0.5)), get_method("magnitude"))
        left = set(pruner.spared)
    finally:
        pruner.detach()
    paths = {w.path for w in weights}
    spared = {p for p in paths if all(f"{w.path}/{w.role}" in left for w in weights if w.path == p)}
    outputs = output_layer_paths(model)
    return {
        path: (
            "output layer: a global magnitude step spares it (the output layers hold at most 10% of the "
            "pool); scope 'layer' or naming it in layers.include prunes it"
        )
        if path in outputs
        else (
            "small layer: a global magnitude step spares the smallest layers (1% of the pool together); scope "
            "'layer' or naming it in layers.include prunes it"
        )
        for path in spared
    }


@dataclass
class _Structure:
    member_of: dict[str, str]  # producer name -> group id
    follows: dict[str, str]  # other layer resliced with a group (BatchNorm, depthwise, Add, ...) -> group id
    selectable: dict[str, bool]  # group id -> every member selected
    reasons: dict[str, str]  # producer name -> why it has no units to remove ("*": for every layer)
    groups: list[dict]


def _structure(model, selection_reasons: dict[str, str | None]) -> _Structure:
    """The structured groups of `model` (the `structured` package's graph), with the selection applied as
    structured_prune does: a group is pruned only when every member is selected."""
    try:
        g = Graph(model)
    except ModelRejected as e:  # a subclassed model: no graph to rebuild
        return _Structure({}, {}, {}, {"*": e.message}, [])
    groups, skipped = find_groups(g)
    reasons = {name: why.removeprefix("not pruned: ") for name, why in skipped.items()}
    reasons.update({name: f"it is a barrier: {why}" for name, why in g.blocked_producers.items()})
    by_class = layers_by_class(g)
    out = _Structure({}, {}, {}, reasons, [])
    for i, grp in enumerate(groups, start=1):
        gid = f"g{i}"
        blocked = {n: selection_reasons[n] for n in grp.members if selection_reasons.get(n)}
        followers = dependents(g, by_class, grp.classes, grp.members)
        out.member_of.update(dict.fromkeys(grp.members, gid))
        for name in followers:
            if name not in g.producers:
                out.follows.setdefault(name, gid)
        out.selectable[gid] = not blocked
        for n in grp.members:
            if blocked:
                out.reasons[n] = (
                    blocked[n]
                    if n in blocked
                    else f"coupled with {', '.join(sorted(blocked))} ({'; '.join(sorted(set(blocked.values())))})"
                )
        out.groups.append(
            {
                "id": gid,
                "layers": list(grp.members),
                "dependents": followers,
                "units": int(grp.all_classes),
                "removable_units": int(len(grp.classes)),
                "selected": not blocked,
            }
        )
    return out


def _structured_reason(path: str, prefix: tuple[str, ...], structure: _Structure) -> str:
    if prefix:
        return f"inside nested model '{prefix[0]}' (a barrier for structured pruning)"
    if path in structure.follows:
        return f"not a producer: its channels follow structured group {structure.follows[path]}"
    return structure.reasons.get(path) or structure.reasons.get("*") or "its units are not traced by structured pruning"


def layer_table(model: keras.Model, selection: LayerSelection | None = None, *, global_scope: bool = True) -> dict:
    """One row per leaf layer, the structured groups and the totals (see the module docstring).

    `selection`: a `selection.LayerSelection` (include / exclude / overrides) or None for every layer. Raises SpecError
    when it names no layer of the model, as a job would. `global_scope=False`: the spec prunes with no global
    ranking (scope "layer", threshold, n_m), so no layer is spared.
    """
    selected = prunable_weights(model, selection)  # validates the selection's names like a job does
    everything = prunable_weights(model)
    kernels: dict[str, int] = {}
    for w in selected:
        kernels[w.path] = kernels.get(w.path, 0) + w.size
    registered = {w.path for w in everything}
    spared = _spared(model, selected, selection) if global_scope else {}
    stats = counting.param_stats(model)
    compute = counting.macs(model)
    walked = [
        (p, prefix, layer)
        for p, prefix, layer in walk_layers(model)
        if not isinstance(layer, (keras.Model, keras.layers.InputLayer))
    ]
    selector = Selector.of(selection)
    selection_reasons = {p: selector.reason(p, prefix, layer) for p, prefix, layer in walked}
    structure = _structure(model, selection_reasons)
    rows = []
    for path, prefix, layer in walked:
        params = stats["layers"].get(path, {"params": 0, "nonzero": 0})
        top = not prefix
        gid = (structure.member_of.get(path) or structure.follows.get(path)) if top else None
        methods = list(UNSTRUCTURED) if path in kernels else []
        if top and path in structure.member_of and structure.selectable[gid]:
            methods.append("structured")
        reason = None
        if path not in registered:
            reason = _no_kernel_reason(layer, roles_for(layer))
            if gid is not None and layer.weights:
                reason += f"; structured pruning reslices it with group {gid}"
        elif path not in kernels:
            reason = selection_reasons[path]
        elif path in spared:
            reason = "spared: " + spared[path]
        prunable = (path in kernels and path not in spared) or "structured" in methods
        entry = compute["layers"].get(path)
        rows.append(
            {
                "name": path,
                "class": type(layer).__name__,
                "params": int(params["params"]),
                "nonzero": int(params["nonzero"]),
                "prunable_params": kernels.get(path, 0),
                "macs": None if path in compute["unknown"] else int(entry["macs"]) if entry else 0,
                "prunable": prunable,
                "reason": None if prunable else reason,
                "spared": spared.get(path) if prunable else None,
                "methods": methods,
                "group": gid,
                "structured_reason": (
                    _structured_reason(path, prefix, structure)
                    if path in registered and "structured" not in methods
                    else None
                ),
            }
        )
    totals = {
        "layers": len(rows),
        "prunable_layers": sum(r["prunable"] for r in rows),
        "params": int(stats["total"]),
        "trainable": int(stats["trainable"]),
        "nonzero": int(stats["nonzero"]),
        "prunable_params": sum(kernels.values()),
        "macs": int(compute["macs"]),
        "flops": int(compute["flops"]),
        "effective_macs": int(compute["effective_macs"]),
        "unknown_macs": list(compute["unknown"]),
        "groups": len(structure.groups),
        **weights_size(model),
    }
    return {"layers": rows, "groups": structure.groups, "totals": totals}


# --------------------------------------------------------------------------- sizes


def _weight_bytes(model) -> list[memoryview]:
    seen: set[int] = set()
    out = []
    for v in model.weights:
        if id(v) in seen:
            continue
        seen.add(id(v))
        out.append(memoryview(np.ascontiguousarray(v.numpy())).cast("B"))
    return out


def weights_size(model: keras.Model) -> dict:
    """{"size_bytes": the weights stored densely, "gzip_bytes": those bytes gzipped (sampled above
    GZIP_SAMPLE_BYTES)}; see the module docstring."""
    parts = _weight_bytes(model)
    total = sum(p.nbytes for p in parts)
    compressor = zlib.compressobj(metrics.GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    if total <= GZIP_SAMPLE_BYTES:
        packed = sum(len(compressor.compress(p)) for p in parts) + len(compressor.flush())
        return {"size_bytes": total, "gzip_bytes": packed}
    chunks = GZIP_SAMPLE_BYTES // GZIP_CHUNK_BYTES
    stride = total / chunks
    starts = iter(int(i * stride) for i in range(chunks))
    sampled = packed = offset = 0
    want = next(starts)
    for p in parts:  # the chunks starting inside each part, cut at the part's end
        while want is not None and want < offset + p.nbytes:
            piece = p[want - offset : want - offset + GZIP_CHUNK_BYTES]
            packed += len(compressor.compress(piece))
            sampled += piece.nbytes
            want = next(starts, None)
        offset += p.nbytes
    packed += len(compressor.flush())
    return {"size_bytes": total, "gzip_bytes": math.ceil(packed * total / max(1, sampled))}


# --------------------------------------------------------------------------- estimates


def _check_threshold(weights, threshold: float) -> None:
    """The pipeline's refusal of a threshold above every selected |w| (the same message)."""
    largest = max((float(np.max(np.abs(w.variable.numpy()))) for w in weights if w.size), default=0.0)
    if threshold > largest:
        raise SpecError(
            f"prune threshold {threshold:g} is above the largest |w| of the selected kernels "
            f"({largest:.4g}): it would zero every weight"
        )


def _measure(model) -> dict:
    stats = counting.param_stats(model)
    compute = counting.macs(model)
    return {
        "params": int(stats["total"]),
        "nonzero": int(stats["nonzero"]),
        "sparsity": float(stats["sparsity"]),
        "macs": int(compute["macs"]),
        "effective_macs": int(compute["effective_macs"]),
        **weights_size(model),
    }


def estimate_steps(
    model: keras.Model, steps: Sequence[StepTarget], selection: LayerSelection | None = None
) -> list[dict]:
    """What each step would leave, applied once and in order to `model` itself (its weights change and a structured
    step replaces it: pass a copy to keep yours). One dict per step: params, nonzero, sparsity (of the prunable
    kernels), macs, effective_macs, size_bytes, gzip_bytes, and "estimate" saying how it was obtained. Raises the
    SpecError / ModelRejected a job would raise for these targets on this model."""
    overrides = selection.overrides if selection is not None else None
    held = False
    swept: set[str] = set()
    out = []
    for index, step in enumerate(steps):
        record: dict = {"index": index, "kind": step.kind}
        sweep = _sweep_cost(model, step, selection, swept) if step.sweeps else None  # on the model before the step
        if step.kind == "prune":
            weights = prunable_weights(model, selection)
            if step.method == "threshold":
                _check_threshold(weights, step.threshold)
            pruner = Pruner(model, weights, overrides)
            try:
                if held:
                    pruner.hold_zeros()
                pruner.prune(step.prune_settings())
                record["spared"] = list(pruner.spared)
            finally:
                pruner.detach()
            held = True
            record["estimate"] = f"{step.method} pruning applied once to the current weights"
        elif step.kind == "structured":
            criterion = "l1" if step.criterion in DATA_CRITERIA else step.criterion
            model, report = structured_prune(
                model,
                criterion=criterion,
                keep_ratio=step.keep_ratio,
                scope=step.scope,
                round_to=step.round_to,
                selection=selection,
                overrides=overrides,
            )
            record["groups_pruned"] = len(report.groups)
            record["estimate"] = f"units removed by {criterion} on the current weights" + (
                f" (the job ranks by {step.criterion} on data)" if criterion != step.criterion else ""
            )
        elif step.kind in TRAINING_KINDS:
            record["estimate"] = "trains only: unchanged"
        elif step.kind == "sensitivity":
            record["estimate"] = "measures only (each unit pruned alone, no training): unchanged"
        elif step.kind == "budget":
            record["estimate"] = (
                "searches for the most compressed level within the budget: the result depends on training "
                "and data, so the model is shown unchanged"
            )
            record["trials_at_most"] = step.max_trials
            record["training_epochs_at_most"] = (step.max_trials or 0) * (step.epochs or 0)
        else:
            record["estimate"] = f"not estimated (a {step.kind} step's result depends on training and data): unchanged"
        if step.sweeps:
            record["sweep"] = sweep
        out.append({**record, **_measure(model)})
    return out


def _sweep_cost(model, step: StepTarget, selection: LayerSelection | None, swept: set[str]) -> dict | None:
    """What the sensitivity sweep a step runs costs: units × levels held-out evaluations (each after a BatchNorm
    re-estimation when the model has BatchNorm), no training. None when an earlier step of the job already swept
    the same method (the job reuses that analysis)."""
    method = step.sweep_method
    if step.kind != "sensitivity" and method in swept:
        return None
    swept.add(method)
    if method == "structured":
        structure = _structure(model, {})
        units = sum(1 for g in structure.groups if g["selected"] and g["removable_units"])
    else:
        overrides = (selection.overrides if selection is not None else None) or {}
        weights = prunable_weights(model, selection)
        units = len({w.path for w in weights if not ((o := override_for(overrides, w.path, w.name)) and o.skip)})
    levels = len(step.levels or ())
    return {
        "method": method,
        "units": units,
        "levels": levels,
        "evaluations": units * levels + 1,  # the unpruned baseline once
        "samples": step.samples,
    }


def preflight(model: keras.Model, steps: Sequence[StepTarget] = (), selection: LayerSelection | None = None) -> dict:
    """The layer table, and when `steps` are given their estimates (which prune `model` itself). The table's sparing
    follows the steps: without a prune step ranking globally (magnitude or block, scope global), none is spared."""
    prunes = [s for s in steps if s.kind == "prune"]
    ranked = any(s.scope == "global" and s.method in ("magnitude", "block") for s in prunes)
    table = layer_table(model, selection, global_scope=ranked or not prunes)
    result = {"model": {"name": model.name, "class": type(model).__name__}, **table, "steps": [], "notes": []}
    if steps:
        result["steps"] = estimate_steps(model, steps, selection)
        result["notes"].append(
            "step estimates apply each step once to the current weights, without training: "
            "parameters, non-zeros and MACs follow the targets; which weights go will differ"
        )
    return result
