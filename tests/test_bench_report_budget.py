"""Parts 6c and 6e's tables (bench/report_budget.py) for runs judged on the test half of the held-out digits: the
setting picked on val, every other accuracy on test, and each side's place against the budget on both. Plain values,
no training."""

from __future__ import annotations

from bench.budget import SPLIT
from bench.budget_matched import matched_budget, tally
from bench.budget_tfmot import verdict
from bench.report_budget import budget_matched_tables, budget_tfmot_tables

RUN = {
    "date": "2026-12-05T00:00:00+00:00",
    "commit": "abc1234",
    "command": "python -m bench x",
    "load": {"load1_min": 1.0, "load1_max": 2.0, "load1_median": 1.5, "cores": 2},
}
STEP = {"kind": "budget", "epochs": 2, "max_trials": 6, "max_drop": 0.01, "metric": "accuracy"}
BASE = {"val": 0.960, "test": 0.962}


def _arm(test: float, val: float, nonzero: int, gz: int, sparsity: float, **extra) -> dict:
    return {
        "accuracy": test,
        "val_accuracy": val,
        "nonzero_weights": nonzero,
        "weights_gzip_bytes": gz,
        "sparsity": sparsity,
        **extra,
    }


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


def test_6c_shows_val_and_test_and_whether_each_arm_is_within_on_both():
    budget = _arm(0.951, 0.955, 8729, 48692, 0.969)
    settings = {
        "tfmot poly 0.95 f10": _arm(0.950, 0.951, 13720, 125909, 0.95, target=0.95, frequency=10),
        "tfmot poly 0.97 f10": _arm(0.945, 0.949, 8396, 99485, 0.97, target=0.97, frequency=10),
    }
    model = {
        "pretrained_accuracy": BASE["test"],
        "pretrained_val_accuracy": BASE["val"],
        "budget": budget,
        "total_epochs": [12],
        "tfmot": settings,
        "verdict": verdict(BASE, 0.01, budget, settings),
    }
    cfg = {"step": STEP, "frequencies": [10], "batch_size": 128, "seeds": [0], "split": SPLIT}
    text = budget_tfmot_tables({**RUN, "config": cfg, "models": {"lenet_300_100": model}})
    assert f"Held-out data: {SPLIT}." in text
    assert "input model: val 0.9600, test 0.9620; budget: ≥ 0.9500 on val, ≥ 0.9520 on test" in text
    rows = {r[0]: r for r in _rows(text)}
    # arm, epochs, sparsity, val acc., test acc., vs input (test), non-zero, gzip, within val / test
    assert rows["**budget** (Secateurs)"][3:6] == ["0.9550", "0.9510", "-1.10"]
    assert rows["**budget** (Secateurs)"][-1] == "yes / no"  # chosen on val, a digit short on test
    assert rows["tfmot poly 0.95 f10 ← best within"][-1] == "yes / no"  # picked on val, outside on test
    assert rows["tfmot poly 0.97 f10"][-1] == "no / no"
    verdict_row = rows["lenet_300_100"]
    assert verdict_row[2] == "met"  # 0.951 >= 0.950 on test, and smaller in both sizes
    assert verdict_row[3] == "no"  # neither stays within the point on test


def _6e_run(ci: list[float] | None = None) -> str:
    """Part 6e's tables for one LeNet row (tfmot 0.95 at frequency 10), with the margin's interval `ci` if given."""
    max_drop, tiny = matched_budget(BASE["val"], 0.955)
    budget = _arm(0.958, 0.957, 9228, 51362, 0.967)
    tf = _arm(0.956, 0.955, 13720, 125909, 0.95, target=0.95, frequency=10)
    name = "tfmot poly 0.95 f10"
    setting = {
        "name": name,
        "max_drop": max_drop,
        "tiny": tiny,
        "budget": budget,
        "budget_met": [True],
        "total_epochs": [12],
        "tfmot": tf,
        "verdict": {**verdict(BASE, max_drop, budget, {name: tf}), **({"accuracy_margin_ci95": ci} if ci else {})},
    }
    cfg = {
        "step": STEP,
        "frequencies": [100, 10],
        "batch_size": 128,
        "seeds": [0],
        "pretrain_epochs": 10,
        "planned_epochs": 12,
        "tiny": 0.001,
        "tie": 1e-6,
        "split": SPLIT,
    }
    models = {
        "lenet_300_100": {
            "pretrained_accuracy": BASE["test"],
            "pretrained_val_accuracy": BASE["val"],
            "settings": {name: setting},
        }
    }
    goal = tally([{"model": "lenet_300_100", **setting}])
    return budget_matched_tables({**RUN, "config": cfg, "models": models, "goal": goal})


def test_6e_rows_pick_on_val_and_show_both_sides_val_accuracy():
    text = _6e_run()
    (row,) = [r for r in _rows(text) if r[0].startswith("lenet")]
    assert row[0] == "lenet_300_100 (val 0.9600, test 0.9620)"
    assert row[2:5] == ["0.9560 (-0.60)", "0.9550 / 0.9570", "0.005001"]  # test, then val: tfmot / budget
    assert row[-2:] == ["+0.20", "met"]
    assert "Pairs met: 1 of 1" in text and "resolve the accuracy margin" not in text  # a run with no intervals


def test_6e_shows_the_margins_interval_and_counts_the_pairs_it_resolves():
    text = _6e_run([-0.004, 0.0085])
    (row,) = [r for r in _rows(text) if r[0].startswith("lenet")]
    assert row[-2:] == ["+0.20 [-0.40, +0.85]", "met"]
    assert "resolve the accuracy margin (its 95 % interval lies wholly above or below 0) in 0 of 1 pairs" in text
    text = _6e_run([0.001, 0.0085])
    assert "in 1 of 1 pairs: the budget's model is the more accurate in 1, the less accurate in 0" in text
    text = _6e_run([-0.009, -0.001])
    assert "in 1 of 1 pairs: the budget's model is the more accurate in 0, the less accurate in 1" in text
