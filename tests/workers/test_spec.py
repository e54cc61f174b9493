"""JobSpec validation: non-finite and absurd numbers are refused with a message naming the field; new defaults."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from workers.spec import MAX_THRESHOLD, UNION_TAGS, JobSpec, describe_validation_error, field_path, load_spec


def _error(text: str) -> str:
    with pytest.raises(ValidationError) as info:
        load_spec(text)
    return describe_validation_error(info.value)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", '"inf"', '"nan"'])
def test_non_finite_threshold_is_refused_naming_the_field(value):
    message = _error('{"steps": [{"kind": "prune", "method": "threshold", "threshold": %s}]}' % value)
    assert message.startswith("steps.0.threshold:") and "finite" in message


@pytest.mark.parametrize(
    "fragment, field",
    [
        ('"training": {"learning_rate": NaN}', "training.learning_rate"),
        ('"evaluation": {"max_accuracy_drop": NaN}', "evaluation.max_accuracy_drop"),
        ('"evaluation": {"max_loss_increase": Infinity}', "evaluation.max_loss_increase"),
        ('"layers": {"overrides": {"fc": {"threshold": Infinity}}}', "layers.overrides.fc.threshold"),
    ],
)
def test_nan_or_infinity_anywhere_is_refused(fragment, field):
    message = _error('{"steps": [{"kind": "finetune"}], %s}' % fragment)
    assert message.startswith(field + ":") and "finite" in message


def test_non_finite_schedule_end_is_refused():
    spec = {
        "kind": "prune",
        "method": "magnitude",
        "target_sparsity": 0.5,
        "epochs": 2,
        "schedule": {"kind": "polynomial", "unit": "epoch", "begin": 0},
    }
    text = json.dumps({"steps": [spec]}).replace('"begin": 0', '"begin": 0, "end": Infinity')
    assert _error(text).startswith("steps.0.schedule.end:")


def test_absurd_threshold_is_refused():
    message = _error(json.dumps({"steps": [{"kind": "prune", "method": "threshold", "threshold": 1e30}]}))
    assert message.startswith("steps.0.threshold:") and f"{MAX_THRESHOLD:g}" in message
    assert load_spec(json.dumps({"steps": [{"kind": "prune", "method": "threshold", "threshold": 0.05}]}))


def test_tolerances_and_batchnorm_defaults():
    spec = JobSpec.model_validate({"steps": [{"kind": "finetune"}]})
    assert spec.evaluation.max_accuracy_drop == 0.05 and spec.evaluation.max_loss_increase == 0.10
    assert spec.training.batchnorm_reestimation is True and spec.training.batchnorm_samples == 2048
    off = JobSpec.model_validate(
        {"steps": [{"kind": "finetune"}], "training": {"batchnorm_reestimation": False, "batchnorm_samples": 64}}
    )
    assert off.training.batchnorm_reestimation is False and off.training.batchnorm_samples == 64


@pytest.mark.parametrize(
    "section, field, value",
    [
        ("evaluation", "max_accuracy_drop", -0.1),
        ("evaluation", "max_accuracy_drop", 1.5),
        ("evaluation", "max_loss_increase", -1),
        ("training", "batchnorm_samples", 0),
        ("training", "batchnorm_samples", 10**7),
    ],
)
def test_out_of_range_settings_are_named(section, field, value):
    message = _error(json.dumps({"steps": [{"kind": "finetune"}], section: {field: value}}))
    assert message.startswith(f"{section}.{field}:")


def test_union_tags_are_the_kinds_of_steps_and_schedules_and_field_paths_leave_them_out():
    assert UNION_TAGS == {
        "regularize",
        "prune",
        "structured",
        "finetune",
        "sensitivity",
        "budget",
        "polynomial",
        "constant",
        "one_shot",
    }
    assert field_path(("steps", 0, "prune", "schedule", "polynomial", "end")) == "steps.0.schedule.end"
    assert field_path(()) == ""
    spec = {
        "kind": "prune",
        "method": "magnitude",
        "target_sparsity": 0.5,
        "epochs": 2,
        "schedule": {"kind": "polynomial", "unit": "epoch", "begin": 0, "end": "x"},
    }
    with pytest.raises(ValidationError) as info:
        load_spec(json.dumps({"steps": [spec]}))
    assert [field_path(e["loc"]) for e in info.value.errors()] == ["steps.0.schedule.end"]


@pytest.mark.parametrize(
    "steps, starts, words",
    [
        ([{"kind": "sensitivity", "levels": [0.5, 0.5]}], "steps.0.levels:", "duplicates"),
        ([{"kind": "sensitivity", "levels": [1.0]}], "steps.0.levels.0:", "less than 1"),
        ([{"kind": "sensitivity", "levels": []}], "steps.0.levels:", "at least 1"),
        ([{"kind": "sensitivity", "method": "n_m"}], "steps.0.method:", "magnitude"),
        ([{"kind": "sensitivity", "samples": 5}], "steps.0.samples:", "greater than or equal to 10"),
        ([{"kind": "budget"}], "steps.0.max_drop:", "required"),
        ([{"kind": "budget", "max_drop": -0.01}], "steps.0.max_drop:", "greater than or equal to 0"),
        ([{"kind": "budget", "max_drop": 0.01, "objective": "flops"}], "steps.0.objective:", "nonzero_params"),
        ([{"kind": "budget", "max_drop": 0.01, "objective": "latency"}], "steps.0.objective:", "structured"),
        ([{"kind": "budget", "max_drop": 0.01, "max_trials": 0}], "steps.0.max_trials:", "greater than"),
        ([{"kind": "budget", "max_drop": 0.01, "epochs": -1}], "steps.0.epochs:", "greater than"),
        ([{"kind": "budget", "max_drop": 0.01, "trials": 3}], "steps.0.trials:", "not permitted"),
        (
            [{"kind": "prune", "target_sparsity": 0.5, "scope": "layer", "allocation": "sensitivity"}],
            "steps.0.allocation:",
            "scope 'global'",
        ),
        (
            [{"kind": "prune", "method": "n_m", "n": 2, "m": 4, "allocation": "sensitivity"}],
            "steps.0.allocation:",
            "method 'magnitude'",
        ),
        ([{"kind": "structured", "keep_ratio": 0.5, "allocation": "greedy"}], "steps.0.allocation:", "sensitivity"),
        ([{"kind": "structured", "keep_ratio": 0.5, "removal": "gradual"}], "steps.0.removal:", "epochs >= 1"),
        ([{"kind": "structured", "keep_ratio": 0.5, "removal": "slow"}], "steps.0.removal:", "one_shot"),
        ([{"kind": "budget", "max_drop": 0.01}, {"kind": "budget", "max_drop": 0.02}], "steps:", "one budget"),
        ([{"kind": "sensitivity"}, {"kind": "sensitivity"}], "steps:", "one sensitivity"),
    ],
)
def test_sensitivity_budget_and_allocation_errors_name_the_field(steps, starts, words):
    message = _error(json.dumps({"steps": steps}))
    assert message.startswith(starts) and words in message, message


def test_sensitivity_and_budget_defaults_and_what_they_need():
    spec = JobSpec.model_validate({"steps": [{"kind": "sensitivity"}, {"kind": "budget", "max_drop": 0.01}]})
    sens, budget = spec.steps
    assert sens.effective_levels == [0.3, 0.5, 0.7, 0.8, 0.9, 0.95] and sens.metric is None
    structured = JobSpec.model_validate({"steps": [{"kind": "sensitivity", "method": "structured"}]}).steps[0]
    assert structured.effective_levels == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.5, 0.7])  # keep ratios
    assert (budget.objective, budget.method, budget.epochs, budget.max_trials) == ("nonzero_params", "magnitude", 2, 6)
    assert spec.trains  # both need data, even without epochs
    assert spec.total_epochs == 12  # the most a budget step trains: epochs x max_trials
    assert JobSpec.model_validate(
        {"steps": [{"kind": "prune", "target_sparsity": 0.5, "allocation": "sensitivity"}]}
    ).trains
    step = {"kind": "structured", "keep_ratio": 0.5}
    removal = [
        JobSpec.model_validate({"steps": [{**step, **extra}]}).steps[0].removal
        for extra in ({}, {"epochs": 2}, {"epochs": 2, "removal": "gradual"}, {"removal": "one_shot"})
    ]
    assert removal == [None, None, "gradual", "one_shot"]  # None: chosen per model when the job runs
    levels = JobSpec.model_validate({"steps": [{"kind": "sensitivity", "levels": [0.9, 0.2]}]}).steps[0].levels
    assert levels == [0.2, 0.9]
