"""Per-layer targets from sensitivity curves: remove exactly N elements in all with the smallest predicted drop.

Pure numpy, plain values. Public API::

    Curve(size, levels, drops, max_removed=None, min_removed=0)   one layer's (or group's) measured drop curve
    predicted_drop(curve, removed) -> float                       the curve, interpolated (and extrapolated)
    allocate(curves, total) -> list[int]                          elements removed per curve, summing to `total`
    total_for_drop(curves, max_drop) -> int                       the largest total whose allocation stays within
    weight_targets(weights, held, caps, layer_curves, total) -> {"path/role": sparsity}   unstructured, exact
    unit_keeps(units, current, unit_curves, keep_ratio, round_to) -> {"group": units kept}  structured
    highest_target(pool, max_zeros, upper) -> float                the largest sparsity the floors allow
    keep_overrides(units, unit_curves, keep_ratio, round_to, current) -> {layer: {"keep_ratio"}}  for the surgery

A curve says how much the held-out metric dropped when one layer alone lost a fraction `levels[k]` of its `size`
elements (weights for unstructured pruning, units for structured pruning): `drops[k]`. Between the measured
levels it is interpolated linearly from (0, 0); past the last level it is extrapolated with the last segment's
slope (at least the average slope from the origin), so targets beyond the measured levels stay possible but
expensive. Negative drops (pruning that happened to help) count as 0 and the curve is made non-decreasing:
noise should not attract pruning.

The allocation is the exact optimum of the convexified problem: each curve is replaced by its lower convex hull
over [min_removed, max_removed] (a piecewise-linear convex function of the count removed), the hull segments of
every curve are sorted by slope (predicted drop per element removed) and taken greedily until `total` elements
are removed, the last one in part. For a separable sum of convex piecewise-linear costs under one budget this
greedy order is optimal (a fractional knapsack); convexity also makes the allocation monotone in `total`: a
larger total never gives a layer fewer removals, so a search over the total can warm-start from a smaller one.
Ties in slope (typically the flat start of every curve, where pruning one layer alone costs nothing measurable)
go first to the segment that ends at the lowest fraction of its layer; collinear measured points are kept as
segment ends, so free pruning is spread evenly over the layers, level by level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Curve",
    "allocate",
    "highest_target",
    "keep_overrides",
    "predicted_drop",
    "total_for_drop",
    "unit_keeps",
    "weight_targets",
]


@dataclass(frozen=True)
class Curve:
    size: int  # elements (weights or units) of the layer or group
    levels: tuple[float, ...]  # fractions removed at which the drop was measured, within (0, 1]
    drops: tuple[float, ...]  # the measured drop at each level
    max_removed: int | None = None  # at most this many may be removed (None: size)
    min_removed: int = 0  # at least this many are removed already (zeros held from before)

    def __post_init__(self):
        if len(self.levels) != len(self.drops):
            raise ValueError("a curve needs one drop per level")
        if self.size < 0 or not 0 <= self.min_removed <= self.upper <= self.size:
            raise ValueError(
                f"a curve needs 0 <= min_removed <= max_removed <= size, got {self.min_removed}, "
                f"{self.max_removed}, {self.size}"
            )

    @property
    def upper(self) -> int:
        return self.size if self.max_removed is None else self.max_removed


def _points(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """The measured points as (count removed, drop), from (0, 0), non-decreasing, extended to the full size."""
    pairs = sorted(
        (float(lv) * curve.size, max(0.0, float(d))) for lv, d in zip(curve.levels, curve.drops) if np.isfinite(d)
    )
    xs, ys = [0.0], [0.0]
    for x, y in pairs:
        if x > xs[-1]:
            xs.append(x)
            ys.append(max(y, ys[-1]))
    if xs[-1] < curve.size:
        if len(xs) > 1:
            slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), ys[-1] / xs[-1])
        else:
            slope = 0.0
        slope = max(slope, 1e-12)  # strictly rising past the data: the unmeasured is never free
        ys.append(ys[-1] + slope * (curve.size - xs[-1]))
        xs.append(float(curve.size))
    return np.asarray(xs), np.asarray(ys)


def predicted_drop(curve: Curve, removed: float) -> float:
    """The curve's drop at `removed` elements (linear between measured points, extrapolated past the last)."""
    if curve.size == 0:
        return 0.0
    xs, ys = _points(curve)
    return float(np.interp(removed, xs, ys))


