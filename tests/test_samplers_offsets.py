"""The per-step offset on the noise prediction (eps' = c_eps * eps - b): zero offsets, scalar or per channel, sample
bit for bit like a schedule without offsets (every sampler, EPS and flow, identity and non-identity coefficients);
offsets round-trip through dicts; bad offsets are refused with the problem named, before any model call."""
import json

import pytest
import torch

from comfyui_qsched.samplers import SAMPLERS, EPSSampling, FlowSampling, QSchedSchedule, ScheduleError
from comfyui_qsched.samplers.sigmas import few_step_sigmas
from test_samplers_toys import Recorder, ToyModel, initial_noise

CASES = [("euler", False), ("euler", True), ("euler_ancestral", False), ("euler_ancestral", True), ("lcm", False),
         ("lcm", True), ("tcd", False)]
IDS = [f"{n}-{'flow' if f else 'eps'}" for n, f in CASES]


def _sample(name, flow, schedule, steps=4):
    ms = FlowSampling() if flow else EPSSampling()
    sigmas = few_step_sigmas("flow" if flow else "lcm", ms.sigmas, steps)
    recorder = Recorder()
    out = SAMPLERS[name].function(ToyModel(ms, flow=flow), initial_noise() * sigmas[0], sigmas,
                                  extra_args={"seed": 17}, callback=recorder, disable=True, schedule=schedule)
    return out, recorder.steps


@pytest.mark.parametrize("coefficients", ["identity", "linear"])
@pytest.mark.parametrize("name,flow", CASES, ids=IDS)
def test_zero_offsets_are_bit_identical_to_no_offsets(name, flow, coefficients):
    steps = 4
    plain = QSchedSchedule.identity(steps) if coefficients == "identity" else QSchedSchedule.linear(steps, 0.93, 1.08)
    reference, reference_steps = _sample(name, flow, plain)
    for offset in ([0.0] * steps, [[0.0, 0.0, 0.0, 0.0]] * steps, [[-0.0]] * steps):
        zero = QSchedSchedule.from_lists(plain.c_x, plain.c_eps, offset=offset)
        assert not zero.has_offset and zero.is_identity == plain.is_identity
        out, recorded = _sample(name, flow, zero)
        assert torch.equal(out, reference)
        for mine, theirs in zip(recorded, reference_steps):
            assert torch.equal(mine["x"], theirs["x"]) and torch.equal(mine["denoised"], theirs["denoised"])


@pytest.mark.parametrize("name,flow", CASES, ids=IDS)
def test_a_nonzero_offset_on_one_step_changes_the_result_and_the_callback(name, flow):
    plain = QSchedSchedule.identity(4)
    reference, reference_steps = _sample(name, flow, plain)
    shifted = QSchedSchedule((1.0,) * 4, (1.0,) * 4, offset=[0.0, 0.1, 0.0, 0.0])
    assert shifted.has_offset and not shifted.is_identity
    out, recorded = _sample(name, flow, shifted)
    assert not torch.equal(out, reference)
    assert torch.equal(recorded[1]["x"], reference_steps[1]["x"])          # steps before the offset: untouched
    assert not torch.equal(recorded[1]["denoised"], reference_steps[1]["denoised"])


def test_per_channel_offset_moves_only_its_channel_in_the_denoised_estimate():
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 1)
    base, _ = _sample("lcm", False, QSchedSchedule.identity(1), steps=1)
    moved, _ = _sample("lcm", False, QSchedSchedule((1.0,), (1.0,), offset=[[0, 0, 0.2, 0]]),
                       steps=1)
    difference = (moved - base).amax(dim=(0, 2, 3))
    # one LCM step returns D' = D + sigma * b: channel 2 moves by sigma_0 * 0.2, the others not at all
    assert torch.equal(difference[[0, 1, 3]], torch.zeros(3))
    torch.testing.assert_close(difference[2], sigmas[0] * 0.2, rtol=1e-5, atol=1e-5)


def test_offsets_round_trip_through_json_and_old_dicts_have_none():
    schedule = QSchedSchedule.linear(2, 0.9, 1.1, sampler="lcm", offset=[[0.1, -0.2], [0.0, 0.05]])
    data = json.loads(json.dumps(schedule.to_dict()))
    assert data["offset"] == [[0.1, -0.2], [0.0, 0.05]]
    assert QSchedSchedule.from_dict(data) == schedule
    old = {"c_x": [1, 1], "c_eps": [1, 1], "sampler": "lcm", "label": ""}
    assert QSchedSchedule.from_dict(old).offset is None and "offset" not in QSchedSchedule.from_dict(old).to_dict()
    scalar = QSchedSchedule.constant(3, 1.0, 1.0, offset=[0.1, 0.2, 0.3])
    assert scalar.offset == ((0.1,), (0.2,), (0.3,)) and scalar.offset_channels == 1
    assert QSchedSchedule.identity(3).offset_channels == 0


@pytest.mark.parametrize("offset,message", [
    ([0.1], "offset has 1 entries but the schedule has 2 steps"),
    ([0.1, float("nan")], r"offset\[1\]\[0\] = nan is not finite"),
    ([[0.1, 0.2], [0.1]], "different widths"),
    ([[], []], r"offset\[0\] is empty"),
    (["a", 0.1], r"offset\[0\] must be a number"),
    ("0.1", "offset must be a list"),
])
def test_bad_offsets_are_refused(offset, message):
    with pytest.raises(ScheduleError, match=message):
        QSchedSchedule((1.0, 1.0), (1.0, 1.0), offset=offset)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_per_channel_offset_for_another_channel_count_fails_before_the_first_model_call(name):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 2)
    model = ToyModel(EPSSampling())
    schedule = QSchedSchedule((1.0, 1.0), (1.0, 1.0), offset=[[0.1, 0.2, 0.3]] * 2)
    with pytest.raises(ScheduleError, match="3 values per step .* latent has 4 channels"):
        SAMPLERS[name].function(model, initial_noise() * sigmas[0], sigmas, disable=True, schedule=schedule)
    assert model.calls == 0
