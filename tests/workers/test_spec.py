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
    spec = {"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 2,
            "schedule": {"kind": "polynomial", "unit": "epoch", "begin": 0}}
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
    off = JobSpec.model_validate({"steps": [{"kind": "finetune"}],
                                  "training": {"batchnorm_reestimation": False, "batchnorm_samples": 64}})
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
    assert UNION_TAGS == {"regularize", "prune", "structured", "finetune", "polynomial", "constant", "one_shot"}
    assert field_path(("steps", 0, "prune", "schedule", "polynomial", "end")) == "steps.0.schedule.end"
    assert field_path(()) == ""
    spec = {"kind": "prune", "method": "magnitude", "target_sparsity": 0.5, "epochs": 2,
            "schedule": {"kind": "polynomial", "unit": "epoch", "begin": 0, "end": "x"}}
    with pytest.raises(ValidationError) as info:
        load_spec(json.dumps({"steps": [spec]}))
    assert [field_path(e["loc"]) for e in info.value.errors()] == ["steps.0.schedule.end"]
