"""Groups of coupled producers and how many units each keeps.

Channels united by merges form one *class* (removed together); producers sharing classes form one *group*
(e.g. every branch of a residual chain). A group's score per class comes from `scoring.py`; this module decides
the count each group keeps:

- scope="layer": each group keeps ceil(keep_ratio * units);
- scope="global": one ranking over all groups of scores normalized per group (mean 1), keep_ratio of all their
  units kept; a group with an override's keep_ratio is taken out of the ranking and keeps its own share.

Counts are rounded up to a multiple of round_to (capped at the original count) and at least max(1, round_to)
units stay in every group.

A MACs-aware variant of the global ranking exists as a screening switch, off by default (`GLOBAL_RULE = "macs"`,
`bench.zoo_explore` flag `macs`): units ranked by score / cost**POWER, where a unit's cost is the MACs of the traced
layers that carry it (`MacsModel`, from `counting.macs`), and removed in that order until the MACs of those layers
are at most keep_ratio**TARGET_POWER of what they were (floors permitting). Measured for issue 9
(docs/BENCHMARKS.md part 5b) it was not adopted: with scores normalized per group the cost decides whole groups, so
it cuts the costliest residual streams and stems first, and did not bring EfficientNetB0 within the goal while it
cost MobileNetV2 accuracy against the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers.engine import importance
from workers.engine.structured.graph import Graph


@dataclass
class Group:
    members: list[str]
    classes: np.ndarray  # prunable class roots, in order of first appearance
    all_classes: int  # distinct classes (prunable and fixed) over the members' channels
    keep_ratio: float = 1.0
    overridden: bool = False
    scores: np.ndarray | None = None
    keep: int = 0
    scale: float | None = None  # global scope divides the scores by this instead of their mean (gradual variant)


def find_groups(g: Graph) -> tuple[list[Group], dict[str, str]]:
    """Producers joined by shared prunable classes; a producer whose channels are all fixed is skipped (why)."""
    skipped: dict[str, str] = {}
    owner_of_class: dict[int, str] = {}
    link = {name: name for name in g.producers}

    def find(n):
        while link[n] != n:
            link[n] = link[link[n]]
            n = link[n]
        return n

    for name, p in g.producers.items():
        for r in g.root[p.ids]:
            if g.is_fixed(r):
                continue
            other = owner_of_class.setdefault(int(r), name)
            a, b = find(other), find(name)
            if a != b:
                link[b] = a
    members: dict[str, list[str]] = {}
    for name in g.producers:
        members.setdefault(find(name), []).append(name)
    groups = []
    for names in members.values():
        roots = np.concatenate([g.root[g.producers[n].ids] for n in names])
        _, first = np.unique(roots, return_index=True)
        ordered = roots[np.sort(first)]
        prunable = np.array([r for r in ordered if not g.is_fixed(r)], dtype=np.int64)
        if prunable.size == 0:
            for n in names:
                ids = g.producers[n].ids
                skipped[n] = f"not pruned: {g.fixed_reason(g.root[ids[0]])}" if len(ids) else "not pruned: no units"
            continue
        groups.append(Group(names, prunable, len(ordered)))
    return groups, skipped


def keep_count(units: int, keep_ratio: float, round_to: int = 1) -> int:
    """ceil(keep_ratio * units), at least 1, rounded up to a multiple of round_to, at most units."""
    k = max(1, math.ceil(keep_ratio * units - 1e-9))
    k = math.ceil(k / round_to) * round_to
    return min(k, units)


def _keep_layer(groups: list[Group], keep_ratio: float, round_to: int, macs: MacsModel | None = None) -> None:
    for grp in groups:
        grp.keep = keep_count(len(grp.classes), grp.keep_ratio, round_to)


# screening switches (bench.zoo_explore flags units / macs / powNN / tgtNN / shareNN), defaults = the job's rule
GLOBAL_RULE = "units"  # "units": score only, keep_ratio of the units; "macs": score / cost**POWER, removed
# until the MACs of the layers the ranked classes touch are at most keep_ratio**TARGET_POWER of what they were
POWER = 1.0
TARGET_POWER = 2.0
MIN_SHARE = 0.0  # every ranked group keeps at least this share of its units (the floor max(1, round_to) stays)


def _floor(grp: Group, round_to: int) -> int:
    n = len(grp.classes)
    return max(min(max(1, round_to), n), math.ceil(MIN_SHARE * n - 1e-9))


def _counts(ranked: list[Group], owner: np.ndarray, order: np.ndarray, total: int, round_to: int) -> list[int]:
    chosen = np.bincount(owner[order[:total]], minlength=len(ranked))
    out = []
    for i, grp in enumerate(ranked):
        k = max(int(chosen[i]), _floor(grp, round_to))
        out.append(min(math.ceil(k / round_to) * round_to, len(grp.classes)))
    return out


def _keep_global(groups: list[Group], keep_ratio: float, round_to: int, macs: MacsModel | None = None) -> None:
    ranked = [grp for grp in groups if not grp.overridden]
    _keep_layer([grp for grp in groups if grp.overridden], keep_ratio, round_to)
    if not ranked:
        return
    pooled = np.concatenate(
        [importance.normalize(grp.scores) if not grp.scale else grp.scores / grp.scale for grp in ranked]
    )
    owner = np.concatenate([np.full(len(grp.classes), i) for i, grp in enumerate(ranked)])
    if GLOBAL_RULE == "units" or macs is None:
        order = np.argsort(-pooled, kind="stable")
        total = max(1, math.ceil(keep_ratio * len(pooled) - 1e-9))
    else:
        cost = np.concatenate([macs.costs(grp.classes) for grp in ranked])
        rel = cost / max(float(cost.mean()), 1e-12)
        order = np.argsort(-pooled / np.maximum(rel, 1e-6) ** POWER, kind="stable")
        fixed = [grp for grp in groups if grp.overridden]
        full = macs.touched(ranked, fixed, [len(grp.classes) for grp in ranked])
        budget = keep_ratio**TARGET_POWER * full
        lo, hi = 1, len(pooled)  # the most units (in ranking order) whose MACs stay within the budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if macs.touched(ranked, fixed, _counts(ranked, owner, order, mid, round_to)) <= budget + 1e-9 * full:
                lo = mid
            else:
                hi = mid - 1
        total = lo
    for grp, k in zip(ranked, _counts(ranked, owner, order, total, round_to)):
        grp.keep = k


SCOPES: dict[str, Callable[..., None]] = {"layer": _keep_layer, "global": _keep_global}


def layers_by_class(g: Graph) -> dict[int, list[str]]:
    """For every channel class, the traced layers whose inputs or outputs carry it (in graph order)."""
    index: dict[int, list[str]] = {}
    for name in g.handlers:
        maps = [m for m in (*g.in_maps[name], *g.out_maps[name]) if len(m)]
        if maps:
            for r in np.unique(g.root[np.concatenate(maps)]):
                index.setdefault(int(r), []).append(name)
    return index


def dependents(g: Graph, index: dict[int, list[str]], classes: np.ndarray, members: list[str]) -> list[str]:
    """Layers other than the members that are resliced with the group, in graph order."""
    names = {n for r in classes for n in index.get(int(r), [])} - set(members)
    return [n for n in g.handlers if n in names]


class MacsModel:
    """The MACs per sample of the traced layers as a function of the classes removed.

    A layer of M MACs costs M * (kept inputs / inputs) * (kept outputs / outputs) when it mixes its inputs through
    a kernel (Dense, Conv, Separable, counted as one product) and M * kept outputs / outputs when it follows its
    inputs (Depthwise). A class's cost is what removing it alone saves: M * (c_in / n + c_out / m) summed over
    the layers that carry it, c_in / c_out of their n inputs / m outputs.
    """

    def __init__(self, g: Graph, layer_macs: dict[str, int]):
        self.root = g.root
        self.layers: list[tuple[float, np.ndarray, np.ndarray | None]] = []
        cost = np.zeros(len(g.root))
        for name, handler in g.handlers.items():
            m = float(layer_macs.get(name, 0))
            outs = np.concatenate(g.out_maps[name]) if g.out_maps[name] else np.zeros(0, dtype=np.int64)
            ins = np.concatenate(g.in_maps[name]) if g.in_maps[name] else np.zeros(0, dtype=np.int64)
            if m <= 0 or not len(outs):
                continue
            outs = g.root[outs]
            ins = g.root[ins] if handler.consumer and len(ins) else None
            self.layers.append((m, outs, ins))
            for side in (outs, ins):
                if side is not None:
                    np.add.at(cost, side, m / len(side))
        self.cost = cost

    def costs(self, classes: np.ndarray) -> np.ndarray:
        return self.cost[classes]

    def touched(self, ranked: list[Group], fixed: list[Group], keeps: list[int]) -> float:
        """MACs of the layers that carry a class of `ranked`, each ranked group keeping its best `keeps` units
        (by score) and each group of `fixed` its own `keep`."""
        removed = np.zeros(len(self.root), dtype=bool)
        for grp, k in [*zip(ranked, keeps), *((grp, grp.keep) for grp in fixed)]:
            removed[grp.classes[np.argsort(-grp.scores, kind="stable")[k:]]] = True
        mask = np.zeros(len(self.root), dtype=bool)
        for grp in ranked:
            mask[grp.classes] = True
        total = 0.0
        for m, outs, ins in self.layers:
            if not (mask[outs].any() or (ins is not None and mask[ins].any())):
                continue
            f = 1.0 - removed[outs].mean()
            if ins is not None:
                f *= 1.0 - removed[ins].mean()
            total += m * f
        return total
