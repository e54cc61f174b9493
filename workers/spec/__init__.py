"""JobSpec: the one contract shared by the HTTP API, the CLI and the workers.

A job is an ordered list of steps (regularize, prune, structured, finetune, sensitivity, budget) plus shared training
settings, layer selection and export options. Every field is validated here, with messages that
name the field and the allowed range, so bad input is refused before any work starts.

The models live in sections: `base` (the strict base model, shared constants), `schedules` (pruning schedules),
`steps` (the step kinds) and `settings` (training, layers, export, evaluation); this module assembles `JobSpec` and
re-exports every public name, so callers import from `workers.spec` alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import get_args

from pydantic import Field, field_validator

from workers.engine.names import ALLOWED_LOSSES, ALLOWED_METRICS
from workers.spec.base import MAX_THRESHOLD, _Strict
from workers.spec.schedules import (
    ConstantScheduleSpec,
    OneShotScheduleSpec,
    PolynomialScheduleSpec,
    ScheduleSpec,
)
from workers.spec.settings import EvaluationSpec, ExportSpec, LayerOverride, LayerSelection, TrainingSpec
from workers.spec.steps import (
    DEFAULT_SENSITIVITY_LEVELS,
    BudgetStep,
    FinetuneStep,
    PruneStep,
    RegularizeStep,
    SensitivityStep,
    Step,
    StructuredStep,
    default_sensitivity_levels,
)

__all__ = [
    "ALLOWED_LOSSES",
    "ALLOWED_METRICS",
    "DEFAULT_SENSITIVITY_LEVELS",
    "MAX_THRESHOLD",
    "UNION_TAGS",
    "BudgetStep",
    "ConstantScheduleSpec",
    "EvaluationSpec",
    "ExportSpec",
    "FinetuneStep",
    "JobSpec",
    "LayerOverride",
    "LayerSelection",
    "OneShotScheduleSpec",
    "PolynomialScheduleSpec",
    "PruneStep",
    "RegularizeStep",
    "ScheduleSpec",
    "SensitivityStep",
    "Step",
    "StructuredStep",
    "TrainingSpec",
    "default_sensitivity_levels",
    "describe_validation_error",
    "field_path",
    "json_schema",
    "load_spec",
    "schema_text",
]


class JobSpec(_Strict):
    """One compression job: an ordered pipeline of steps and the settings they share."""

    steps: list[Step] = Field(..., min_length=1, max_length=20, description="Ordered steps, run one after another.")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    layers: LayerSelection = Field(default_factory=LayerSelection)
    export: ExportSpec = Field(default_factory=ExportSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("steps")
    @classmethod
    def _one_search(cls, steps):
        for kind in ("sensitivity", "budget"):
            if sum(s.kind == kind for s in steps) > 1:
                raise ValueError(f"at most one {kind} step per job")
        return steps

    @property
    def trains(self) -> bool:
        """Whether any step needs training data (every job evaluates, so data is always used when given)."""
        return any(getattr(s, "epochs", 0) > 0 for s in self.steps) or any(
            (s.kind == "structured" and s.criterion in ("mean_activation", "apoz"))
            or s.kind in ("sensitivity", "budget")
            or getattr(s, "allocation", "ranking") == "sensitivity"
            for s in self.steps
        )

    @property
    def total_epochs(self) -> int:
        return sum(getattr(s, "epochs", 0) * getattr(s, "max_trials", 1) for s in self.steps)


def load_spec(text: str | bytes) -> JobSpec:
    """Parse a JSON document into a JobSpec (raises pydantic.ValidationError on bad input)."""
    return JobSpec.model_validate_json(text)


def json_schema() -> dict:
    return JobSpec.model_json_schema()


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True)


def describe_validation_error(exc) -> str:
    """One line naming each offending field of a pydantic ValidationError: 'steps.0.keep_ratio: ...; ...'."""
    return "; ".join(f"{field_path(err.get('loc', ())) or 'spec'}: {err.get('msg', 'invalid')}" for err in exc.errors())


def _kinds(union) -> frozenset[str]:
    """The `kind` values of a discriminated union of models."""
    return frozenset(member.model_fields["kind"].default for member in get_args(get_args(union)[0]))


# the tags pydantic puts into an error's location for the member of a discriminated union it validated against
UNION_TAGS = _kinds(Step) | _kinds(ScheduleSpec)


def field_path(loc: Iterable) -> str:
    """A pydantic error location as the field a person writes: 'steps.0.keep_ratio' (no union tags)."""
    return ".".join(str(p) for p in loc if str(p) not in UNION_TAGS)
