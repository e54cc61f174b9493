"""Mask functions: exact counts, deterministic ties, N:M groups along the input axis, blocks, global ranking."""

from __future__ import annotations

import time

import numpy as np
import pytest

from workers.engine import masks
from workers.engine.errors import SpecError

RNG = np.random.default_rng(0)
SHAPES = [(7,), (13, 9), (3, 3, 5, 8), (2, 4, 4, 3, 6)]


def _w(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_registry_holds_the_four_methods_and_two_of_them_ramp():
    assert set(masks.MASK_METHODS) == {"magnitude", "threshold", "n_m", "block"}  # the spec's: see test_config
    assert {n for n, m in masks.MASK_METHODS.items() if m.gradual} == {"magnitude", "block"}


def test_unknown_method_is_a_spec_error_listing_the_allowed_ones():
    with pytest.raises(SpecError, match="'random'.*magnitude, threshold, n_m, block") as err:
        masks.get_method("random")
    assert err.value.field == "method"


@pytest.mark.parametrize(
    "name, missing", [("magnitude", "sparsity"), ("threshold", "threshold"), ("n_m", "n"), ("block", "sparsity")]
)
def test_a_method_called_without_its_parameters_names_the_missing_one(name, missing):
    with pytest.raises(SpecError, match=f"needs {missing}"):
        masks.MASK_METHODS[name].masks([_w((4, 4))], masks.MaskParams(), [0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.33, 0.9, 0.999, 1.0])
def test_magnitude_zeroes_exactly_the_rounded_count_of_smallest_weights(shape, sparsity):
    w = _w(shape)
    keep = masks.magnitude_mask(w, sparsity)
    k = int(np.floor(sparsity * w.size + 0.5))
    assert keep.shape == w.shape and keep.dtype == bool
    assert int((~keep).sum()) == k
    if 0 < k < w.size:
        assert np.abs(w[~keep]).max() <= np.abs(w[keep]).min()


def test_target_count_rounds_half_up():
    assert masks.target_count(0.5, 5) == 3  # 2.5 -> 3, not banker's 2
    assert masks.target_count(0.25, 10) == 3
    assert masks.target_count(0.9, 108544) == 97690


def test_magnitude_ties_are_broken_by_position_lowest_index_first():
    w = np.array([[0.5, 0.1, 0.1], [0.1, 0.1, 0.9]], dtype="float32")
    keep = masks.magnitude_mask(w, 0.5)  # 3 zeros among four tied 0.1 values
    assert keep.tolist() == [[True, False, False], [False, True, True]]
    ones = np.ones((4, 5), "float32")
    keep = masks.magnitude_mask(ones, 0.3)
    assert (~keep).ravel().tolist() == [True] * 6 + [False] * 14
    assert np.array_equal(masks.magnitude_mask(w, 0.5), keep_again := masks.magnitude_mask(w.copy(), 0.5))
    assert keep_again.sum() == 3


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3, 0.6, 0.95])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.6, 0.9])
def test_magnitude_matches_a_stable_sort_reference_with_many_zeros_and_ties(zero_fraction, sparsity):
    rng = np.random.default_rng(int(zero_fraction * 100 + sparsity * 10))
    w = rng.integers(-20, 21, size=(30, 17)).astype("float32")  # many ties
    w[rng.random(w.shape) < zero_fraction] = 0.0
    k = masks.target_count(sparsity, w.size)
    order = np.argsort(np.abs(w).ravel(), kind="stable")  # by |w|, then by position
    expected = np.ones(w.size, bool)
    expected[order[:k]] = False
    np.testing.assert_array_equal(masks.magnitude_mask(w, sparsity).ravel(), expected)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("sparsity", [0.05, 0.55, 0.95])
