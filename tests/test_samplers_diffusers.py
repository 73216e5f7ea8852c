"""Each step of our samplers agrees with diffusers' schedulers on the same toy denoiser, sigmas and noise.

diffusers' TCD/LCM schedulers work on the VP latent x_VP = x_VE / sqrt(1 + sigma^2); Euler, Euler ancestral and
flow-match Euler work on the same latent as ComfyUI. Coefficients are applied to diffusers the way the official
Q-Sched code does it: model_output *= c_eps and sample *= c_x right before the scheduler's own step(); a
per-step offset is subtracted from the scaled model output there too (eps' = c_eps * eps - b, scalar or per
channel of the toy's 4-channel latent).
"""
import pytest
import torch
from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       LCMScheduler, TCDScheduler)

from comfyui_qsched.samplers import SAMPLERS, EPSSampling, FlowSampling, QSchedSchedule
from comfyui_qsched.samplers.sigmas import few_step_sigmas
from test_samplers_toys import Recorder, ToyModel, initial_noise

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
SEED = 5
SCHEDULES = {"identity": lambda n: QSchedSchedule.identity(n),
             "linear": lambda n: QSchedSchedule.linear(n, 0.93, 1.08),
             "list": lambda n: QSchedSchedule.from_lists([1.012, 0.997, 0.982, 0.967, 1.0, 1.01, 0.99, 1.0][:n],
                                                         [0.955, 1.003, 1.051, 1.099, 1.0, 0.98, 1.02, 1.0][:n]),
             "offset": lambda n: QSchedSchedule.linear(n, 0.96, 1.04, offset=[0.05, -0.03, 0.02, 0.04, -0.01,
                                                                               0.03, 0.0, 0.02][:n]),
             "channel_offset": lambda n: QSchedSchedule.linear(
                 n, 1.03, 0.97, offset=[[0.04 * (c - 1.5) + 0.01 * i for c in range(4)] for i in range(n)])}


def _offset(schedule, i):
    """The step's offset as diffusers' model output sees it: [1, C, 1, 1] per channel, a number if scalar."""
    if schedule.offset is None:
        return 0.0
    row = torch.tensor(schedule.offset[i])
    return row.reshape(1, -1, 1, 1) if len(row) > 1 else float(row[0])


def _ours(name, ms, sigmas, schedule, flow=False, **options):
    recorder = Recorder()
    model = ToyModel(ms, flow=flow)
    x = initial_noise() * sigmas[0]
    out = SAMPLERS[name].function(model, x, sigmas, extra_args={"seed": SEED}, callback=recorder, disable=True,
                                  schedule=schedule, **options)
    return [step["x"] for step in recorder.steps] + [out], model.calls


def _diffusers(scheduler, sigmas, timesteps, schedule, to_model_input, from_ours, flow=False, **step_kwargs):
    """Run the scheduler's loop from our initial latent; `to_model_input(sample, i)` is the network input."""
    model = ToyModel(None, flow=flow)
    generator = torch.Generator().manual_seed(SEED)
    sample = from_ours(initial_noise() * sigmas[0], 0)
    states = [sample]
    for i, t in enumerate(timesteps):
        output = model.prediction(to_model_input(sample, i, t), float(sigmas[i]))
        output, scaled = output * schedule.c_eps[i] - _offset(schedule, i), sample * schedule.c_x[i]
        sample = scheduler.step(output, t, scaled, generator=generator, **step_kwargs).prev_sample
        states.append(sample)
    return states


def _assert_states_close(ours, theirs, to_ours):
    assert len(ours) == len(theirs)
    for i, (mine, ref) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(mine, to_ours(ref, i), rtol=2e-5, atol=2e-5, msg=lambda m: f"state {i}: {m}")