def _hull(curve: Curve) -> list[tuple[int, int, float]]:
    """Segments (start, end, slope) of the lower convex hull of the curve over [min_removed, max_removed]."""
    lo, hi = curve.min_removed, curve.upper
    if hi <= lo:
        return []
    xs, ys = _points(curve)
    grid = np.unique(np.concatenate([[lo, hi], np.round(xs[(xs > lo) & (xs < hi)])]).astype(np.int64))
    vals = np.interp(grid, xs, ys)
    hull: list[int] = []  # indices into grid (Andrew's monotone chain, lower half)
    for i in range(len(grid)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (grid[b] - grid[a]) * (vals[i] - vals[a]) - (vals[b] - vals[a]) * (grid[i] - grid[a])
            if cross < 0:  # b lies above the chord a-i: not on the lower hull (collinear points stay: see allocate)
                hull.pop()
            else:
                break
        hull.append(i)
    return [
        (int(grid[a]), int(grid[b]), float((vals[b] - vals[a]) / (grid[b] - grid[a]))) for a, b in zip(hull, hull[1:])
    ]


def _ordered_segments(curves: Sequence[Curve]) -> list[tuple[int, int, int, float]]:
    segs = [(i, a, b, slope) for i, c in enumerate(curves) for a, b, slope in _hull(c)]
    # cheapest drop per element first; ties: the segment ending at the lowest fraction of its layer
    segs.sort(key=lambda s: (s[3], s[2] / max(1, curves[s[0]].size), s[0]))
    return segs


def allocate(curves: Sequence[Curve], total: int) -> list[int]:
    """Elements removed per curve: within [min_removed, max_removed] each, summing exactly to `total`, with the
    smallest predicted drop of the convexified curves (see the module docstring). Raises ValueError when `total`
    is outside what the bounds allow."""
    counts = [c.min_removed for c in curves]
    low, high = sum(counts), sum(c.upper for c in curves)
    if not low <= total <= high:
        raise ValueError(f"cannot remove {total} elements: the layers allow {low} to {high}")
    left = total - low
    for i, a, b, _slope in _ordered_segments(curves):
        if left <= 0:
            break
        take = min(b - a, left)
        counts[i] += take
        left -= take
    return counts


def total_for_drop(curves: Sequence[Curve], max_drop: float) -> int:
    """The largest total whose allocation has a convexified predicted drop (the sum over curves) <= max_drop."""
    total = sum(c.min_removed for c in curves)
    spent = sum(float(np.interp(c.min_removed, *_points(c))) for c in curves if c.size)
    for _i, a, b, slope in _ordered_segments(curves):
        room = max_drop - spent
        if slope * (b - a) <= room:
            total += b - a
            spent += slope * (b - a)
            continue
        if slope > 0:
            total += int(max(0.0, room) // slope)
        break
    return total


# --------------------------------------------------------------------------- from a sensitivity analysis


def weight_targets(
    weights: Mapping[str, int],
    held: Mapping[str, int],
    caps: Mapping[str, int],
    layer_curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    total: int,
) -> dict[str, float]:
    """Unstructured: exact per-weight sparsities removing `total` zeros over `weights` ("path/role" -> size).

    Each weight takes its layer's curve ("path" -> (fractions, drops)), its drops scaled by the weight's share of
    the layer (a SeparableConv's two kernels split their layer's drop); `held` zeros stay (min), `caps` bound the
    zeros (max, never below what is held). Returns "path/role" -> sparsity, each count / size exactly.
    """
    layer_size: dict[str, int] = {}
    for key, size in weights.items():
        layer_size[_path(key)] = layer_size.get(_path(key), 0) + size
    keys = list(weights)
    curves = []
    for key in keys:
        path, size = _path(key), weights[key]
        if path not in layer_curves:
            raise KeyError(path)
        fractions, drops = layer_curves[path]
        share = size / max(1, layer_size[path])
        low = min(held.get(key, 0), size)
        curves.append(
            Curve(
                size,
                tuple(fractions),
                tuple(d * share for d in drops),
                max_removed=max(low, min(size, caps.get(key, size))),
                min_removed=low,
            )
        )
    counts = allocate(curves, total)
    return {key: count / size if size else 0.0 for key, size, count in zip(keys, (weights[k] for k in keys), counts)}


def unit_keeps(
    units: Mapping[str, int],
    current: Mapping[str, int],
    unit_curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    keep_ratio: float,
    round_to: int = 1,
) -> dict[str, int]:
    """Structured: units kept per group ("name" -> prunable units of the original model) so that keep_ratio of
    them are kept overall, with the smallest predicted drop; `current` units (after earlier removals) bound each
    from above, and every group keeps at least max(1, round_to). Kept counts are rounded up to round_to (capped at
    the current count), so the total is exact up to the rounding."""
    names = list(units)
    floor = max(1, round_to)
    curves = []
    for name in names:
        size, now = units[name], min(current.get(name, units[name]), units[name])
        fractions, drops = unit_curves[name]
        keep_min = min(floor, now)
        curves.append(Curve(size, tuple(fractions), tuple(drops), max_removed=size - keep_min, min_removed=size - now))
    total_units = sum(units.values())
    kept_total = max(1, math.ceil(keep_ratio * total_units - 1e-9))
    low, high = sum(c.min_removed for c in curves), sum(c.upper for c in curves)
    counts = allocate(curves, min(max(total_units - kept_total, low), high))
    out = {}
    for name, removed in zip(names, counts):
        now = min(current.get(name, units[name]), units[name])
        kept = units[name] - removed
        out[name] = min(now, math.ceil(kept / round_to) * round_to)
    return out


def _path(key: str) -> str:
    return key.rsplit("/", 1)[0]


def highest_target(pool: Mapping[str, int], max_zeros: Callable[[float], Mapping[str, int]], upper: float) -> float:
    """The largest sparsity <= upper whose zeros (target_count over the pool) fit under the floors `max_zeros(s)`
    ("path/role" -> most zeros at sparsity s, e.g. `Pruner.max_zeros`); found by bisection."""
    total = sum(pool.values())

    def reachable(s: float) -> bool:
        caps = max_zeros(s)
        return sum(min(caps[k], n) for k, n in pool.items()) >= math.floor(s * total + 0.5)

    if reachable(upper):
        return upper
    lo, hi = 0.0, upper
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reachable(mid) else (lo, mid)
    return lo


def keep_overrides(
    units: Sequence[Mapping],
    unit_curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    keep_ratio: float,
    round_to: int = 1,
    current: Mapping[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """Structured: a {"keep_ratio": r} override per member layer of each unit ({"name", "layers", "size"} of a
    sensitivity analysis) so that the groups keep keep_ratio of their units overall (`unit_keeps`); r is relative
    to the `current` units of a group (some may have been removed already), as the surgery applies it."""
    sizes = {u["name"]: u["size"] for u in units}
    current = current or sizes
    keeps = unit_keeps(sizes, current, unit_curves, keep_ratio, round_to)
    out: dict[str, dict[str, float]] = {}
    for u in units:
        ratio = min(1.0, keeps[u["name"]] / max(1, current.get(u["name"], u["size"])))
        out.update({layer: {"keep_ratio": ratio} for layer in u["layers"]})
    return out
