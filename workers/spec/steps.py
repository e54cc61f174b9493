"""Step specs: regularize, prune, structured, finetune, sensitivity and budget (the `Step` union)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from workers.spec.base import MAX_THRESHOLD, _Strict
from workers.spec.schedules import ConstantScheduleSpec, OneShotScheduleSpec, PolynomialScheduleSpec, ScheduleSpec


class RegularizeStep(_Strict):
    """Fine-tune with penalties added to the loss: l1*sum|w| + l2*sum w^2 + group_lasso*sum_units ||w_unit||_2."""

    kind: Literal["regularize"] = "regularize"
    l1: float = Field(0.0, ge=0.0, le=1.0, description="L1 penalty weight (lambda) on prunable kernels.")
    l2: float = Field(0.0, ge=0.0, le=1.0, description="L2 penalty weight (lambda) on prunable kernels.")
    group_lasso: float = Field(
        0.0, ge=0.0, le=1.0, description="Group-lasso weight: sum of the L2 norms of each output unit's weights."
    )
    epochs: int = Field(1, ge=1, le=1000, description="Fine-tuning epochs with the penalty.")

    @model_validator(mode="after")
    def _some_penalty(self):
        if self.l1 == 0 and self.l2 == 0 and self.group_lasso == 0:
            raise ValueError("a regularize step needs at least one of l1, l2, group_lasso > 0")
        return self


class PruneStep(_Strict):
    """Unstructured pruning: zero individual weights (masks are held through later training)."""

    kind: Literal["prune"] = "prune"
    method: Literal["magnitude", "threshold", "n_m", "block"] = Field(
        "magnitude",
        description="magnitude: smallest |w| to target_sparsity; threshold: |w| < threshold; "
        "n_m: keep n largest of every m along the input axis; block: blocks of block_shape ranked by mean |w|.",
    )
    target_sparsity: float | None = Field(
        None, ge=0.0, lt=1.0, description="Fraction of weights set to zero (magnitude, block), 0 <= s < 1."
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=MAX_THRESHOLD,
        description="Weights with |w| < threshold are zeroed (method=threshold), "
        f"0 <= t <= {MAX_THRESHOLD:g}; a threshold at or above the largest |w| of the selected kernels is refused.",
    )
    n: int | None = Field(None, ge=1, le=64, description="Weights kept per group of m (method=n_m).")
    m: int | None = Field(None, ge=2, le=64, description="Group size (method=n_m).")
    block_shape: tuple[int, int] | None = Field(
        None, description="Block (rows, cols) of the 2-D kernel view (method=block)."
    )
    scope: Literal["layer", "global"] = Field(
        "global",
        description="global (default): one allocation across layers (Erdos-Renyi-kernel densities in models with "
        "normalization layers, one |w| ranking otherwise; tiny layers and a small output layer are spared); layer: "
        "every layer reaches the target.",
    )
    schedule: ScheduleSpec | None = Field(
        None,
        description="How sparsity grows during the step's epochs. Default: polynomial when epochs > 0, else one-shot.",
    )
    epochs: int = Field(0, ge=0, le=1000, description="Fine-tuning epochs during/after pruning; zeros are held.")
    allocation: Literal["ranking", "sensitivity"] = Field(
        "ranking",
        description="How global scope splits target_sparsity across layers. ranking (default): one "
        "allocation of the weights (ERK or a |w| ranking); sensitivity: per-layer targets from a sensitivity "
        "analysis (a prior sensitivity step of the job, else one is run first) that meet the overall target exactly "
        "with the smallest predicted drop of the held-out metric. Needs method magnitude, scope global and data.",
    )

    @field_validator("allocation")
    @classmethod
    def _allocation_fits(cls, v, info: ValidationInfo):
        if v == "sensitivity" and (info.data.get("method") != "magnitude" or info.data.get("scope") != "global"):
            raise ValueError("allocation 'sensitivity' needs method 'magnitude' and scope 'global'")
        return v

    @model_validator(mode="after")
    def _method_fields(self):
        m = self.method
        if m in ("magnitude", "block") and self.target_sparsity is None:
            raise ValueError(f"method '{m}' needs target_sparsity (0 <= s < 1)")
        if m == "threshold":
            if self.threshold is None:
                raise ValueError("method 'threshold' needs threshold (>= 0)")
            if self.target_sparsity is not None:
                raise ValueError("method 'threshold' takes threshold, not target_sparsity")
            if self.schedule is not None and self.schedule.kind != "one_shot":
                raise ValueError("method 'threshold' prunes once; schedule must be omitted or one_shot")
        if m == "n_m":
            if self.n is None or self.m is None:
                raise ValueError("method 'n_m' needs n and m (e.g. n=2, m=4)")
            if self.n >= self.m:
                raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
            if self.schedule is not None and self.schedule.kind != "one_shot":
                raise ValueError("method 'n_m' prunes once; schedule must be omitted or one_shot")
        if m == "block":
            if self.block_shape is None:
                raise ValueError("method 'block' needs block_shape, e.g. [1, 4]")
            if min(self.block_shape) < 1 or max(self.block_shape) > 64:
                raise ValueError("block_shape entries must be within 1..64")
        if m != "block" and self.block_shape is not None:
            raise ValueError("block_shape is only used by method 'block'")
        if m != "n_m" and (self.n is not None or self.m is not None):
            raise ValueError("n and m are only used by method 'n_m'")
        if self.schedule is not None and self.schedule.kind != "one_shot" and self.epochs == 0:
            raise ValueError(f"a {self.schedule.kind} schedule needs epochs >= 1")
        if (
            self.schedule is not None
            and self.schedule.kind != "one_shot"
            and self.schedule.unit == "epoch"
            and self.schedule.end > self.epochs
        ):
            raise ValueError(
                f"schedule.end ({self.schedule.end} epochs) is after the step's last epoch ({self.epochs})"
            )
        return self

    @property
    def effective_schedule(self) -> PolynomialScheduleSpec | ConstantScheduleSpec | OneShotScheduleSpec:
        if self.schedule is not None:
            return self.schedule
        if self.method == "magnitude" and self.epochs > 0:
            return PolynomialScheduleSpec()
        return OneShotScheduleSpec()


class StructuredStep(_Strict):
    """Remove whole Dense units / Conv filters ranked by importance and rebuild a smaller model."""

    kind: Literal["structured"] = "structured"
    criterion: Literal["l1", "l2", "mean_activation", "apoz"] = Field(
        "l1", description="Importance of a unit: L1/L2 norm of its weights, mean |activation| or (1 - APoZ) on data."
    )
    keep_ratio: float = Field(..., gt=0.0, le=1.0, description="Fraction of units kept, 0 < p <= 1.")
    scope: Literal["layer", "global"] = Field(
        "global",
        description="global (default): one ranking across layers of unit scores normalized per group, keep_ratio of "
        "all units kept; layer: each layer keeps keep_ratio of its units.",
    )
    round_to: int = Field(1, ge=1, le=256, description="Kept counts are rounded up to a multiple of this (e.g. 8).")
    calibration_samples: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Training samples that rank units for data-driven criteria "
        "(mean_activation, apoz) and, with removal one_shot, for every criterion, measure the removed channels' mean "
        "contribution, folded back into the next layer's bias or BatchNorm.",
    )
    epochs: int = Field(0, ge=0, le=1000, description="Fine-tuning epochs of the step.")
    removal: Literal["gradual", "one_shot"] | None = Field(
        None,
        description="How units leave. gradual: the model keeps its shape while it fine-tunes, units are re-ranked "
        "on the current weights and masked out on a linear ramp that reaches keep_ratio at 75% of the step's "
        "optimizer steps, then one surgery removes exactly those units (needs epochs >= 1); one_shot: one cut, then "
        "epochs of fine-tuning of the rebuilt model. Default: gradual when the step fine-tunes and units to remove "
        "pass through a squeeze-excite gate (EfficientNet-like models, where it measured far better), one_shot "
        "otherwise; the manifest's step record says which ran.",
    )
    allocation: Literal["ranking", "sensitivity"] = Field(
        "ranking",
        description="ranking (default): units kept per `scope`; sensitivity: per-group keep ratios from "
        "a structured sensitivity analysis (a prior sensitivity step with method structured, else one is run "
        "first) that keep keep_ratio of the units overall (up to round_to) with the smallest predicted drop; "
        "`scope` is then not used. Needs data.",
    )

    @field_validator("removal")
    @classmethod
    def _removal_fits(cls, v, info: ValidationInfo):
        if v == "gradual" and info.data.get("epochs") == 0:
            raise ValueError("removal 'gradual' removes units while the step fine-tunes: it needs epochs >= 1")
        return v


class FinetuneStep(_Strict):
    """Plain fine-tuning; any unstructured zeros from earlier steps are held."""

    kind: Literal["finetune"] = "finetune"
    epochs: int = Field(1, ge=1, le=1000, description="Fine-tuning epochs.")


DEFAULT_SENSITIVITY_LEVELS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)  # sparsities; structured: keep ratios 1 - level


def default_sensitivity_levels(method: str) -> list[float]:
    """A sensitivity sweep's default levels: sparsities (magnitude) or the matching keep ratios (structured)."""
    if method == "structured":
        return sorted(round(1.0 - x, 6) for x in DEFAULT_SENSITIVITY_LEVELS)
    return list(DEFAULT_SENSITIVITY_LEVELS)


