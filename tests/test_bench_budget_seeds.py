"""Part 6g's counts (bench/budget_seeds.py): part 6f's miss over more seeds, the same-seed comparison, the tally and
its table. Plain values, no training."""

from __future__ import annotations

import pytest

from bench.budget import SPLIT
from bench.budget_matched import matched_budget
from bench.budget_seeds import _finetune_lines, paired, summarize, tables


def _run(seed: int, accuracy: float, nonzero: int, gz: int, sparsity: float, met: bool | None = None) -> dict:
    r = {
        "seed": seed,
        "accuracy": accuracy,
        "nonzero_weights": nonzero,
        "weights_gzip_bytes": gz,
        "sparsity": {"overall": sparsity},
        "val_accuracy": accuracy,
    }
    if met is not None:
        r["budget"] = {"met": met}
    return r


BASE = 0.9695
BASES = {"test": BASE, "val": BASE}
TFMOT = [_run(0, 0.9705, 53650, 296000, 0.8), _run(1, 0.968, 53650, 296500, 0.8), _run(2, 0.9665, 53650, 297000, 0.8)]


def test_paired_needs_fewer_weights_fewer_bytes_and_no_lower_accuracy():
    t = TFMOT[1]
    assert paired(t, _run(1, 0.968, 22704, 120000, 0.916, True))  # a tie in accuracy counts
    assert not paired(t, _run(1, 0.9675, 22704, 120000, 0.916, True))  # one digit less accurate
    assert not paired(t, _run(1, 0.97, 53650, 120000, 0.8, True))  # as many non-zero weights
    assert not paired(t, _run(1, 0.97, 22704, 296500, 0.916, True))  # as many gzip bytes


def test_summarize_counts_each_side_against_the_budget_from_tfmots_median():
    max_drop, tiny = matched_budget(BASE, 0.968)  # the median of the three tfmot runs
    assert not tiny and max_drop == pytest.approx(0.0015 + 1e-6)
    budget = [
        _run(0, 0.9675, 178764, 700000, 0.33, False),  # outside, less sparse
        _run(1, 0.968, 22704, 120000, 0.916, True),  # within, past tfmot, as accurate as its seed: paired
        _run(2, 0.968, 241249, 900000, 0.095, True),  # within but far less sparse
    ]
    s = summarize(BASES, max_drop, TFMOT, budget)
    assert s["seeds"] == 3
    assert s["tfmot_within"] == 2  # seed 2's tfmot run (0.9665) is itself below the budget from the median
    assert (s["budget_within"], s["budget_met"], s["budget_at_target"], s["paired"]) == (2, 2, 1, 1)
    assert s["budget"]["nonzero_weights"] == 178764 and s["tfmot"]["accuracy"] == 0.968
    assert s["verdict"]["met"] is False and s["verdict"]["smaller"] is False  # the medians: 3.3x the weights
    assert s["verdict"]["accuracy_margin"] == pytest.approx(0.0)


def test_the_table_has_a_row_per_seed_and_states_the_verdict():
    max_drop, _ = matched_budget(BASE, 0.968)
    budget = [
        _run(0, 0.9685, 22000, 110000, 0.92, True),
        _run(1, 0.968, 22704, 120000, 0.916, True),
        _run(2, 0.969, 27000, 130000, 0.9, True),
    ]
    runs = [{**b, "tfmot": t} for b, t in zip(budget, TFMOT)]
    d = {
        "date": "2026-12-05T00:00:00+00:00",
        "commit": "abc1234",
        "command": "python -m bench budget_seeds",
        "load": {"load1_min": 1.0, "load1_max": 2.0, "load1_median": 1.5, "cores": 2},
        "config": {
            "model": "lenet_300_100",
            "target": 0.8,
            "frequency": 10,
            "budget_seeds": [0, 1, 2],
            "step": {"kind": "budget", "epochs": 2, "max_trials": 6},
            "pretrain_epochs": 30,
            "planned_epochs": 12,
            "batch_size": 128,
            "split": SPLIT,
        },
        "pretrained_accuracy": BASE,
        "pretrained_val_accuracy": BASE,
        "max_drop": max_drop,
        "budget_runs": runs,
        "summary": summarize(BASES, max_drop, TFMOT, runs),
    }
    text = tables(d)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 0", "| 1", "| 2"]
    assert "Medians of all 3 seeds" in text and text.rstrip().endswith("met.")
    assert f"(val accuracy {BASE:.4f}, test {BASE:.4f})" in text and f"Held-out data: {SPLIT}." in text
    assert "tfmot's own run lands within the budget taken from its median in 2;" in text  # seed 2's is below
    assert "smaller at equal or better accuracy in 2." in text  # seed 0's model is smaller but less accurate


def test_the_plain_fine_tune_table_has_a_row_per_arm_that_ran_and_its_median():
    runs = [
        {
            "seed": 0,
            "epochs": 2,
            "lr": 0.001,
            "ema_momentum": 0.98,
            "own_state_steps": 1890,
            "constant": 0.962,
            "warmup_cosine": 0.968,
            "ema": 0.965,
            "own_state": None,
        },
        {
            "seed": 1,
            "epochs": 2,
            "lr": 0.001,
            "ema_momentum": 0.98,
            "own_state_steps": 1890,
            "constant": 0.948,
            "warmup_cosine": 0.966,
            "ema": 0.9675,
            "own_state": None,
        },
    ]
    d = {"pretrained_accuracy": BASE, "config": {"batch_size": 128}, "finetune": runs}
    lines = "\n".join(_finetune_lines(d)).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines if line.startswith("| fresh")}
    assert list(rows) == [
        "fresh Adam, constant rate (the engine's)",
        "fresh Adam, warm-up 10 % + cosine to 0",
        "fresh Adam, constant rate, ending on the weights' moving average (momentum 0.98)",
    ]  # no own-state row: the file had no optimizer state in these runs
    assert rows["fresh Adam, constant rate (the engine's)"] == ["-0.75 / -2.15", "-1.45 |"]
    assert any("the file's optimizer had taken 1,890 steps" in line for line in lines)
