"""Mask functions for unstructured pruning: pure numpy, weights in, boolean keep-mask out (True = keep).

Public API::

    target_count(sparsity, size) -> int                      zeros to make: round half up of sparsity * size
    magnitude_mask(w, sparsity) -> mask                      exactly target_count(sparsity, w.size) zeros
    threshold_mask(w, threshold) -> mask                     zero every |w| < threshold
    n_m_mask(w, n, m, axis) -> mask                          keep the n largest |w| of each m along `axis`
    block_mask(w, sparsity, block_shape) -> mask             zero whole blocks of the 2-D view, exact count
    global_magnitude_masks(ws, sparsity) -> list[mask]       one raw |w| ranking across tensors (not the default)
    lamp_scores(w) -> scores                                 LAMP scores of one tensor (exact, a full sort)
    lamp_allocation(ws, zeros, max_zeros=None) -> counts     zeros per tensor from one LAMP ranking, capped
    erk_allocation(shapes, zeros, max_zeros, min_zeros) -> counts   zeros per tensor, Erdos-Renyi-kernel densities
    count_mask(w, zeros, filter_axes=0) -> mask              exact-count magnitude, optionally one kept per filter
    global_lamp_masks(ws, sparsity, ...) -> list[mask]       LAMP allocation + count_mask: magnitude's global rule
    global_block_masks(ws, sparsity, block_shape) -> masks   one block ranking across tensors
    spared_small(sizes, budget=SMALL_LAYER_BUDGET) -> set    tensors global ranking leaves alone by default
    MASK_METHODS: dict[str, MaskMethod]                      the registry the pruner dispatches through

Ranking is count-based and deterministic: the k-th smallest score is found with `np.partition` (linear time, no full
sort; on large tensors a sorted strided sample first brackets it, so only a narrow band of scores is gathered and
partitioned, with an exact fallback), and ties at the k-th value are broken by position, lowest flat index pruned
first (for the global ranking: tensor order, then flat index). Already-zero weights have the smallest score, so
recomputing a mask on masked weights keeps earlier zeros pruned as long as the count does not shrink.

N:M. Groups are m consecutive weights along the *input* axis (Dense kernel (in, out): axis 0; Conv kernel
(*k, in, out): the `in` axis; see `registry` for every layer). When that axis is not a multiple of m, the last
group is *padded* rather than refused: it is ranked as if completed with zeros, so it keeps min(n, its length)
weights. The padded tensor is a valid N:M tensor, which is what sparse kernels need, and a first convolution
with 3 input channels does not fail a job (with m >= 4 it simply keeps all of its weights).

Block. A kernel is viewed as the 2-D matrix (prod(shape[:-1]), shape[-1]); blocks of `block_shape` tile it
from the top-left corner, edge blocks are partial (ranked by the mean |w| of their real entries), and exactly
target_count(sparsity, number of blocks) blocks are zeroed.

Global magnitude = an allocation, then exact counts (the pruner picks LAMP or raw |w| scores). A raw |w| ranking
across layers compares numbers of unrelated scales: behind BatchNorm a layer's scale means nothing, and on
MobileNetV2 it emptied whole depthwise kernels and Conv_1 (issue 9; docs/BENCHMARKS.md part 5). Global scope ranks
LAMP scores instead (Lee et al., ICLR 2021): with a tensor's weights sorted by |w| ascending, score(u) = w_u^2 /
sum_{v >= u} w_v^2, which is scale-free per tensor (its largest weight scores 1) when the model normalizes (see
`pruning`). LAMP orders the weights of one tensor exactly like |w|, so a global LAMP mask is a per-tensor allocation
followed by per-tensor magnitude masks: `lamp_allocation` ranks the scores of every tensor up to LAMP_SAMPLE (8192)
weights exactly and of larger tensors through a sorted strided sample (each point standing for size / 8192 weights;
the share moves by < 1 % of the tensor), caps each tensor at its `max_zeros` (the pruner's floors), and rounds to
whole counts summing exactly to the requested zeros; `count_mask` then zeroes exactly that many of each tensor in
linear time (`_prune_smallest`). The cost per update is one pass over the weights plus a sort of at most 8192 values
per tensor (about what the raw global ranking costs).

ERK. In a model with normalization layers the pruner allocates by shape instead (`erk_allocation`, Evci et al.
2020): density proportional to sum(shape) / prod(shape), clipped to each tensor's bounds (the pruner's floors and
the zeros held from earlier steps); `count_mask` then masks each tensor as above. On MobileNetV2 it keeps the
depthwise kernels far denser than LAMP does and measured better (see `pruning`, docs/BENCHMARKS.md part 5b).

Global ranking and small tensors. One magnitude ranking across layers tends to wipe out small layers (a first
convolution holds few, important weights). `spared_small` spares the smallest tensors whose combined size is at
most SMALL_LAYER_BUDGET (1%) of all the candidates: it bounds what sparing can cost (at most 1% of the weights
stay dense) and, unlike a fixed size cut-off such as "< 1024 weights", it never spares most of a model made of
many small layers. The model's output layer is spared by the pruning facade, not here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from workers.engine.errors import SpecError

SMALL_LAYER_BUDGET = 0.01


def target_count(sparsity: float, size: int) -> int:
    """Number of entries to zero: sparsity * size rounded half up, within 0..size."""
    _check_sparsity(sparsity)
    return min(size, max(0, int(math.floor(sparsity * size + 0.5))))


def _check_sparsity(sparsity) -> None:
    if sparsity is None or not 0.0 <= float(sparsity) <= 1.0:
        raise SpecError(f"target_sparsity must satisfy 0 <= s <= 1, got {sparsity!r}", field="target_sparsity")


def _abs(w) -> np.ndarray:
    a = np.abs(np.asarray(w))
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)


SAMPLE_SELECT_MIN = 65_536  # from this size on, the k-th value is bracketed from a sample first
_SAMPLE_SIZE = 8192


def _kth_smallest(scores: np.ndarray, k: int, n_zero: int) -> float:
    """The k-th smallest (1-based) of the non-negative `scores`, given n_zero < k zeros among them.

    Large arrays: a strided sample brackets the k-th value in a band holding a few percent of the scores;
    only that band is gathered and partitioned. If the band misses (it cannot on typical weights, but it is
    checked), the positive scores are partitioned in full. The result is exact either way.
    """
    n = scores.size
    if n >= SAMPLE_SELECT_MIN:
        sample = np.sort(scores[:: max(1, n // _SAMPLE_SIZE)])
        m = sample.size
        q = k / n
        delta = 4.0 * np.sqrt(q * (1.0 - q) / m) + 2.0 / m
        lo = sample[max(0, int(np.floor((q - delta) * m)))]
        hi = sample[min(m - 1, int(np.ceil((q + delta) * m)))]
        if lo > 0:
            below = int(np.count_nonzero(scores < lo))
            band = (scores >= lo) & (scores <= hi)
        else:
            below = n_zero
            band = (scores > 0) & (scores <= hi)
        if below < k <= below + int(np.count_nonzero(band)):
            return np.partition(scores[band], k - below - 1)[k - below - 1]
    sub = scores[scores > 0] if n_zero else scores
    return np.partition(sub, k - n_zero - 1)[k - n_zero - 1]


def _prune_smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep-mask over the flat, non-negative `scores` that drops exactly the k smallest (ties: lowest index
    first).

    Exact zeros (weights pruned earlier) are handled without ranking: when there are at least k of them the
    first k by index are dropped; otherwise the k-th value is selected among the positive scores
    (`_kth_smallest`), and only the ties at that value are ever indexed.
    """
    n = scores.size
    if k <= 0:
        return np.ones(n, dtype=bool)
    if k >= n:
        return np.zeros(n, dtype=bool)
    zero = scores == 0
    n_zero = int(np.count_nonzero(zero))
    if n_zero >= k:
        keep = ~zero
        if n_zero > k:
            keep[np.flatnonzero(zero)[k:]] = True
        return keep
    kth = _kth_smallest(scores, k, n_zero)
    keep = scores > kth  # drops the zeros, everything below kth and every tie at kth
    extra = n - int(np.count_nonzero(keep)) - k  # ties at kth to keep: the highest-index ones
    if extra > 0:
        ties = np.flatnonzero(scores == kth)
        keep[ties[len(ties) - extra :]] = True
    return keep


