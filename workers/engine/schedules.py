"""Pruning schedules: when masks are recomputed and to which sparsity.

Public API::

    PolynomialDecay(initial_sparsity, final_sparsity, begin_step, end_step, frequency, power=3)
    ConstantSparsity(target, begin_step, end_step, frequency)
    OneShot(target)
    ScheduleSettings(kind, begin=0, end=1, unit="fraction", frequency=10, initial_sparsity=0, power=3)
    make_schedule(settings: ScheduleSettings, target: float, steps_per_epoch: int, epochs: int) -> Schedule

A schedule is a small frozen value, validated in its constructor. `schedule(step)` returns the sparsity to
prune to at optimizer step `step`, or None when masks are not updated at that step. `step` counts the
optimizer updates already applied in the training run (0 = before the first batch, `epochs * steps_per_epoch`
= after the last one). Masks are updated at `begin_step`, then every `frequency` steps, and always exactly at
`end_step`, so the final sparsity is reached even when `end_step - begin_step` is not a multiple of
`frequency`. `schedule.update_steps()` lists those steps in order.

The polynomial decay is Zhu & Gupta (2017):

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power,   t clipped to [t0, t1]

Degenerate windows (`make_schedule` only; the dataclasses take their arguments literally). A gradual
schedule whose `frequency` is as large as its window would collapse into a single one-shot update at
`end_step` (this is what tfmot's default frequency of 100 does on small datasets, and it costs 20+ accuracy
points at high sparsity). `make_schedule` therefore treats `settings.frequency` as an upper bound and clamps it
to `window // MIN_RAMP_UPDATES` (at least 1), so that a window of w steps gets min(w, MIN_RAMP_UPDATES) or more
ramp updates after `begin_step`. A window of 0 steps (begin == end) is a single update to the final value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from workers.engine.errors import SpecError

MIN_RAMP_UPDATES = 8


class Schedule(Protocol):
    def __call__(self, step: int) -> float | None: ...

    def update_steps(self) -> list[int]: ...

    @property
    def final_sparsity(self) -> float: ...


def _check_fraction(name: str, value: float, *, upper_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok:
        bound = "0 <= value < 1" if upper_open else "0 <= value <= 1"
        raise SpecError(f"{name} must satisfy {bound}, got {value!r}", field=name)


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)


def _check_window(begin_step: int, end_step: int, frequency: int) -> None:
    _check_int("begin_step", begin_step, 0)
    _check_int("end_step", end_step, 0)
    _check_int("frequency", frequency, 1)
    if end_step < begin_step:
        raise SpecError(f"end_step ({end_step}) must be >= begin_step ({begin_step})", field="end_step")


def _is_update(step: int, begin: int, end: int, frequency: int) -> bool:
    return step == end or (begin <= step < end and (step - begin) % frequency == 0)


def _update_steps(begin: int, end: int, frequency: int) -> list[int]:
    steps = list(range(begin, end, frequency))
    steps.append(end)
    return steps


@dataclass(frozen=True)
class PolynomialDecay:
    """Sparsity rises from `initial_sparsity` at `begin_step` to `final_sparsity` at `end_step`."""

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    frequency: int
    power: float = 3.0

    def __post_init__(self):
        _check_fraction("initial_sparsity", self.initial_sparsity)
        _check_fraction("final_sparsity", self.final_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            raise SpecError(
                f"initial_sparsity ({self.initial_sparsity}) must be <= final_sparsity ({self.final_sparsity})",
                field="initial_sparsity",
            )
        _check_window(self.begin_step, self.end_step, self.frequency)
        if not isinstance(self.power, (int, float)) or isinstance(self.power, bool) or not 0 < self.power <= 10:
            raise SpecError(f"power must satisfy 0 < power <= 10, got {self.power!r}", field="power")

    def value(self, step: int) -> float:
        """The polynomial sparsity at `step`, whether or not masks are updated there."""
        t0, t1 = self.begin_step, self.end_step
        if t1 == t0:
            return self.final_sparsity if step >= t0 else self.initial_sparsity
        progress = min(max((step - t0) / (t1 - t0), 0.0), 1.0)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power

    def __call__(self, step: int) -> float | None:
        if not _is_update(step, self.begin_step, self.end_step, self.frequency):
            return None
        return self.value(step)

    def update_steps(self) -> list[int]:
        return _update_steps(self.begin_step, self.end_step, self.frequency)


@dataclass(frozen=True)
class ConstantSparsity:
    """Masks are recomputed to `target` from `begin_step` to `end_step`, every `frequency` steps."""

    target: float
    begin_step: int
    end_step: int
    frequency: int

    def __post_init__(self):
        _check_fraction("target", self.target)
        _check_window(self.begin_step, self.end_step, self.frequency)

    @property
    def final_sparsity(self) -> float:
        return self.target

    def __call__(self, step: int) -> float | None:
        return self.target if _is_update(step, self.begin_step, self.end_step, self.frequency) else None

    def update_steps(self) -> list[int]:
        return _update_steps(self.begin_step, self.end_step, self.frequency)


@dataclass(frozen=True)
class OneShot:
    """Prune once to `target` before the first optimizer step."""

    target: float

    def __post_init__(self):
        _check_fraction("target", self.target)

    @property
    def final_sparsity(self) -> float:
        return self.target

    def __call__(self, step: int) -> float | None:
        return self.target if step == 0 else None

    def update_steps(self) -> list[int]:
        return [0]


# --------------------------------------------------------------------------- from training-relative settings

UNITS = ("fraction", "epoch")


@dataclass(frozen=True)
class ScheduleSettings:
    """A schedule as a job states it, before the step count is known: its kind ("polynomial", "constant",
    "one_shot"), the window `begin`..`end` in fractions of the step's training or in epochs (`unit`), the update
    `frequency` (an upper bound, see the module docstring) and, for "polynomial", `initial_sparsity` and `power`.
    A one-shot schedule reads none of the other fields. `config.schedule_settings` builds it from the job spec."""

    kind: str
    begin: float = 0.0
    end: float = 1.0
    unit: str = "fraction"
    frequency: int = 10
    initial_sparsity: float = 0.0
    power: float = 3.0

    def __post_init__(self):
        if self.kind not in SCHEDULE_BUILDERS:
            raise SpecError(
                f"unknown schedule.kind '{self.kind}'; allowed: {', '.join(SCHEDULE_BUILDERS)}", field="schedule.kind"
            )
        if self.kind == "one_shot":
            return
        if self.unit not in UNITS:
            raise SpecError(
                f"schedule.unit must be one of {', '.join(UNITS)}, got {self.unit!r}", field="schedule.unit"
            )
        upper = 1.0 if self.unit == "fraction" else math.inf
        for name in ("begin", "end"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= upper:
                bound = "0 <= value <= 1 (unit fraction)" if self.unit == "fraction" else "value >= 0"
                raise SpecError(f"schedule.{name} must satisfy {bound}, got {value!r}", field=f"schedule.{name}")
        if self.end < self.begin:
            raise SpecError(f"schedule.end ({self.end}) must be >= schedule.begin ({self.begin})", field="schedule.end")
        _check_int("schedule.frequency", self.frequency, 1)
        _check_fraction("schedule.initial_sparsity", self.initial_sparsity)


def to_steps(value: float, unit: str, steps_per_epoch: int, epochs: int) -> int:
    """A schedule boundary (a fraction of training or an epoch count) as an optimizer step in 0..total,
    rounded half up."""
    total = steps_per_epoch * epochs
    step = value * total if unit == "fraction" else value * steps_per_epoch
    return min(max(int(math.floor(step + 0.5)), 0), total)


def ramp_frequency(frequency: int, window: int) -> int:
    """`frequency` clamped so that a window of `window` steps keeps >= min(window, MIN_RAMP_UPDATES) updates."""
    return max(1, min(frequency, window // MIN_RAMP_UPDATES))


def _build_polynomial(s: ScheduleSettings, target: float, steps_per_epoch: int, epochs: int):
    begin, end = (to_steps(v, s.unit, steps_per_epoch, epochs) for v in (s.begin, s.end))
    return PolynomialDecay(
        initial_sparsity=min(s.initial_sparsity, target),
        final_sparsity=target,
        begin_step=begin,
        end_step=end,
        frequency=ramp_frequency(s.frequency, end - begin),
        power=s.power,
    )


def _build_constant(s: ScheduleSettings, target: float, steps_per_epoch: int, epochs: int):
    begin, end = (to_steps(v, s.unit, steps_per_epoch, epochs) for v in (s.begin, s.end))
    return ConstantSparsity(
        target=target, begin_step=begin, end_step=end, frequency=ramp_frequency(s.frequency, end - begin)
    )


def _build_one_shot(s: ScheduleSettings, target: float, steps_per_epoch: int, epochs: int):
    return OneShot(target=target)


SCHEDULE_BUILDERS = {
    "polynomial": _build_polynomial,
    "constant": _build_constant,
    "one_shot": _build_one_shot,
}
ONE_SHOT = ScheduleSettings("one_shot")


def make_schedule(settings: ScheduleSettings, target: float, steps_per_epoch: int, epochs: int):
    """Turn schedule settings (begin/end in fractions of training or in epochs) into a step-based schedule.

    `initial_sparsity` is capped at `target` (a layer given a lower target than the settings' initial sparsity
    ramps from its own target). See the module docstring for the frequency clamp.
    """
    _check_int("steps_per_epoch", steps_per_epoch, 1)
    _check_int("epochs", epochs, 0)
    _check_fraction("target_sparsity", target)
    if settings.kind != "one_shot" and epochs < 1:
        raise SpecError(f"a {settings.kind} schedule needs epochs >= 1, got {epochs}", field="epochs")
    return SCHEDULE_BUILDERS[settings.kind](settings, target, steps_per_epoch, epochs)


__all__ = [
    "ConstantSparsity",
    "MIN_RAMP_UPDATES",
    "ONE_SHOT",
    "OneShot",
    "PolynomialDecay",
    "SCHEDULE_BUILDERS",
    "Schedule",
    "ScheduleSettings",
    "make_schedule",
    "ramp_frequency",
    "to_steps",
]
