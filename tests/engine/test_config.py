"""The spec -> engine converter: every value copied, the spec's defaults kept, and the spec's vocabulary (methods,
criteria, optimizers, schedule kinds, scopes, losses, metrics) the same as what the engine implements."""

from __future__ import annotations

import typing
from dataclasses import fields

import keras
import numpy as np
import pytest

from workers import spec as S
from workers.engine import config, importance, masks, model_io, names, pruning, schedules
from workers.engine.masks import MaskParams
from workers.engine.pruning import Pruner, PruneSettings
from workers.engine.registry import prunable_weights
from workers.engine.schedules import ONE_SHOT, ScheduleSettings
from workers.engine.selection import LayerOverride, LayerSelection
from workers.engine.structured.groups import SCOPES as STRUCTURED_SCOPES


def _literal(model, name: str) -> set:
    return set(typing.get_args(model.model_fields[name].annotation))


# --------------------------------------------------------------------------- one vocabulary


def test_the_spec_offers_exactly_what_the_engine_implements():
    assert _literal(S.PruneStep, "method") == set(masks.MASK_METHODS)
    assert _literal(S.PruneStep, "scope") == set(pruning.SCOPES)
    assert _literal(S.StructuredStep, "criterion") == set(importance.CRITERIA)
    assert _literal(S.StructuredStep, "scope") == set(STRUCTURED_SCOPES)
    assert _literal(S.TrainingSpec, "optimizer") == set(model_io.OPTIMIZERS)
    kinds = {
        typing.get_args(cls.model_fields["kind"].annotation)[0]
        for cls in (S.PolynomialScheduleSpec, S.ConstantScheduleSpec, S.OneShotScheduleSpec)
    }
    assert kinds == set(schedules.SCHEDULE_BUILDERS)
    assert _literal(S.PolynomialScheduleSpec, "unit") == set(schedules.UNITS)


def test_losses_and_metrics_have_one_list():
    assert S.ALLOWED_LOSSES is names.ALLOWED_LOSSES and S.ALLOWED_METRICS is names.ALLOWED_METRICS
    assert set(model_io.LOSSES) == names.ALLOWED_LOSSES


# --------------------------------------------------------------------------- training settings


def test_training_settings_have_the_specs_fields_and_copy_every_value():
    assert {f.name for f in fields(model_io.TrainingSettings)} == set(S.TrainingSpec.model_fields)
    spec = S.TrainingSpec(
        batch_size=32,
        optimizer="sgd",
        learning_rate=0.05,
        loss="mse",
        metrics=["mae", "mse"],
        validation_fraction=0.3,
        shuffle=False,
        batchnorm_reestimation=False,
        batchnorm_samples=64,
    )
    settings = config.training_settings(spec)
    assert settings == model_io.TrainingSettings(
        batch_size=32,
        optimizer="sgd",
        learning_rate=0.05,
        loss="mse",
        metrics=("mae", "mse"),
        validation_fraction=0.3,
        shuffle=False,
        batchnorm_reestimation=False,
        batchnorm_samples=64,
    )
    assert config.training_settings(S.TrainingSpec()) == model_io.TrainingSettings()  # the same defaults


# --------------------------------------------------------------------------- layer selection


def test_layer_selection_copies_include_exclude_and_overrides():
    spec = S.LayerSelection(
        include=["fc", "Conv2D"],
        exclude=["out"],
        overrides={
            "fc": S.LayerOverride(target_sparsity=0.3),
            "conv": S.LayerOverride(keep_ratio=0.5, skip=True),
            "d": S.LayerOverride(threshold=0.02),
        },
    )
    assert config.layer_selection(spec) == LayerSelection(
        include=("fc", "Conv2D"),
        exclude=("out",),
        overrides={
            "fc": LayerOverride(target_sparsity=0.3),
            "conv": LayerOverride(keep_ratio=0.5, skip=True),
            "d": LayerOverride(threshold=0.02),
        },
    )
    everything = config.layer_selection(S.LayerSelection())
    assert everything == LayerSelection() and everything.include is None


# --------------------------------------------------------------------------- schedules and prune steps


@pytest.mark.parametrize(
    "spec, expected",
    [
        (S.PolynomialScheduleSpec(), ScheduleSettings("polynomial", end=0.75)),
        (
            S.PolynomialScheduleSpec(begin=1, end=3, unit="epoch", frequency=7, initial_sparsity=0.2, power=2),
            ScheduleSettings("polynomial", begin=1, end=3, unit="epoch", frequency=7, initial_sparsity=0.2, power=2),
        ),
        (S.ConstantScheduleSpec(begin=0.2, end=0.9, frequency=9), ScheduleSettings("constant", 0.2, 0.9, frequency=9)),
        (S.OneShotScheduleSpec(), ONE_SHOT),
    ],
    ids=["polynomial-default", "polynomial-epochs", "constant", "one_shot"],
)
def test_schedule_settings_copy_the_window_of_every_kind(spec, expected):
    assert config.schedule_settings(spec) == expected


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"target_sparsity": 0.8}, PruneSettings("magnitude", MaskParams(sparsity=0.8))),
        (
            {"target_sparsity": 0.8, "epochs": 2, "scope": "layer"},  # the spec's default gradual schedule
            PruneSettings("magnitude", MaskParams(sparsity=0.8), "layer", ScheduleSettings("polynomial", end=0.75), 2),
        ),
        ({"method": "n_m", "n": 2, "m": 4, "epochs": 1}, PruneSettings("n_m", MaskParams(n=2, m=4), epochs=1)),
        ({"method": "threshold", "threshold": 0.05}, PruneSettings("threshold", MaskParams(threshold=0.05))),
        (
            {
                "method": "block",
                "block_shape": [1, 4],
                "target_sparsity": 0.5,
                "epochs": 3,
                "schedule": {"kind": "constant", "frequency": 5},
            },
            PruneSettings(
                "block",
                MaskParams(sparsity=0.5, block_shape=(1, 4)),
                schedule=ScheduleSettings("constant", frequency=5),
                epochs=3,
            ),
        ),
    ],
    ids=["one-shot", "gradual-default", "n_m", "threshold", "block"],
)
def test_prune_settings_carry_the_steps_parameters_and_effective_schedule(values, expected):
    assert config.prune_settings(S.PruneStep(**values)) == expected


def test_a_spec_step_through_the_converter_prunes_like_the_plain_settings():
    def pruned(step) -> list[np.ndarray]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((12,)), keras.layers.Dense(16, name="fc"), keras.layers.Dense(3, name="out")]
        )
        selection = config.layer_selection(S.LayerSelection(overrides={"out": S.LayerOverride(target_sparsity=0.25)}))
        pruner = Pruner(model, prunable_weights(model, selection), selection.overrides)
        pruner.prune(step)
        pruner.detach()
        return [model.get_layer(n).kernel.numpy() for n in ("fc", "out")]

    via_spec = pruned(config.prune_settings(S.PruneStep(target_sparsity=0.5, scope="layer")))
    plain = pruned(PruneSettings("magnitude", MaskParams(sparsity=0.5), scope="layer"))
    for a, b in zip(via_spec, plain):
        np.testing.assert_array_equal(a, b)
    assert (via_spec[0] == 0).mean() == 0.5 and (via_spec[1] == 0).mean() == 0.25
