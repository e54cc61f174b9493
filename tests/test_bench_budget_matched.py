"""Part 6e's verdict logic (bench/budget_matched.py): the budget given a tfmot setting's own drop, the frequency
chosen, the strict comparison with that one setting and the tally over pairs. Plain values, no training."""

from __future__ import annotations

import numpy as np
import pytest

from bench.budget_matched import TIE, TINY, better_frequency, matched_budget, tally
from bench.budget_tfmot import verdict


def _m(accuracy: float, nonzero: int, gz: int) -> dict:
    return {"accuracy": accuracy, "nonzero_weights": nonzero, "weights_gzip_bytes": gz, "sparsity": 0.9}


def test_matched_budget_is_the_settings_drop_and_admits_a_tie():
    max_drop, tiny = matched_budget(0.962, 0.959)
    assert max_drop == pytest.approx(0.003 + TIE, abs=1e-9) and not tiny
    assert max_drop == round(max_drop, 7)  # no float residue such as 0.0030000000000000027
    # a trial exactly at tfmot's accuracy, as the engine measures it (float32), is within; half a digit more is not
    base, limit = float(np.float32(0.944)), float(np.float32(0.834))
    max_drop, _ = matched_budget(0.944, 0.834)
    assert base - limit <= max_drop + 1e-12
    assert base - float(np.float32(0.8335)) > max_drop + 1e-12


@pytest.mark.parametrize("tfmot", [0.962, 0.9685])
def test_matched_budget_is_tiny_when_tfmot_is_not_below_the_input(tfmot):
    assert matched_budget(0.962, tfmot) == (TINY, True)


def test_better_frequency_by_accuracy_then_size_then_lower_frequency():
    assert better_frequency({100: _m(0.965, 27127, 1), 10: _m(0.964, 27030, 1)}) == 100
    assert better_frequency({100: _m(0.964, 27127, 1), 10: _m(0.964, 27030, 1)}) == 10
    assert better_frequency({100: _m(0.964, 27030, 1), 10: _m(0.964, 27030, 1)}) == 10


def test_verdict_against_the_one_matched_setting():
    base = 0.962
    max_drop, _ = matched_budget(base, 0.959)
    tf = {"t": _m(0.959, 13720, 125909)}
    smaller_as_accurate = verdict(base, max_drop, _m(0.959, 8729, 48692), tf)
    assert smaller_as_accurate["met"] and smaller_as_accurate["tfmot_best"] == "t"
    # fewer non-zero weights but more gzip bytes: not smaller
    assert not verdict(base, max_drop, _m(0.960, 8729, 130000), tf)["met"]
    # smaller but less accurate than tfmot (the tiny case: tfmot above the input model)
    tiny_drop, tiny = matched_budget(base, 0.9685)
    v = verdict(base, tiny_drop, _m(0.9615, 20000, 90000), {"t": _m(0.9685, 53650, 296563)})
    assert tiny and v["budget_within_budget"] and v["smaller"] and not v["met"]
    assert v["accuracy_margin"] == pytest.approx(-0.007)


def test_tally_counts_pairs_and_names_the_met_ones():
    pairs = [
        {"model": "a", "name": "s1", "verdict": {"met": True, "met_within_budget": True}},
        {"model": "a", "name": "s2", "verdict": {"met": False, "met_within_budget": True}},
        {"model": "b", "name": "s1", "verdict": {"met": False}},
    ]
    t = tally(pairs)
    assert (t["pairs"], t["met"], t["smaller_within"], t["all_met"]) == (3, 1, 2, False)
    assert t["met_pairs"] == ["a s1"]
    assert tally(pairs[:1])["all_met"] and not tally([])["all_met"]
