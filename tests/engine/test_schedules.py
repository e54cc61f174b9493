"""Pruning schedules: the polynomial formula, update steps, exact end values, settings conversion and validation."""

from __future__ import annotations

import pytest

from workers.engine.errors import SpecError
from workers.engine.schedules import (
    MIN_RAMP_UPDATES,
    ConstantSparsity,
    OneShot,
    PolynomialDecay,
    ScheduleSettings,
    make_schedule,
    ramp_frequency,
    to_steps,
)

POLYNOMIAL = ScheduleSettings("polynomial", end=0.75)  # the job spec's default polynomial window


def formula(t, s_i, s_f, t0, t1, power):
    """Zhu & Gupta (2017), t clipped to the window."""
    t = min(max(t, t0), t1)
    return s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power


POLY_CASES = [
    # (initial, final, begin, end, frequency, power)
    (0.0, 0.9, 0, 100, 10, 3),
    (0.5, 0.8, 7, 95, 10, 3),  # window 88: not a multiple of the frequency
    (0.1, 0.75, 3, 40, 7, 1.5),
    (0.0, 0.5, 0, 1, 1, 2),
]


@pytest.mark.parametrize("s_i, s_f, t0, t1, freq, power", POLY_CASES)
def test_polynomial_values_match_the_formula_on_update_steps_and_none_between(s_i, s_f, t0, t1, freq, power):
    sched = PolynomialDecay(s_i, s_f, t0, t1, freq, power)
    expected_updates = set(range(t0, t1, freq)) | {t1}
    for t in range(0, t1 + 30):
        got = sched(t)
        if t in expected_updates:
            assert got == pytest.approx(formula(t, s_i, s_f, t0, t1, power), abs=1e-12), t
        else:
            assert got is None, t
    assert sched.update_steps() == sorted(expected_updates)


@pytest.mark.parametrize("s_i, s_f, t0, t1, freq, power", POLY_CASES)
def test_polynomial_reaches_exactly_the_final_sparsity_at_end_step(s_i, s_f, t0, t1, freq, power):
    sched = PolynomialDecay(s_i, s_f, t0, t1, freq, power)
    assert sched(t1) == s_f
    assert sched(t0) == pytest.approx(s_i if t1 > t0 else s_f)
    values = [sched(t) for t in sched.update_steps()]
    assert values == sorted(values)  # never decreases


def test_polynomial_with_an_empty_window_is_one_update_to_the_final_value():
    sched = PolynomialDecay(0.2, 0.6, 5, 5, 10)
    assert sched.update_steps() == [5]
    assert sched(5) == 0.6 and sched(4) is None and sched(6) is None


def test_constant_sparsity_updates_on_its_steps_and_at_end():
    sched = ConstantSparsity(0.7, 4, 30, 8)
    assert sched.update_steps() == [4, 12, 20, 28, 30]
    for t in range(40):
        assert sched(t) == (0.7 if t in (4, 12, 20, 28, 30) else None)


def test_one_shot_prunes_at_step_zero_only():
    sched = OneShot(0.4)
    assert sched.update_steps() == [0]
    assert [sched(t) for t in range(3)] == [0.4, None, None]


ALL_SCHEDULES = {
    "polynomial": lambda: PolynomialDecay(0.1, 0.8, 2, 50, 6),
    "constant": lambda: ConstantSparsity(0.8, 2, 50, 6),
    "one_shot": lambda: OneShot(0.8),
}


@pytest.mark.parametrize("kind", sorted(ALL_SCHEDULES))
def test_every_schedule_is_frozen_and_its_update_steps_agree_with_call(kind):
    sched = ALL_SCHEDULES[kind]()
    with pytest.raises(AttributeError):
        sched.frequency = 3
    steps = sched.update_steps()
    assert [t for t in range(0, 60) if sched(t) is not None] == steps
    assert sched(steps[-1]) == 0.8 == sched.final_sparsity


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: PolynomialDecay(-0.1, 0.5, 0, 10, 1), "initial_sparsity"),
        (lambda: PolynomialDecay(0.0, 1.0, 0, 10, 1), "final_sparsity"),
        (lambda: PolynomialDecay(0.6, 0.5, 0, 10, 1), "initial_sparsity"),
        (lambda: PolynomialDecay(0.0, 0.5, -1, 10, 1), "begin_step"),
        (lambda: PolynomialDecay(0.0, 0.5, 5, 4, 1), "end_step"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, 0), "frequency"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, 1, power=0), "power"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, 1.5), "frequency"),
        (lambda: ConstantSparsity(1.2, 0, 10, 1), "target"),
        (lambda: ConstantSparsity(0.5, 3, 2, 1), "end_step"),
        (lambda: OneShot(-0.5), "target"),
        (lambda: OneShot(1.0), "target"),
    ],
)
def test_invalid_arguments_are_refused_with_the_field_and_range_named(make, field):
    with pytest.raises(SpecError) as err:
        make()
    assert err.value.field == field
    assert field in err.value.message
    assert any(token in err.value.message for token in ("<=", ">=", "<", ">"))


