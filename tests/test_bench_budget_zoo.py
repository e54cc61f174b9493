"""Parts 6b and 6h's tables (bench/report_budget.py): the same renderer for a structured and a magnitude budget on
the zoo's MobileNetV2. Plain values, no training."""

from __future__ import annotations

from bench.budget import SPLIT
from bench.budget_zoo import chain_epochs
from bench.report_budget import budget_zoo_tables


def _trial(level, metric, *, start, kept="fine_tuned", params=400_000, nonzero=300_000, within=True) -> dict:
    return {
        "level": level,
        "metric": metric,
        "drop": 0.8 - metric,
        "macs": int(0.7 * 1_196_592) if within else 100_000,
        "macs_ratio": 0.7,
        "params": params,
        "nonzero_params": nonzero,
        "kept": kept,
        "within_budget": within,
        "start": start,
        "epochs": 2,
    }


def _result(method: str, goal_macs: float | None) -> dict:
    trials = [
        _trial(0.5, 0.85, start=None, kept="pruned", params=423_018, nonzero=211_509),
        _trial(0.75, 0.83, start=0, params=423_018, nonzero=105_755),
        _trial(0.9, 0.5, start=1, within=False, params=423_018, nonzero=42_302),
    ]
    run = {
        "seed": 0,
        "budget": {"baseline": 0.8, "met": True, "chosen": 1, "trials": trials},
        "accuracy": 0.83,
        "drop_points": -3.0,
        "macs_before": 1_196_592,
        "macs_after": 837_614,
        "macs_ratio": 0.7,
        "params_before": 423_018,
        "params_after": 300_000,
        "nonzero_before": 423_018,
        "nonzero_after": 105_755,
        "epochs_spent": 6,
        "chain_epochs": chain_epochs(trials, 1),
        "input_accuracy": {"val": 0.8, "test": 0.81, "all": 0.805},
        "reference": {
            "accuracy": 0.9,
            "split_accuracy": {"val": 0.89, "test": 0.91},
            "reestimated": {"accuracy": 0.92, "split_accuracy": {"val": 0.915, "test": 0.925}},
        },
        "wall_time_s": 600.0,
        "goal_met": None if goal_macs is None else False,
    }
    return {
        "date": "2026-12-05T00:00:00+00:00",
        "commit": "abc1234",
        "command": "python -m bench budget_zoo",
        "config": {
            "step": {"kind": "budget", "method": method, "max_drop": 0.02},
            "batch_size": 128,
            "seeds": [0],
            "model": "mobilenet_v2",
            "data": {"pretrain_epochs": 5, "n_train": 8000},
            "goal_macs": goal_macs,
            "split": SPLIT,
        },
        "pretrained": {"accuracy": 0.8, "macs": 1_196_592},
        "runs": [run],
        "goal_met": None if goal_macs is None else False,
        "load": {"cores": 2, "load1_min": 1.0, "load1_max": 2.0, "load1_median": 1.5, "samples": 3},
    }


def test_a_magnitude_run_shows_sparsity_and_non_zero_weights_and_no_macs_goal():
    text = budget_zoo_tables(_result("magnitude", None))
    assert "| sparsity |" in text and "| non-zero |" in text and "MACs (zero-skipping)" in text
    assert "423,018 → 105,755" in text  # the run's non-zero parameters, not its (unchanged) total
    assert "1,196,592 → 837,614 (0.700×)" in text  # the chosen trial's zero-skipping MACs
    assert "| 211,509 |" in text and "| pruned |" in text and "| fine-tuned |" in text
    assert "goal (issue 12)" not in text
    assert chain_epochs(_result("magnitude", None)["runs"][0]["budget"]["trials"], 1) == 4


def test_a_structured_run_keeps_its_keep_ratios_params_and_goal():
    text = budget_zoo_tables(_result("structured", 0.6))
    assert "| keep ratio |" in text and "| params |" in text and "423,018 → 300,000" in text
    assert "MACs ≤ 0.6× within 2 points (structured, on test)" in text and "**missed**" in text


def test_the_run_table_shows_the_jobs_val_accuracy_and_judges_on_test():
    text = budget_zoo_tables(_result("structured", 0.6))
    assert "accuracy 0.8000 on val, 0.8100 on test" in text and f"Held-out data: {SPLIT}." in text
    assert "| val acc. (the job's) |" in text
    assert "| input acc. (job, val) | input acc. (test) | returned acc. (bench, test) |" in text
    assert "| 0.8000 | 0.8100 | 0.8300 |" in text  # the job's baseline, the input and the returned model on test
    assert "4 epochs: 0.9100 / 0.9250" in text  # the unpruned reference on test, plain / BatchNorm re-estimated
    assert "MACs ≤ 0.6× within 2 points (structured, on test)" in text
