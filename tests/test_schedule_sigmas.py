"""Few-step sigma schedules equal the timesteps/sigmas of the diffusers schedulers the coefficients were tuned on."""
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler, TCDScheduler

from comfyui_qsched.samplers.model_sampling import discrete_sigma_table, flow_sigma_table
from comfyui_qsched.samplers.sigmas import few_step_sigmas, lcm_timesteps, sigmas_at, trailing_timesteps

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def test_the_published_timesteps():
    assert lcm_timesteps(4) == [999, 759, 499, 259]
    assert lcm_timesteps(8) == [999, 879, 759, 639, 499, 379, 259, 139]
    assert trailing_timesteps(4) == [999, 749, 499, 249]
    assert trailing_timesteps(1) == [999]
    assert few_step_sigmas("flow", flow_sigma_table(1.0), 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("steps", range(1, 11))
def test_lcm_schedule_matches_diffusers_lcm_and_tcd(steps):
    for scheduler_class in (LCMScheduler, TCDScheduler):
        scheduler = scheduler_class(**SD)
        scheduler.set_timesteps(steps)
        assert lcm_timesteps(steps) == scheduler.timesteps.tolist(), scheduler_class.__name__


@pytest.mark.parametrize("steps", range(1, 11))
def test_trailing_schedule_matches_diffusers_euler_trailing(steps):
    scheduler = EulerDiscreteScheduler(timestep_spacing="trailing", **SD)
    scheduler.set_timesteps(steps)
    assert trailing_timesteps(steps) == [int(t) for t in scheduler.timesteps.tolist()]
    torch.testing.assert_close(few_step_sigmas("trailing", discrete_sigma_table(), steps), scheduler.sigmas.float(),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_flow_schedule_matches_flux_pipeline_sigmas(shift, steps):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist())
    torch.testing.assert_close(few_step_sigmas("flow", flow_sigma_table(shift), steps), scheduler.sigmas.float(),
                               rtol=1e-6, atol=1e-6)


def test_discrete_table_matches_diffusers_alphas_cumprod():
    abar = LCMScheduler(**SD).alphas_cumprod
    torch.testing.assert_close(discrete_sigma_table(), ((1 - abar) / abar) ** 0.5, rtol=2e-5, atol=0)


@pytest.mark.parametrize("call,message", [
    (lambda: few_step_sigmas("karras", discrete_sigma_table(), 4), "unknown sigma schedule 'karras'"),
    (lambda: lcm_timesteps(0), "between 1 and 50"),
    (lambda: lcm_timesteps(51), "between 1 and 50"),
    (lambda: trailing_timesteps(0), "between 1 and 1000"),
    (lambda: sigmas_at(torch.ones(2, 2), [0]), "1-D"),
    (lambda: sigmas_at(discrete_sigma_table(), [1000]), r"timesteps \[1000\] are outside"),
])
def test_bad_schedule_requests_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
