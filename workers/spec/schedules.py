"""Pruning schedule specs: how sparsity grows during a prune step's epochs (the `ScheduleSpec` union)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from workers.spec.base import _Strict


class _ScheduleWindow(_Strict):
    begin: float = Field(
        0.0, ge=0.0, description="When pruning starts: a fraction of the step's training (unit=fraction) or an epoch."
    )
    end: float = Field(
        1.0, ge=0.0, description="When the final sparsity is reached: a fraction of the step's training or an epoch."
    )
    unit: Literal["fraction", "epoch"] = Field(
        "fraction", description="How `begin` and `end` are counted: fractions of training (0..1) or epochs."
    )
    frequency: int = Field(10, ge=1, le=100_000, description="Masks are recomputed every `frequency` optimizer steps.")

    @model_validator(mode="after")
    def _window(self):
        if self.unit == "fraction" and (self.begin > 1.0 or self.end > 1.0):
            raise ValueError("schedule.begin and schedule.end must be within 0..1 when unit is 'fraction'")
        if self.end < self.begin:
            raise ValueError(f"schedule.end ({self.end}) must be >= schedule.begin ({self.begin})")
        return self


class PolynomialScheduleSpec(_ScheduleWindow):
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power."""

    kind: Literal["polynomial"] = "polynomial"
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="Sparsity when pruning begins, 0 <= s_i < 1.")
    power: float = Field(3.0, gt=0.0, le=10.0, description="Exponent of the decay; 3 as in Zhu & Gupta.")
    end: float = Field(
        0.75, ge=0.0, description="When the final sparsity is reached (fraction of training by default)."
    )


class ConstantScheduleSpec(_ScheduleWindow):
    """Hold the target sparsity from `begin` to `end`, recomputing masks every `frequency` steps."""

    kind: Literal["constant"] = "constant"


class OneShotScheduleSpec(_Strict):
    """Prune once to the target before training starts; zeros are then held during fine-tuning."""

    kind: Literal["one_shot"] = "one_shot"


ScheduleSpec = Annotated[
    Union[PolynomialScheduleSpec, ConstantScheduleSpec, OneShotScheduleSpec], Field(discriminator="kind")
]