# --------------------------------------------------------------------------- per tensor


def magnitude_mask(w, sparsity: float) -> np.ndarray:
    """Zero exactly target_count(sparsity, w.size) entries: the smallest |w|."""
    a = _abs(w)
    return _prune_smallest(a.ravel(), target_count(sparsity, a.size)).reshape(a.shape)


def threshold_mask(w, threshold: float) -> np.ndarray:
    """Zero every entry with |w| < threshold."""
    if threshold is None or not float(threshold) >= 0.0:
        raise SpecError(f"threshold must be >= 0, got {threshold!r}", field="threshold")
    return _abs(w) >= threshold


def n_m_mask(w, n: int, m: int, axis: int = 0) -> np.ndarray:
    """Keep the n largest |w| in every group of m consecutive entries along `axis` (last group padded)."""
    if not (isinstance(n, numbers.Integral) and isinstance(m, numbers.Integral) and 1 <= n < m):
        raise SpecError(f"n:m needs integers 1 <= n < m, got n={n!r}, m={m!r}", field="n")
    n, m = int(n), int(m)
    a = _abs(w)
    if a.ndim == 0:
        raise SpecError("n:m needs a tensor with at least one axis", field="n")
    moved = np.moveaxis(a, axis, -1)
    length = moved.shape[-1]
    pad = (-length) % m
    if pad:  # padding ranks below every real weight (|w| >= 0), so a short group keeps its own weights first
        moved = np.concatenate([moved, np.full(moved.shape[:-1] + (pad,), -1.0, dtype=moved.dtype)], axis=-1)
    groups = moved.reshape(-1, m)
    # a stable sort of each small group (m <= 64): the n largest, ties kept by lower index
    order = np.argsort(-groups, axis=1, kind="stable")[:, :n]
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    keep = keep.reshape(moved.shape)[..., :length]
    return np.moveaxis(keep, -1, axis)