@pytest.mark.parametrize("schedule_kind", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_lcm_matches_diffusers_lcm_scheduler(schedule_kind, steps):
    ms = EPSSampling()
    sigmas = few_step_sigmas("lcm", ms.sigmas, steps)
    scheduler = LCMScheduler(**SD)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == [int((ms.sigmas - s).abs().argmin()) for s in sigmas[:-1]]
    schedule = SCHEDULES[schedule_kind](steps)
    vp = lambda x, i: x / (1 + sigmas[i] ** 2) ** 0.5  # noqa: E731
    ve = lambda x, i: x * (1 + sigmas[i] ** 2) ** 0.5  # noqa: E731  (the final state has sigma 0: factor 1)
    theirs = _diffusers(scheduler, sigmas, scheduler.timesteps, schedule, lambda x, i, t: x, vp)
    ours, calls = _ours("lcm", ms, sigmas, schedule)
    _assert_states_close(ours, theirs, ve)
    assert calls == steps


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("schedule_kind", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_tcd_matches_diffusers_tcd_scheduler(gamma, schedule_kind, steps):
    ms = EPSSampling()
    sigmas = few_step_sigmas("lcm", ms.sigmas, steps)
    scheduler = TCDScheduler(**SD)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == [int((ms.sigmas - s).abs().argmin()) for s in sigmas[:-1]]
    schedule = SCHEDULES[schedule_kind](steps)
    vp = lambda x, i: x / (1 + sigmas[i] ** 2) ** 0.5  # noqa: E731
    # Like diffusers, our last TCD step returns the VP latent at timestep 0: no conversion for it.
    ve = lambda x, i: x * (1 + sigmas[i] ** 2) ** 0.5 if i < steps else x  # noqa: E731
    theirs = _diffusers(scheduler, sigmas, scheduler.timesteps, schedule, lambda x, i, t: x, vp, eta=gamma)
    ours, calls = _ours("tcd", ms, sigmas, schedule, gamma=gamma)
    _assert_states_close(ours, theirs, ve)
    assert calls == steps


@pytest.mark.parametrize("schedule_kind", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 4, 8])
@pytest.mark.parametrize("name,scheduler_class", [("euler", EulerDiscreteScheduler),
                                                  ("euler_ancestral", EulerAncestralDiscreteScheduler)])
def test_euler_family_matches_diffusers_trailing(name, scheduler_class, schedule_kind, steps):
    ms = EPSSampling()
    sigmas = few_step_sigmas("trailing", ms.sigmas, steps)
    scheduler = scheduler_class(timestep_spacing="trailing", **SD)
    scheduler.set_timesteps(steps)
    torch.testing.assert_close(scheduler.sigmas.float(), sigmas, rtol=1e-5, atol=0)
    schedule = SCHEDULES[schedule_kind](steps)
    to_input = lambda x, i, t: scheduler.scale_model_input(x, t)  # noqa: E731
    same = lambda x, i: x  # noqa: E731
    theirs = _diffusers(scheduler, sigmas, scheduler.timesteps, schedule, to_input, same)
    ours, calls = _ours(name, ms, sigmas, schedule)
    _assert_states_close(ours, theirs, same)
    assert calls == steps


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("schedule_kind", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_flow_euler_matches_diffusers_flow_match_euler(shift, schedule_kind, steps):
    ms = FlowSampling(shift)
    sigmas = few_step_sigmas("flow", ms.sigmas, steps)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    # FluxPipeline's sigmas: linspace(1, 1/steps, steps); the scheduler applies the shift.
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1.0 / steps, steps).tolist())
    torch.testing.assert_close(scheduler.sigmas.float(), sigmas, rtol=1e-6, atol=1e-6)
    schedule = SCHEDULES[schedule_kind](steps)
    same = lambda x, i: x  # noqa: E731
    theirs = _diffusers(scheduler, sigmas, scheduler.timesteps, schedule, lambda x, i, t: x, same, flow=True)
    ours, calls = _ours("euler", ms, sigmas, schedule, flow=True)
    _assert_states_close(ours, theirs, same)
    assert calls == steps
