"""Batched sampling for calibration: every sample of a batch (own schedule, own seed) equals the same sample
sampled alone at batch 1 with ComfyUI's seeding, for every sampler, on EPS and flow toys."""
import pytest
import torch

from comfyui_qsched.samplers import SAMPLERS, EPSSampling, FlowSampling, QSchedSchedule, ScheduleError
from comfyui_qsched.samplers.batch import ScheduleBatch, one_schedule, seeded_noise_sampler
from comfyui_qsched.samplers.sigmas import few_step_sigmas
from test_samplers_toys import ToyModel

SCHEDULES = [QSchedSchedule.identity(4), QSchedSchedule.linear(4, 0.85, 1.15),
             QSchedSchedule.from_lists([1.1, 0.9, 1.05, 1.0], [0.95, 1.0, 1.2, 0.9])]
# with per-step offsets: none, scalar, per channel (4 channels) side by side in one batch
OFFSET_SCHEDULES = [SCHEDULES[1], QSchedSchedule.linear(4, 0.9, 1.1, offset=[0.05, 0.0, -0.02, 0.01]),
                    QSchedSchedule.from_lists(SCHEDULES[2].c_x, SCHEDULES[2].c_eps,
                                              offset=[[0.03, -0.01, 0.0, 0.02]] * 4)]
SEEDS = [7, 8, 123]
CASES = [("euler", False), ("euler", True), ("euler_ancestral", False), ("euler_ancestral", True), ("lcm", False),
         ("lcm", True), ("tcd", False)]


def _start(seed):
    return torch.randn((1, 4, 6, 6), generator=torch.Generator().manual_seed(seed + 1000))


def _sigmas(flow):
    return few_step_sigmas("trailing" if flow else "lcm", (FlowSampling() if flow else EPSSampling()).sigmas, 4)


@pytest.mark.parametrize("schedules", ["coefficients", "offsets"])
@pytest.mark.parametrize("name,flow", CASES, ids=[f"{n}-{'flow' if f else 'eps'}" for n, f in CASES])
def test_each_sample_of_a_batch_equals_its_batch_one_twin(name, flow, schedules):
    schedules = SCHEDULES if schedules == "coefficients" else OFFSET_SCHEDULES
    sigmas = _sigmas(flow)
    sampler = SAMPLERS[name].function
    model_sampling = FlowSampling() if flow else EPSSampling()
    alone = [sampler(ToyModel(model_sampling, flow=flow), _start(seed) * sigmas[0], sigmas, disable=True,
                     schedule=schedule, extra_args={"seed": seed})
             for schedule, seed in zip(schedules, SEEDS)]
    x = torch.cat([_start(seed) for seed in SEEDS]) * sigmas[0]
    batched = sampler(ToyModel(model_sampling, flow=flow), x, sigmas, disable=True, schedule=ScheduleBatch(schedules),
                      noise_sampler=seeded_noise_sampler(x, SEEDS), extra_args={"seed": 999})
    for index, twin in enumerate(alone):
        torch.testing.assert_close(batched[index:index + 1], twin, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)     # the schedules and seeds do differ


def test_seeded_noise_draws_what_each_seed_draws_alone():
    x = torch.zeros(3, 2, 4, 4)
    draw = seeded_noise_sampler(x, [5, 6, 5])
    first, second = draw(1.0, 0.5), draw(0.5, 0.0)
    for index, seed in enumerate([5, 6, 5]):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(first[index], torch.randn((1, 2, 4, 4), generator=g)[0])
        assert torch.equal(second[index], torch.randn((1, 2, 4, 4), generator=g)[0])
    with pytest.raises(ValueError, match="2 noise seeds for a batch of 3"):
        seeded_noise_sampler(x, [1, 2])


def test_a_batch_of_one_schedule_samples_with_that_schedule():
    assert one_schedule([SCHEDULES[1], QSchedSchedule.linear(4, 0.85, 1.15, label="other")]) is SCHEDULES[1]
    assert isinstance(one_schedule([SCHEDULES[1], QSchedSchedule.linear(4, 0.85, 1.15, offset=[0.1] * 4)]),
                      ScheduleBatch)                               # same coefficients, other offsets
    assert isinstance(one_schedule(SCHEDULES), ScheduleBatch)


def test_schedule_batch_is_checked_before_the_first_model_call():
    model = ToyModel(EPSSampling())
    sigmas = _sigmas(False)
    with pytest.raises(ScheduleError, match="2 schedules for a batch of 3"):
        SAMPLERS["lcm"].function(model, torch.zeros(3, 4, 6, 6), sigmas, schedule=ScheduleBatch(SCHEDULES[:2]),
                                 disable=True)
    with pytest.raises(ScheduleError, match="different step counts"):
        ScheduleBatch([QSchedSchedule.identity(4), QSchedSchedule.identity(3)])
    with pytest.raises(ScheduleError, match="tuned for the lcm sampler"):
        SAMPLERS["euler"].function(model, torch.zeros(2, 4, 6, 6), sigmas, disable=True, schedule=ScheduleBatch(
            [SCHEDULES[0], QSchedSchedule.linear(4, 0.9, 1.1, sampler="lcm")]))
    assert model.calls == 0