# --------------------------------------------------------------------------- from schedule settings


def test_fraction_and_epoch_units_convert_to_the_same_steps():
    spe, epochs = 50, 4  # 200 steps
    by_fraction = make_schedule(ScheduleSettings("polynomial", begin=0.25, end=0.75, frequency=5), 0.9, spe, epochs)
    by_epoch = make_schedule(
        ScheduleSettings("polynomial", begin=1, end=3, unit="epoch", frequency=5), 0.9, spe, epochs
    )
    assert (by_fraction.begin_step, by_fraction.end_step) == (50, 150)
    assert by_fraction == by_epoch


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        (0.0, "fraction", 0),
        (1.0, "fraction", 126),
        (0.75, "fraction", 95),
        (0.5, "epoch", 32),
        (2, "epoch", 126),
        (3, "epoch", 126),
    ],
)
def test_to_steps_rounds_half_up_and_clips_to_training(value, unit, expected):
    assert to_steps(value, unit, 63, 2) == expected


def test_make_schedule_caps_initial_sparsity_at_a_lower_layer_target():
    sched = make_schedule(ScheduleSettings("polynomial", end=0.75, initial_sparsity=0.5), 0.3, 10, 2)
    assert sched.initial_sparsity == 0.3 and sched.final_sparsity == 0.3


@pytest.mark.parametrize("spec_frequency", [100, 1000])
def test_a_frequency_as_large_as_the_window_is_clamped_so_the_ramp_is_not_one_shot(spec_frequency):
    # tfmot's default (frequency 100) on 8,000 samples, batch 128, 2 epochs: a 94-step window
    sched = make_schedule(ScheduleSettings("polynomial", end=0.75, frequency=spec_frequency), 0.9, 63, 2)
    steps = sched.update_steps()
    assert sched.end_step == 95 and len(steps) >= MIN_RAMP_UPDATES
    values = [sched(t) for t in steps]
    assert len({round(v, 6) for v in values}) == len(values)  # a real ramp: every update raises sparsity
    assert values[-1] == 0.9


def test_frequency_is_only_ever_lowered_and_tiny_windows_update_every_step():
    assert ramp_frequency(10, 1000) == 10
    assert ramp_frequency(100, 94) == 94 // MIN_RAMP_UPDATES
    assert ramp_frequency(10, 3) == 1
    assert ramp_frequency(10, 0) == 1
    sched = make_schedule(ScheduleSettings("constant", begin=0.0, end=1.0, frequency=50), 0.5, 4, 1)  # 4 steps
    assert sched.update_steps() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "settings",
    [
        ScheduleSettings("polynomial", end=0.75, frequency=3),
        ScheduleSettings("constant", frequency=3),
        ScheduleSettings("one_shot"),
    ],
    ids=["polynomial", "constant", "one_shot"],
)
def test_make_schedule_builds_every_kind_and_reaches_the_target_at_its_last_update(settings):
    sched = make_schedule(settings, 0.6, 20, 3)
    last = sched.update_steps()[-1]
    assert sched(last) == 0.6
    assert 0 <= last <= 60


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"target": 1.0}, "target_sparsity"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"epochs": -1}, "epochs"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_make_schedule_refuses_bad_arguments_naming_them(kwargs, field):
    args = {"settings": POLYNOMIAL, "target": 0.5, "steps_per_epoch": 10, "epochs": 2, **kwargs}
    with pytest.raises(SpecError) as err:
        make_schedule(**args)
    assert err.value.field == field and field in err.value.message


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"kind": "cosine"}, "schedule.kind"),
        ({"unit": "step"}, "schedule.unit"),
        ({"begin": 1.5}, "schedule.begin"),
        ({"begin": -1, "unit": "epoch"}, "schedule.begin"),
        ({"begin": 0.6, "end": 0.5}, "schedule.end"),
        ({"frequency": 0}, "schedule.frequency"),
        ({"frequency": 2.5}, "schedule.frequency"),
        ({"initial_sparsity": 1.0}, "schedule.initial_sparsity"),
    ],
)
def test_schedule_settings_refuse_values_out_of_range_naming_the_field(kwargs, field):
    with pytest.raises(SpecError) as err:
        ScheduleSettings(**{"kind": "polynomial", **kwargs})
    assert err.value.field == field and field in err.value.message


def test_one_shot_settings_ignore_the_window_and_epoch_windows_may_end_past_one():
    assert make_schedule(ScheduleSettings("one_shot", begin=5.0, unit="step"), 0.4, 10, 0).update_steps() == [0]
    sched = make_schedule(ScheduleSettings("constant", begin=1, end=2, unit="epoch", frequency=1), 0.4, 10, 3)
    assert (sched.begin_step, sched.end_step) == (10, 20)