class SensitivityStep(_Strict):
    """Prune each layer (or structured group) alone at each level, without fine-tuning, and measure the held-out
    metric: artifacts sensitivity.json and sensitivity.csv. The model itself is left unchanged."""

    kind: Literal["sensitivity"] = "sensitivity"
    method: Literal["magnitude", "structured"] = Field(
        "magnitude",
        description="magnitude: each prunable layer's smallest |w| zeroed to each level (a sparsity); "
        "structured: each group of coupled layers keeps each level (a keep ratio) of its units.",
    )
    levels: list[Annotated[float, Field(gt=0.0, lt=1.0)]] | None = Field(
        None,
        min_length=1,
        max_length=12,
        description="Sparsities (magnitude) or keep ratios (structured), each "
        "within (0, 1). Default: 0.3, 0.5, 0.7, 0.8, 0.9, 0.95 (structured: keep 0.7, 0.5, 0.3, 0.2, 0.1, 0.05).",
    )
    criterion: Literal["l1", "l2"] = Field("l1", description="structured: how units are ranked within a group.")
    metric: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Held-out metric measured (a name the model reports, e.g. "
        "'accuracy' or 'loss'). Default: the first accuracy-like metric, else the loss.",
    )
    samples: int = Field(
        2000,
        ge=10,
        le=100_000,
        description="Held-out samples evaluated per measurement (a seeded subset when there are more).",
    )
    batchnorm_samples: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Training samples that re-estimate "
        "BatchNorm statistics before each measurement (models with BatchNorm only).",
    )

    @field_validator("levels")
    @classmethod
    def _unique_levels(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError("levels has duplicates")
        return None if v is None else sorted(v)

    @property
    def effective_levels(self) -> list[float]:
        return list(self.levels) if self.levels is not None else default_sensitivity_levels(self.method)


class BudgetStep(_Strict):
    """Find the most compressed model whose held-out metric stays within max_drop of the original: sensitivity-based
    allocation per layer, a search over the global level (each trial fine-tuned `epochs`, warm-started from the best
    model so far; a near miss fine-tuned once more at its level), the best trial within budget returned. Nothing
    within budget: the closest trial, met = false."""

    kind: Literal["budget"] = "budget"
    metric: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Held-out metric the budget is on (e.g. 'accuracy', "
        "'loss'). Default: the first accuracy-like metric, else the loss.",
    )
    max_drop: float = Field(
        ...,
        ge=0.0,
        le=10.0,
        description="Tolerated drop: absolute for accuracy-like metrics (0.01 = 1 point), "
        "relative for losses and errors (0.05 = 5% higher).",
    )
    method: Literal["magnitude", "structured"] = Field(
        "magnitude",
        description="magnitude: unstructured zeros (level = sparsity of the prunable weights); "
        "structured: whole units removed and the model rebuilt (level = keep ratio of the units).",
    )
    objective: Literal["nonzero_params", "size", "macs", "latency"] = Field(
        "nonzero_params",
        description="What 'most compressed' means when choosing among trials within budget: "
        "non-zero parameters, gzipped .keras bytes, MACs (zero-skipping for magnitude) or batch-1 CPU latency.",
    )
    epochs: int = Field(2, ge=0, le=100, description="Fine-tuning epochs of each trial (zeros held).")
    max_trials: int = Field(6, ge=1, le=30, description="Trials (levels tried) at most.")
    criterion: Literal["l1", "l2"] = Field("l1", description="structured: how units are ranked within a group.")
    round_to: int = Field(1, ge=1, le=256, description="structured: kept counts rounded up to a multiple of this.")

    @field_validator("objective")
    @classmethod
    def _objective_fits(cls, v, info: ValidationInfo):
        if v == "latency" and info.data.get("method") == "magnitude":
            raise ValueError(
                "objective 'latency' needs method 'structured': unstructured zeros do not make dense kernels faster"
            )
        return v


Step = Annotated[
    Union[RegularizeStep, PruneStep, StructuredStep, FinetuneStep, SensitivityStep, BudgetStep],
    Field(discriminator="kind"),
]
