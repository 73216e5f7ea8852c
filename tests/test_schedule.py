"""QSchedSchedule: the paper's coefficient forms, serialisation, and clear errors for unusable schedules."""
import dataclasses
import json

import numpy as np
import pytest

from comfyui_qsched.samplers import QSchedSchedule, ScheduleError
from comfyui_qsched.samplers.schedule import SAMPLER_NAMES


def test_linear_is_the_papers_linspace_with_end_fixed_at_one():
    schedule = QSchedSchedule.linear(4, 0.85, 1.15)
    # written out by hand: start + (1 - start) * i / 3
    assert schedule.c_x == pytest.approx((0.85, 0.90, 0.95, 1.0), abs=1e-15)
    assert schedule.c_eps == pytest.approx((1.15, 1.10, 1.05, 1.0), abs=1e-15)
    assert schedule.c_x[0] == 0.85 and schedule.c_x[-1] == 1.0 and schedule.c_eps[-1] == 1.0
    assert schedule.steps == 4 and not schedule.is_identity
    general = QSchedSchedule.linear(3, 0.9, 1.1, x_end=1.05, eps_end=0.95)
    assert general.c_x == pytest.approx((0.9, 0.975, 1.05)) and general.c_eps[-1] == 0.95
    assert QSchedSchedule.linear(1, 0.9, 1.1).c_x == (0.9,)


def test_identity_constant_and_lists():
    assert QSchedSchedule.identity(3).is_identity and QSchedSchedule.identity(3).c_eps == (1.0, 1.0, 1.0)
    constant = QSchedSchedule.constant(2, 0.98, 1.02, sampler="tcd", label="w4a8")
    assert constant.c_x == (0.98, 0.98) and constant.c_eps == (1.02, 1.02)
    assert constant.sampler == "tcd" and constant.label == "w4a8"
    listed = QSchedSchedule.from_lists([1, 2], np.array([0.5, 1.5]))
    assert listed.c_x == (1.0, 2.0) and listed.c_eps == (0.5, 1.5)
    assert all(type(c) is float for c in listed.c_x + listed.c_eps)


def test_frozen_hashable_and_equal_by_value():
    schedule = QSchedSchedule.linear(4, 0.9, 1.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.c_x = (1.0,)
    assert schedule == QSchedSchedule.from_lists(schedule.c_x, schedule.c_eps)
    assert len({schedule, QSchedSchedule.from_lists(list(schedule.c_x), list(schedule.c_eps))}) == 1


def test_dict_round_trip_through_json():
    schedule = QSchedSchedule.linear(4, 0.9, 1.1, sampler="euler_ancestral", label="sdxl-turbo W4A8")
    again = QSchedSchedule.from_dict(json.loads(json.dumps(schedule.to_dict())))
    assert again == schedule
    assert QSchedSchedule.from_dict({"c_x": [1, 1], "c_eps": [1, 1]}) == QSchedSchedule.identity(2)


def test_check_accepts_matching_steps_and_known_samplers():
    schedule = QSchedSchedule.identity(4)
    assert schedule.check(4) is schedule
    for name in SAMPLER_NAMES:
        schedule.check(4, sampler=name)


@pytest.mark.parametrize("build,message", [
    (lambda: QSchedSchedule((1.0, 1.0), (1.0,)), "c_x has 2 values but c_eps has 1"),
    (lambda: QSchedSchedule((), ()), "c_x is empty"),
    (lambda: QSchedSchedule((1.0, float("nan")), (1.0, 1.0)), r"c_x\[1\] = nan is not finite"),
    (lambda: QSchedSchedule((1.0,), (float("inf"),)), r"c_eps\[0\] = inf is not finite"),
    (lambda: QSchedSchedule((0.0,), (1.0,)), r"c_x\[0\] = 0.0 is not positive"),
    (lambda: QSchedSchedule((1.0,), (-0.5,)), r"c_eps\[0\] = -0.5 is not positive"),
    (lambda: QSchedSchedule(("a",), (1.0,)), "c_x must be a list of numbers"),
    (lambda: QSchedSchedule((1.0,), (1.0,), sampler="dpmpp_2m"), "unknown sampler 'dpmpp_2m'"),
    (lambda: QSchedSchedule.identity(0), "steps must be a positive integer"),
    (lambda: QSchedSchedule.linear(True, 0.9, 1.1), "steps must be a positive integer"),
    (lambda: QSchedSchedule.linear(4, 0.9, float("nan")), r"c_eps\[0\] = nan is not finite"),
    (lambda: QSchedSchedule.identity(4).check(6), "4 coefficient pairs but sampling runs 6 steps"),
    (lambda: QSchedSchedule.identity(4).check(4, sampler="heun"), "unknown sampler 'heun'"),
    (lambda: QSchedSchedule.constant(2, 1.0, 1.0, sampler="lcm").check(2, sampler="euler"),
     "tuned for the lcm sampler but sampling uses euler"),
    (lambda: QSchedSchedule.from_dict([1, 2]), "must be a dict"),
    (lambda: QSchedSchedule.from_dict({"c_x": [1]}), "lacks c_eps"),
    (lambda: QSchedSchedule.from_dict({"c_x": [1], "c_eps": [1], "cx": 2}), "unknown keys cx"),
    (lambda: QSchedSchedule.from_dict({"c_x": "11", "c_eps": [1, 1]}), "c_x must be a list of numbers"),
])
def test_bad_schedules_raise_schedule_error_naming_the_problem(build, message):
    with pytest.raises(ScheduleError, match=message):
        build()


def test_schedule_error_is_a_value_error():
    assert issubclass(ScheduleError, ValueError)