def _block_means(w, block_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    br, bc = _check_block_shape(block_shape)
    a = _abs(w)
    a2 = a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])
    rows, cols = a2.shape
    pr, pc = (-rows) % br, (-cols) % bc
    nr, nc = (rows + pr) // br, (cols + pc) // bc
    sums = np.pad(a2, ((0, pr), (0, pc))).reshape(nr, br, nc, bc).sum(axis=(1, 3), dtype=np.float64)
    row_counts = np.minimum(br, rows - np.arange(nr) * br)
    col_counts = np.minimum(bc, cols - np.arange(nc) * bc)
    return sums / np.outer(row_counts, col_counts), (rows, cols)


def _expand_blocks(keep_blocks: np.ndarray, block_shape: tuple[int, int], rows: int, cols: int, shape) -> np.ndarray:
    br, bc = block_shape
    keep = np.repeat(np.repeat(keep_blocks, br, axis=0), bc, axis=1)[:rows, :cols]
    return keep.reshape(shape)


def _check_block_shape(block_shape) -> tuple[int, int]:
    if block_shape is None or len(block_shape) != 2 or min(block_shape) < 1:
        raise SpecError(f"block_shape must be two integers >= 1, got {block_shape!r}", field="block_shape")
    return int(block_shape[0]), int(block_shape[1])


def block_mask(w, sparsity: float, block_shape: tuple[int, int]) -> np.ndarray:
    """Zero exactly target_count(sparsity, n_blocks) blocks of the 2-D view, those with the smallest mean |w|."""
    means, (rows, cols) = _block_means(w, block_shape)
    keep_blocks = _prune_smallest(means.ravel(), target_count(sparsity, means.size)).reshape(means.shape)
    return _expand_blocks(keep_blocks, _check_block_shape(block_shape), rows, cols, np.shape(w))


# --------------------------------------------------------------------------- across tensors


def _split(keep: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(keep[start : start + size].reshape(shape))
        start += size
    return out


def global_magnitude_masks(ws: Sequence, sparsity: float) -> list[np.ndarray]:
    """One ranking of |w| across all tensors: exactly target_count(sparsity, total size) zeros in all."""
    if not ws:
        return []
    scores = np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in ws])
    np.abs(scores, out=scores)
    return _split(_prune_smallest(scores, target_count(sparsity, scores.size)), [np.shape(w) for w in ws])


