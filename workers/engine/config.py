"""From the job spec to the engine's plain values: with the facade (`pipeline`), the only engine module that reads
`workers.spec`.

Public API::

    training_settings(spec.training) -> model_io.TrainingSettings
    layer_selection(spec.layers) -> selection.LayerSelection
    schedule_settings(schedule spec) -> schedules.ScheduleSettings
    prune_settings(prune step) -> pruning.PruneSettings          with the step's effective schedule

Every module below the facade takes these small frozen dataclasses (or plain numbers and strings), so it can be
used and tested without the service's contract or pydantic. The conversions live here rather than inside
`pipeline.py` because more than the job runs them: the preflight (`workers.preflight`) checks a spec's selection and
training settings without running a job, and the benchmarks drive the pruner with spec steps; one converter keeps
them from drifting apart, and the facade stays orchestration. The spec's defaults and cross-field rules (a prune
step's default schedule, for one) are applied by the spec; this module copies values and decides nothing.
"""

from __future__ import annotations

from dataclasses import fields

from workers import spec as job_spec
from workers.engine.masks import MaskParams
from workers.engine.model_io import TrainingSettings
from workers.engine.pruning import PruneSettings
from workers.engine.schedules import ONE_SHOT, ScheduleSettings
from workers.engine.selection import LayerOverride, LayerSelection

__all__ = ["layer_selection", "prune_settings", "schedule_settings", "training_settings"]


def training_settings(training: job_spec.TrainingSpec) -> TrainingSettings:
    """The spec's training settings, field for field (the two classes have the same fields)."""
    return TrainingSettings(**{f.name: getattr(training, f.name) for f in fields(TrainingSettings)})


def layer_selection(layers: job_spec.LayerSelection) -> LayerSelection:
    return LayerSelection(
        include=layers.include,
        exclude=layers.exclude,
        overrides={key: LayerOverride.of(o) for key, o in layers.overrides.items()},
    )


def schedule_settings(
    schedule: job_spec.PolynomialScheduleSpec | job_spec.ConstantScheduleSpec | job_spec.OneShotScheduleSpec,
) -> ScheduleSettings:
    if schedule.kind == "one_shot":
        return ONE_SHOT
    window = {"begin": schedule.begin, "end": schedule.end, "unit": schedule.unit, "frequency": schedule.frequency}
    if schedule.kind == "polynomial":
        window.update(initial_sparsity=schedule.initial_sparsity, power=schedule.power)
    return ScheduleSettings(kind=schedule.kind, **window)


def prune_settings(step: job_spec.PruneStep) -> PruneSettings:
    """The step's method, mask parameters, scope and epochs, and its effective schedule (the spec's default when the
    step sets none)."""
    params = MaskParams(
        sparsity=step.target_sparsity,
        threshold=step.threshold,
        n=step.n,
        m=step.m,
        block_shape=tuple(step.block_shape) if step.block_shape is not None else None,
    )
    return PruneSettings(
        method=step.method,
        params=params,
        scope=step.scope,
        schedule=schedule_settings(step.effective_schedule),
        epochs=step.epochs,
    )