@pytest.mark.parametrize("kind", ["normal", "ties", "sorted", "adversarial"])
def test_large_tensors_take_the_sampled_selection_and_still_match_the_reference(kind, zero_fraction, sparsity):
    rng = np.random.default_rng(7)
    n = 2 * masks.SAMPLE_SELECT_MIN + 123
    w = {
        "normal": rng.normal(size=n),
        "ties": rng.integers(-50, 51, size=n),
        "sorted": np.linspace(-1, 1, n),
        "adversarial": rng.normal(size=n),
    }[kind].astype("float32")
    if kind == "adversarial":  # the strided sample sees only outliers: the bracket misses, the fallback is exact
        w[:: n // 8192] = 100.0
    w[rng.random(n) < zero_fraction] = 0.0
    k = masks.target_count(sparsity, n)
    order = np.argsort(np.abs(w), kind="stable")
    expected = np.ones(n, bool)
    expected[order[:k]] = False
    np.testing.assert_array_equal(masks.magnitude_mask(w, sparsity), expected)


def test_recomputing_a_magnitude_mask_on_masked_weights_keeps_earlier_zeros():
    w = _w((40, 30))
    first = masks.magnitude_mask(w, 0.5)
    second = masks.magnitude_mask(w * first, 0.7)
    assert not np.any(second & ~first)  # nothing pruned at 50% comes back at 70%


def test_threshold_zeroes_every_weight_below_theta():
    w = _w((20, 10))
    keep = masks.threshold_mask(w, 0.5)
    np.testing.assert_array_equal(keep, np.abs(w) >= 0.5)
    assert masks.threshold_mask(w, 0.0).all()
    with pytest.raises(SpecError, match="threshold must be >= 0"):
        masks.threshold_mask(w, -1.0)


def _groups_along(a: np.ndarray, axis: int, m: int) -> np.ndarray:
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(-1, m)


@pytest.mark.parametrize("n, m", [(1, 2), (2, 4), (1, 4), (3, 8)])
@pytest.mark.parametrize(
    "shape, axis",
    [((16, 6), 0), ((3, 3, 8, 5), -2), ((3, 8, 4), -2), ((3, 3, 5, 16), -1)],
    ids=["dense", "conv2d", "conv1d", "conv2d_transpose"],
)
def test_n_m_keeps_the_n_largest_of_every_m_consecutive_along_the_input_axis(n, m, shape, axis):
    w = _w(shape)
    keep = masks.n_m_mask(w, n, m, axis)
    groups_keep = _groups_along(keep, axis, m)
    groups_w = np.abs(_groups_along(w, axis, m))
    assert np.all(groups_keep.sum(axis=1) == n)
    kept_min = np.where(groups_keep, groups_w, np.inf).min(axis=1)
    dropped_max = np.where(groups_keep, -np.inf, groups_w).max(axis=1)
    assert np.all(kept_min >= dropped_max)
    assert keep.mean() == pytest.approx(n / m)


def test_n_m_groups_run_along_the_input_axis_of_a_dense_kernel_not_the_output_axis():
    w = np.zeros((4, 2), "float32")
    w[:, 0] = [4, 3, 2, 1]  # one group of 4 inputs for output 0
    w[:, 1] = [1, 2, 3, 4]
    keep = masks.n_m_mask(w, 2, 4, axis=0)
    assert keep[:, 0].tolist() == [True, True, False, False]
    assert keep[:, 1].tolist() == [False, False, True, True]


def test_n_m_pads_a_short_last_group_which_keeps_its_own_weights_first():
    w = _w((10, 3))  # 10 inputs with m=4: groups of 4, 4 and a padded group of 2
    keep = masks.n_m_mask(w, 2, 4, axis=0)
    assert np.all(keep[:4].sum(axis=0) == 2) and np.all(keep[4:8].sum(axis=0) == 2)
    assert keep[8:].all()  # 2 real weights, n = 2: both kept
    keep = masks.n_m_mask(w, 1, 4, axis=0)
    assert np.all(keep[8:].sum(axis=0) == 1)
    padded = np.concatenate([np.where(keep, w, 0), np.zeros((2, 3), "float32")])
    assert np.all((padded.reshape(3, 4, 3) != 0).sum(axis=1) <= 1)  # a valid 1:4 tensor once padded


def test_n_m_ties_keep_the_lower_index_and_bad_n_m_are_refused():
    keep = masks.n_m_mask(np.ones((8, 1), "float32"), 2, 4, 0)
    assert keep[:, 0].tolist() == [True, True, False, False] * 2
    with pytest.raises(SpecError, match="1 <= n < m"):
        masks.n_m_mask(np.ones((8, 1)), 4, 4, 0)


def _blocks(a, br, bc):
    a2 = a.reshape(-1, a.shape[-1])
    r, c = a2.shape
    return a2.reshape(r // br, br, c // bc, bc).transpose(0, 2, 1, 3).reshape(r // br, c // bc, br * bc)


@pytest.mark.parametrize("block_shape", [(1, 4), (2, 2), (4, 1), (3, 8)])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_block_zeroes_an_exact_count_of_whole_blocks_with_the_smallest_mean(block_shape, sparsity):
    br, bc = block_shape
    w = _w((2, 3, 4, 16)) if br != 3 else _w((9, 16))  # 2-D views (24, 16) and (9, 16): divisible
    keep = masks.block_mask(w, sparsity, block_shape)
    kb = _blocks(keep, br, bc)
    assert np.all(kb.all(axis=2) | ~kb.any(axis=2))  # every block fully kept or fully zeroed
    zero_blocks = ~kb[..., 0]
    n_blocks = zero_blocks.size
    assert zero_blocks.sum() == int(np.floor(sparsity * n_blocks + 0.5))
    means = _blocks(np.abs(w), br, bc).mean(axis=2)
    assert means[zero_blocks].max() <= means[~zero_blocks].min()


def test_block_edges_are_partial_blocks_ranked_by_the_mean_of_their_real_weights():
    w = np.ones((5, 6), "float32")
    w[4, 4:] = 0.01  # the corner block (rows 4, cols 4-5) is a partial 1x2 block with the smallest mean
    keep = masks.block_mask(w, 1 / 6, (2, 4))  # 3 x 2 = 6 blocks, one zeroed
    assert (~keep).sum() == 2 and not keep[4, 4:].any()


def test_global_magnitude_uses_one_threshold_across_tensors_with_an_exact_total_count():
    ws = [_w((50, 40), 1) * 0.1, _w((30, 20), 2), _w((3, 3, 4, 8), 3) * 3]
    keeps = masks.global_magnitude_masks(ws, 0.6)
    total = sum(w.size for w in ws)
    assert sum(int((~k).sum()) for k in keeps) == int(np.floor(0.6 * total + 0.5))
    dropped = max(np.abs(w[~k]).max() for w, k in zip(ws, keeps) if (~k).any())
    kept = min(np.abs(w[k]).min() for w, k in zip(ws, keeps))
    assert dropped <= kept
    s = [float((~k).mean()) for k in keeps]
    assert s[0] > s[1] > s[2]  # the small-magnitude tensor takes most of the cut, the large one least


def test_global_block_ranks_blocks_of_all_tensors_together():
    ws = [_w((8, 8), 1) * 0.1, _w((8, 8), 2)]
    keeps = masks.global_block_masks(ws, 0.5, (1, 4))
    assert sum(int((~k).sum()) for k in keeps) == 16 * 4  # 16 of 32 blocks of 4
    assert (~keeps[0]).mean() > (~keeps[1]).mean()


@pytest.mark.parametrize("name", sorted(masks.MASK_METHODS))
def test_every_method_returns_boolean_masks_of_the_weight_shape_in_both_scopes(name):
    ws = [_w((16, 8), 1), _w((3, 3, 8, 4), 2)]
    params = masks.MaskParams(sparsity=0.5, threshold=0.5, n=2, m=4, block_shape=(2, 2))
    for scope in ("layer", "global"):
        keeps = masks.MASK_METHODS[name].masks(ws, params, [0, -2], scope=scope)
        assert [k.shape for k in keeps] == [w.shape for w in ws]
        assert all(k.dtype == bool for k in keeps)
        assert 0.3 < 1 - np.mean(np.concatenate([k.ravel() for k in keeps])) < 0.7


def test_spared_small_spares_the_smallest_tensors_within_one_percent_of_the_total():
    assert masks.spared_small([288, 18432, 204800, 1280]) == {0, 3}  # first conv and head of a small CNN
    assert masks.spared_small([100, 100, 100_000]) == {0, 1}
    assert masks.spared_small([1000] * 200) == {0, 1}  # 200 equal layers: at most 1% stays dense
    assert masks.spared_small([5000]) == set()


def test_magnitude_on_a_large_tensor_is_linear_time():
    w = _w((2048, 2048))  # 4M weights
    start = time.perf_counter()
    keep = masks.magnitude_mask(w, 0.9)
    elapsed = time.perf_counter() - start
    assert int((~keep).sum()) == int(np.floor(0.9 * w.size + 0.5))
    assert elapsed < 2.0


# --------------------------------------------------------------------------- LAMP allocation


def test_lamp_scores_follow_the_papers_definition_on_a_hand_computed_example():
    # squares 9, 1, 4, 0.25; ascending 0.25, 1, 4, 9 with suffix sums 14.25, 14, 13, 9
    w = np.array([[-3.0, 1.0], [2.0, 0.5]], dtype="float32")
    np.testing.assert_allclose(masks.lamp_scores(w), [[1.0, 1 / 14], [4 / 13, 0.25 / 14.25]])
    assert np.all(masks.lamp_scores(np.zeros((2, 3))) == 0)


def test_lamp_allocation_is_scale_invariant_where_a_raw_ranking_empties_the_small_tensor():
    big = _w((20, 10), seed=1)
    big += np.sign(big)  # |w| >= 1
    small = big * 1e-3  # the same weights at a thousandth of the scale
    raw = masks.global_magnitude_masks([big, small], 0.5)
    assert not raw[1].any() and raw[0].all()  # raw |w|: every small weight goes first
    assert masks.lamp_allocation([big, small], 200) == [100, 100]
    keeps = masks.global_lamp_masks([big, small], 0.5)
    np.testing.assert_array_equal(keeps[0], keeps[1])
    np.testing.assert_array_equal(keeps[0], masks.magnitude_mask(big, 0.5))


def _exact_lamp_counts(ws, zeros):
    scores = np.concatenate([masks.lamp_scores(w).ravel() for w in ws])
    owner = np.concatenate([np.full(np.size(w), i) for i, w in enumerate(ws)])
    chosen = owner[np.argsort(scores, kind="stable")[:zeros]]
    return np.bincount(chosen, minlength=len(ws))


def test_lamp_allocation_of_small_tensors_equals_the_exact_global_lamp_ranking():
    ws = [_w((30, 20), 2) * 5, _w((3, 3, 4, 8), 3) * 0.01, _w((50,), 4)]
    for zeros in (0, 1, 300, 700, 899):
        assert masks.lamp_allocation(ws, zeros) == list(_exact_lamp_counts(ws, zeros))


def test_lamp_allocation_of_a_sampled_large_tensor_is_within_one_percent_of_the_exact_ranking():
    big = np.random.default_rng(5).standard_t(3, size=(300, 400)).astype("float32")  # heavy tails, sampled
    ws = [big, _w((40, 30), 6) * 3.0, _w((3, 3, 16, 1), 7) * 0.1]
    assert big.size > masks.LAMP_SAMPLE
    total = sum(w.size for w in ws)
    for sparsity in (0.5, 0.8, 0.95):
        zeros = masks.target_count(sparsity, total)
        counts = masks.lamp_allocation(ws, zeros)
        assert sum(counts) == zeros
        exact = _exact_lamp_counts(ws, zeros)
        for c, e in zip(counts, exact):  # the sampled tensor's share is off by < 1% of it, moved to the others
            assert abs(c - e) <= 0.01 * big.size, (sparsity, counts, list(exact))


@pytest.mark.parametrize("zeros", [0, 1, 5_000, 40_000, 61_000])
def test_lamp_allocation_sums_exactly_and_never_exceeds_a_cap(zeros):
    ws = [_w((200, 250), 8), _w((30, 30), 9) * 100, _w((3, 3, 32, 1), 10) * 1e-4, _w((500,), 11)]
    caps = [49_000, 850, 200, 500]
    counts = masks.lamp_allocation(ws, zeros, caps)
    assert sum(counts) == min(zeros, sum(caps))
    assert all(0 <= c <= cap for c, cap in zip(counts, caps))
    assert counts == masks.lamp_allocation([w.copy() for w in ws], zeros, caps)  # deterministic


def test_lamp_allocation_counts_weights_pruned_earlier_first():
    a, b = _w((40, 40), 12), _w((40, 40), 13)
    a[:20] = 0  # 800 zeros held from an earlier step
    assert masks.lamp_allocation([a, b], 1000)[0] >= 800


def test_count_mask_with_filters_keeps_the_largest_weight_of_every_depthwise_filter():
    w = _w((3, 3, 8, 2), 14)
    w[..., 0, 0] *= 1e-6  # one filter far below all the others
    keep = masks.count_mask(w, 150)
    assert not keep[..., 0, 0].any()  # plain magnitude cuts that channel off
    keep = masks.count_mask(w, 150, filter_axes=2)
    assert int((~keep).sum()) == 128  # capped: one weight kept in each of the 16 filters
    assert keep.reshape(9, 16).sum(axis=0).min() == 1
    assert keep.reshape(9, 16).argmax(axis=0).tolist() == np.abs(w).reshape(9, 16).argmax(axis=0).tolist()
    assert int((~masks.count_mask(w, 100, filter_axes=2)).sum()) == 100


def test_global_lamp_on_large_tensors_costs_about_as_much_as_the_raw_global_ranking():
    ws = [np.random.default_rng(i).normal(size=(1000, 1000)).astype("float32") for i in range(3)]
    masks.global_lamp_masks(ws, 0.8)  # warm up

    def best(fn):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    lamp = best(lambda: masks.global_lamp_masks(ws, 0.8))
    raw = best(lambda: masks.global_magnitude_masks(ws, 0.8))
    assert lamp < 2.0 * raw + 0.05, (lamp, raw)


def test_magnitude_allocation_of_small_tensors_equals_the_raw_global_ranking():
    ws = [_w((30, 20), 15) * 5, _w((3, 3, 4, 8), 16) * 0.01, _w((50,), 17)]
    total = sum(w.size for w in ws)
    for sparsity in (0.2, 0.5, 0.9):
        raw = masks.global_magnitude_masks(ws, sparsity)
        counts = masks.lamp_allocation(ws, masks.target_count(sparsity, total), score="magnitude")
        assert counts == [int((~k).sum()) for k in raw]


@pytest.mark.parametrize("zeros", [0, 1, 5_000, 40_000, 69_000])
def test_erk_allocation_sums_exactly_within_its_bounds_and_follows_the_erk_densities(zeros):
    shapes = [(3, 3, 32, 1), (1, 1, 32, 192), (1, 1, 192, 64), (64, 10)]
    sizes = [int(np.prod(s)) for s in shapes]
    caps, held = [250, 6000, 12_000, 600], [0, 100, 0, 0]
    counts = masks.erk_allocation(shapes, zeros, caps, held)
    assert sum(counts) == min(zeros, sum(caps)) or sum(counts) == sum(held)
    assert all(h <= c <= cap for c, h, cap in zip(counts, held, caps))
    free = [i for i, (c, h, cap) in enumerate(zip(counts, held, caps)) if h < c < cap]
    if len(free) >= 2:  # unclipped tensors: density proportional to sum(shape) / prod(shape), up to rounding
        a, b = free[:2]
        ratio = (1 - counts[a] / sizes[a]) / (1 - counts[b] / sizes[b])
        erk = (sum(shapes[a]) / sizes[a]) / (sum(shapes[b]) / sizes[b])
        assert ratio == pytest.approx(erk, rel=0.01)
    assert counts == masks.erk_allocation(shapes, zeros, caps, held)  # deterministic