def lamp_scores(w) -> np.ndarray:
    """LAMP scores (Lee et al., ICLR 2021), same shape as w: with the weights of w sorted by |w| ascending,
    score(u) = w_u^2 / sum_{v >= u} w_v^2. The largest weight scores 1; an all-zero tensor scores 0 everywhere.
    Ties are ordered by flat index (the lower index first, so it gets the smaller score)."""
    a = np.asarray(w, dtype=np.float64).ravel() ** 2
    order = np.argsort(a, kind="stable")
    s = a[order]
    suffix = np.cumsum(s[::-1])[::-1]
    scores = np.zeros_like(a)
    scores[order] = np.divide(s, suffix, out=np.zeros_like(s), where=suffix > 0)
    return scores.reshape(np.shape(w))


LAMP_SAMPLE = 8192  # tensors above this size are allocated from a strided sample of this many weights


def _lamp_points(w, score: str = "lamp") -> tuple[np.ndarray, float]:
    """Sorted LAMP scores of w (score "magnitude": sorted |w|), or of a strided sample of w for large tensors,
    and how many weights each point stands for. The sample's suffix sums estimate the full tensor's, so the
    points' scores estimate the LAMP scores of the weights at the same quantiles."""
    a = _abs(w).ravel()
    n = a.size
    sample = a[:: n // LAMP_SAMPLE] if n > LAMP_SAMPLE else a
    if score == "magnitude":
        return np.sort(sample.astype(np.float64)), n / max(1, sample.size)
    s = np.sort(sample.astype(np.float64)) ** 2
    suffix = np.cumsum(s[::-1])[::-1]
    return np.divide(s, suffix, out=np.zeros_like(s), where=suffix > 0), n / max(1, s.size)


def lamp_allocation(ws: Sequence, zeros: int, max_zeros: Sequence[int] | None = None, score: str = "lamp") -> list[int]:
    """How many weights of each tensor to zero so that `zeros` weights are zeroed in all, the lowest LAMP
    scores across tensors first, and no tensor beyond its `max_zeros` (default: its size). With
    score="magnitude" the ranking is of raw |w| instead (the same caps, sampling and rounding).

    Tensors up to LAMP_SAMPLE weights are ranked exactly; larger ones through a strided sample of LAMP_SAMPLE
    weights, each point standing for size / LAMP_SAMPLE weights (an error of about 1% of the tensor in its
    share, for a cost independent of its size). The counts are whole, sum to exactly min(zeros, sum of
    max_zeros) and respect every max_zeros; fractional shares are rounded by largest remainder (ties: the
    lower tensor index). Exact zeros score 0, so weights pruned earlier are counted in first.
    """
    sizes = [int(np.size(w)) for w in ws]
    caps = np.array(
        sizes if max_zeros is None else [min(int(c), n) for c, n in zip(max_zeros, sizes)], dtype=np.float64
    )
    zeros = int(min(max(0, zeros), caps.sum()))
    if zeros == 0 or not ws:
        return [0] * len(ws)
    if zeros == caps.sum():
        return [int(c) for c in caps]
    scores, contrib, owner = [], [], []
    for i, w in enumerate(ws):
        pts, weight = _lamp_points(w, score)
        scores.append(pts)
        # point j stands for `weight` weights, clipped so that the tensor never goes past its cap
        contrib.append(np.clip(caps[i] - np.arange(pts.size) * weight, 0.0, weight))
        owner.append(np.full(pts.size, i, dtype=np.int64))
    scores_, contrib_, owner_ = np.concatenate(scores), np.concatenate(contrib), np.concatenate(owner)
    order = np.argsort(scores_, kind="stable")  # ties: lower tensor index, then lower score rank
    cum = np.cumsum(contrib_[order])
    j = min(int(np.searchsorted(cum, zeros, side="left")), order.size - 1)
    alloc = np.bincount(owner_[order[:j]], weights=contrib_[order[:j]], minlength=len(ws)).astype(np.float64)
    alloc[owner_[order[j]]] += zeros - (cum[j - 1] if j > 0 else 0.0)
    alloc = np.minimum(np.maximum(alloc, 0.0), caps)
    counts = np.floor(alloc + 1e-9).astype(np.int64)
    left = zeros - int(counts.sum())
    if left > 0:  # largest remainders first, among tensors below their cap
        frac = np.where(counts < caps, alloc - counts, -1.0)
        for i in np.argsort(-frac, kind="stable")[:left]:
            counts[i] += 1
    elif left < 0:
        for i in np.argsort(alloc - counts, kind="stable"):
            if left == 0:
                break
            if counts[i] > 0:
                counts[i] -= 1
                left += 1
    return [int(c) for c in counts]


def erk_allocation(
    shapes: Sequence[tuple[int, ...]],
    zeros: int,
    max_zeros: Sequence[int] | None = None,
    min_zeros: Sequence[int] | None = None,
) -> list[int]:
    """How many weights of each tensor to zero so that `zeros` are zeroed in all, by the Erdos-Renyi-kernel rule
    (Evci et al., "Rigging the lottery", 2020): a tensor's density is proportional to sum(shape) / prod(shape), one
    factor for all, each tensor's zeros within [min_zeros, max_zeros] (the factor is found by bisection with the
    densities clipped to those bounds). Thin tensors (a depthwise kernel, 3 x 3 x C x 1; a layer with few inputs or
    outputs) stay denser than wide 1x1 projections and large dense layers, whatever their weights' scale. Counts are
    whole and sum to exactly min(zeros, sum of max_zeros); the remainder of the rounding goes to the largest tensors
    below their cap."""
    sizes = np.array([int(np.prod(s)) for s in shapes], dtype=np.float64)
    if not len(sizes):
        return []
    caps = sizes if max_zeros is None else np.minimum(np.asarray(max_zeros, dtype=np.float64), sizes)
    held = np.zeros_like(sizes) if min_zeros is None else np.minimum(np.asarray(min_zeros, dtype=np.float64), caps)
    zeros = int(min(max(0, zeros), caps.sum()))
    raw = np.array([sum(s) / max(1, int(np.prod(s))) for s in shapes], dtype=np.float64)
    low = 1.0 - caps / np.maximum(sizes, 1)  # density bounds
    high = 1.0 - held / np.maximum(sizes, 1)
    keep = sizes.sum() - zeros

    def kept(eps: float) -> float:
        return float(np.sum(np.clip(eps * raw, low, high) * sizes))

    lo, hi = 0.0, 1.0
    while kept(hi) < keep and hi < 1e15:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < keep else (lo, mid)
    dens = np.clip(hi * raw, low, high)
    counts = np.clip(np.floor(sizes * (1.0 - dens) + 1e-9), held, caps).astype(np.int64)
    left = zeros - int(counts.sum())
    order = np.argsort(-sizes, kind="stable")
    for i in order:  # rounding: the largest tensors first (they hold the most zeros, a count moves them least)
        if left == 0:
            break
        step = int(min(left, caps[i] - counts[i])) if left > 0 else -int(min(-left, counts[i] - held[i]))
        counts[i] += step
        left -= step
    return [int(c) for c in counts]


def count_mask(w, zeros: int, filter_axes: int = 0) -> np.ndarray:
    """Zero exactly `zeros` entries of w, the smallest |w|. With filter_axes = f > 0, the entries sharing their
    last f indices form a filter (a depthwise kernel (*k, channels, multiplier) has f = 2: one filter per
    channel and multiplier), and each filter's largest |w| is kept whatever the count (the count is capped at
    size - number of filters): pruning then never cuts a channel off."""
    a = _abs(w)
    n = a.size
    if filter_axes > 0 and a.ndim > filter_axes and zeros > 0:
        n_filters = int(np.prod(a.shape[-filter_axes:]))
        zeros = min(zeros, n - n_filters)
        flat = a.reshape(-1, n_filters).copy()
        flat[np.argmax(flat, axis=0), np.arange(n_filters)] = np.inf
        return _prune_smallest(flat.ravel(), zeros).reshape(a.shape)
    return _prune_smallest(a.ravel(), min(max(0, zeros), n)).reshape(a.shape)


def global_lamp_masks(
    ws: Sequence, sparsity: float, max_zeros: Sequence[int] | None = None, filter_axes: Sequence[int] | None = None
) -> list[np.ndarray]:
    """One LAMP ranking across tensors: `lamp_allocation` of target_count(sparsity, total size) zeros, then
    each tensor masked by exact-count magnitude (`count_mask`). Within a tensor LAMP orders weights like |w|,
    so this is the global LAMP mask (up to the sampling of large tensors), in linear time per tensor."""
    if not ws:
        return []
    counts = lamp_allocation(ws, target_count(sparsity, sum(int(np.size(w)) for w in ws)), max_zeros)
    axes = filter_axes or [0] * len(ws)
    return [count_mask(w, c, f) for w, c, f in zip(ws, counts, axes)]


def global_block_masks(ws: Sequence, sparsity: float, block_shape: tuple[int, int]) -> list[np.ndarray]:
    """One ranking of the blocks of all tensors by mean |w|: exactly target_count(sparsity, all blocks)."""
    if not ws:
        return []
    bs = _check_block_shape(block_shape)
    means = [_block_means(w, bs) for w in ws]
    scores = np.concatenate([m.ravel() for m, _ in means])
    keep = _split(_prune_smallest(scores, target_count(sparsity, scores.size)), [m.shape for m, _ in means])
    return [_expand_blocks(k, bs, r, c, np.shape(w)) for k, (_, (r, c)), w in zip(keep, means, ws)]


def spared_small(sizes: Sequence[int], budget: float = SMALL_LAYER_BUDGET) -> set[int]:
    """Indices of the smallest tensors whose combined size is at most `budget` of the total (ties: by index)."""
    total = sum(sizes)
    spared: set[int] = set()
    used = 0
    for i in sorted(range(len(sizes)), key=lambda i: (sizes[i], i)):
        if used + sizes[i] > budget * total:
            break
        used += sizes[i]
        spared.add(i)
    return spared


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MaskParams:
    """The parameters a mask method may read; which ones it needs is listed in `MaskMethod.needs`."""

    sparsity: float | None = None
    threshold: float | None = None
    n: int | None = None
    m: int | None = None
    block_shape: tuple[int, int] | None = None


TensorFn = Callable[[np.ndarray, MaskParams, int], np.ndarray]  # (weights, params, input_axis) -> keep mask
GlobalFn = Callable[[Sequence[np.ndarray], MaskParams], list[np.ndarray]]


@dataclass(frozen=True)
class MaskMethod:
    name: str
    tensor: TensorFn
    global_: GlobalFn | None  # None: a global scope is the per-tensor rule applied to every tensor
    needs: tuple[str, ...]
    gradual: bool  # whether a schedule may ramp its sparsity (needs a `sparsity` parameter)
    description: str

    def masks(
        self, ws: Sequence[np.ndarray], params: MaskParams, input_axes: Sequence[int], *, scope: str = "layer"
    ) -> list[np.ndarray]:
        missing = [k for k in self.needs if getattr(params, k) is None]
        if missing:
            raise SpecError(f"method '{self.name}' needs {', '.join(missing)}", field=missing[0])
        if scope == "global" and self.global_ is not None:
            return self.global_(ws, params)
        return [self.tensor(w, params, axis) for w, axis in zip(ws, input_axes)]


MASK_METHODS: dict[str, MaskMethod] = {
    m.name: m
    for m in (
        MaskMethod(
            "magnitude",
            lambda w, p, axis: magnitude_mask(w, p.sparsity),
            lambda ws, p: global_lamp_masks(ws, p.sparsity),
            ("sparsity",),
            True,
            "zero the smallest |w|, exact count (global scope: layer-adaptive LAMP allocation)",
        ),
        MaskMethod(
            "threshold",
            lambda w, p, axis: threshold_mask(w, p.threshold),
            None,
            ("threshold",),
            False,
            "zero |w| < threshold",
        ),
        MaskMethod(
            "n_m",
            lambda w, p, axis: n_m_mask(w, p.n, p.m, axis),
            None,
            ("n", "m"),
            False,
            "keep the n largest |w| of every m along the input axis",
        ),
        MaskMethod(
            "block",
            lambda w, p, axis: block_mask(w, p.sparsity, p.block_shape),
            lambda ws, p: global_block_masks(ws, p.sparsity, p.block_shape),
            ("sparsity", "block_shape"),
            True,
            "zero whole blocks of the 2-D kernel view with the smallest mean |w|, exact count",
        ),
    )
}


def get_method(name: str) -> MaskMethod:
    try:
        return MASK_METHODS[name]
    except KeyError:
        allowed = ", ".join(MASK_METHODS)
        raise SpecError(f"unknown pruning method '{name}'; allowed: {allowed}", field="method") from None
