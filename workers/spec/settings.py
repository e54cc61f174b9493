"""Settings shared by the steps of a job: training, layer selection, export and evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from workers.engine.names import ALLOWED_LOSSES, ALLOWED_METRICS  # the engine's stock names (no Keras import)
from workers.spec.base import MAX_THRESHOLD, _Strict


class TrainingSpec(_Strict):
    batch_size: int = Field(128, ge=1, le=65_536, description="Mini-batch size.")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field(
        "adam", description="Optimizer for every training step."
    )
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Learning rate, 0 < lr <= 10.")
    loss: str | None = Field(
        None, description="Keras loss name; overrides the saved model's compiled loss. Required for uncompiled models."
    )
    metrics: list[str] | None = Field(
        None, description="Keras metric names; override the saved model's compiled metrics."
    )
    validation_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Held-out fraction taken (deterministically) from x_train when no x_val is given.",
    )
    shuffle: bool = True
    batchnorm_reestimation: bool = Field(
        True,
        description="After every training step and every structured rebuild, set each BatchNormalization "
        "layer's moving mean and variance to the population statistics of its input over training samples (one "
        "pass, batch statistics in BN layers, every other layer in inference mode). The step's record gives the "
        "held-out metrics before and after. No effect on models without BatchNormalization.",
    )
    batchnorm_samples: int = Field(
        2048,
        ge=1,
        le=100_000,
        description="Training samples (a seeded random subset) used to re-estimate BatchNormalization statistics.",
    )

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v):
        if v is None:
            return v
        if v not in ALLOWED_LOSSES:
            raise ValueError(f"unknown loss '{v}'; allowed: {', '.join(sorted(ALLOWED_LOSSES))}")
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v):
        if v is None:
            return v
        bad = [m for m in v if m not in ALLOWED_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; allowed: {', '.join(sorted(ALLOWED_METRICS))}")
        if len(v) > 8:
            raise ValueError("at most 8 metrics")
        return v


class LayerOverride(_Strict):
    target_sparsity: float | None = Field(None, ge=0.0, lt=1.0)
    threshold: float | None = Field(None, ge=0.0, le=MAX_THRESHOLD)
    keep_ratio: float | None = Field(None, gt=0.0, le=1.0)
    skip: bool = Field(False, description="Leave this layer untouched.")


class LayerSelection(_Strict):
    include: list[str] | None = Field(
        None, description="Layer names or class names (e.g. 'Dense', 'Conv2D') to prune; default: every prunable layer."
    )
    exclude: list[str] = Field(default_factory=list, description="Layer names or class names never pruned.")
    overrides: dict[str, LayerOverride] = Field(default_factory=dict, description="Per-layer settings by layer name.")


class ExportSpec(_Strict):
    formats: list[Literal["keras", "h5", "tflite", "tflite_int8"]] = Field(
        default_factory=lambda: ["keras"], min_length=1, description="Artifacts written for the compressed model."
    )

    @field_validator("formats")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("export.formats has duplicates")
        return v


class EvaluationSpec(_Strict):
    latency: bool = Field(True, description="Measure compiled CPU latency (batch 1 and 32) before and after.")
    latency_runs: int = Field(
        30,
        ge=3,
        le=1000,
        description="Timed runs per batch size at most (timing stops after 1 s once 8 runs are in; "
        "the manifest records how many were taken); median and spread (p10..p90) are reported. A "
        "speed win needs the medians' ratio >= 1.10 and the interquartile ranges of before and after not to overlap.",
    )
    max_accuracy_drop: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Tolerated drop of held-out accuracy-like metrics (names containing "
        "'accuracy'), in absolute fraction: 0.05 = 5 points. A larger drop makes the summary's win 'none', "
        "within_tolerance false and the first note say so.",
    )
    max_loss_increase: float = Field(
        0.10,
        ge=0.0,
        le=100.0,
        description="Tolerated relative increase of the held-out loss and error metrics "
        "(mse, mae, ...), used when the task has no accuracy-like metric: 0.10 = 10% higher. A larger increase "
        "makes the summary's win 'none', within_tolerance false and the first note say so.",
    )
