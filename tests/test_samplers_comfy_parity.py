"""With all coefficients 1 our samplers equal ComfyUI's own k-diffusion functions bit for bit (torch.equal).

Runs ComfyUI's sample_euler / sample_euler_ancestral (which dispatches to the RF variant on flow models) /
sample_lcm from the checkout in COMFYUI_DIR on a toy denoiser whose model_sampling is ComfyUI's own class. Ours
get ComfyUI's default_noise_sampler as `make_noise_sampler`, as the nodes pass it.
"""
import os
import sys

import pytest
import torch

from comfyui_qsched.samplers import SAMPLERS, QSchedSchedule
from comfyui_qsched.samplers.sigmas import few_step_sigmas
from test_samplers_toys import Recorder, ToyModel, initial_noise

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to compare with it")


@pytest.fixture(scope="module")
def comfy():
    if COMFYUI_DIR not in sys.path:
        sys.path.insert(0, COMFYUI_DIR)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # as `main.py --cpu`: model_management must not look for a GPU
    import comfy.k_diffusion.sampling as sampling
    import comfy.model_sampling as model_sampling
    return sampling, model_sampling


def _comfy_model_sampling(model_sampling, flow):
    # Built the way comfy.model_base.model_sampling() combines a sampling class with a prediction type.
    if flow:
        class FlowSampling(model_sampling.ModelSamplingDiscreteFlow, model_sampling.CONST):
            pass
        return FlowSampling()

    class EPSSampling(model_sampling.ModelSamplingDiscrete, model_sampling.EPS):
        pass
    return EPSSampling()


CASES = [("euler", "sample_euler", False), ("euler_ancestral", "sample_euler_ancestral", False),
         ("lcm", "sample_lcm", False), ("euler", "sample_euler", True),
         ("euler_ancestral", "sample_euler_ancestral", True), ("lcm", "sample_lcm", True)]


@pytest.mark.parametrize("name,comfy_name,flow", CASES, ids=[f"{c[0]}-{'flow' if c[2] else 'eps'}" for c in CASES])
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_identity_schedule_is_bit_identical_to_comfyui(comfy, name, comfy_name, flow, steps):
    sampling, model_sampling = comfy
    ms = _comfy_model_sampling(model_sampling, flow)
    sigmas = few_step_sigmas("trailing" if flow else "lcm", ms.sigmas, steps)
    noise = initial_noise()
    x = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
    ours_log, theirs_log = Recorder(), Recorder()
    extra = {"seed": 7}
    theirs = getattr(sampling, comfy_name)(ToyModel(ms, flow), x.clone(), sigmas, extra_args=dict(extra),
                                           callback=theirs_log, disable=True)
    ours = SAMPLERS[name].function(ToyModel(ms, flow), x.clone(), sigmas, extra_args=dict(extra), callback=ours_log,
                                   disable=True, schedule=QSchedSchedule.identity(steps),
                                   make_noise_sampler=sampling.default_noise_sampler)
    assert torch.equal(ours, theirs)
    assert len(ours_log.steps) == len(theirs_log.steps) == steps
    for mine, ref in zip(ours_log.steps, theirs_log.steps):
        assert mine.keys() == ref.keys()
        for key in ref:
            assert torch.equal(torch.as_tensor(mine[key]), torch.as_tensor(ref[key])), key


def test_schedule_none_equals_identity_and_ancestral_options_match(comfy):
    sampling, model_sampling = comfy
    ms = _comfy_model_sampling(model_sampling, False)
    sigmas = few_step_sigmas("trailing", ms.sigmas, 4)
    x = initial_noise() * sigmas[0]
    theirs = sampling.sample_euler_ancestral(ToyModel(ms), x.clone(), sigmas, extra_args={"seed": 3}, disable=True,
                                             eta=0.6, s_noise=0.9)
    ours = SAMPLERS["euler_ancestral"].function(ToyModel(ms), x.clone(), sigmas, extra_args={"seed": 3},
                                                disable=True, eta=0.6, s_noise=0.9,
                                                make_noise_sampler=sampling.default_noise_sampler)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name,comfy_name", [("euler_ancestral", "sample_euler_ancestral"), ("lcm", "sample_lcm")])
def test_flow_models_noise_scale_is_followed(comfy, name, comfy_name):
    """ComfyUI 0.33's flow sampling can scale fresh noise (HiDream-O1: 8); where a version has no noise scale
    this is the plain flow case again."""
    sampling, model_sampling = comfy
    ms = _comfy_model_sampling(model_sampling, True)
    if hasattr(ms, "set_noise_scale"):
        ms.set_noise_scale(8.0)
    sigmas = few_step_sigmas("trailing", ms.sigmas, 4)
    x = ms.noise_scaling(sigmas[0], initial_noise(), torch.zeros_like(initial_noise()))
    theirs = getattr(sampling, comfy_name)(ToyModel(ms, True), x.clone(), sigmas, extra_args={"seed": 5}, disable=True)
    ours = SAMPLERS[name].function(ToyModel(ms, True), x.clone(), sigmas, extra_args={"seed": 5}, disable=True,
                                   make_noise_sampler=sampling.default_noise_sampler)
    assert torch.equal(ours, theirs)


def test_flow_detection_and_tcd_refusal_on_comfyui_classes(comfy):
    from comfyui_qsched.samplers import is_flow
    _, model_sampling = comfy
    assert is_flow(_comfy_model_sampling(model_sampling, True))
    assert not is_flow(_comfy_model_sampling(model_sampling, False))
    ms = _comfy_model_sampling(model_sampling, True)
    sigmas = few_step_sigmas("flow", ms.sigmas, 4)
    model = ToyModel(ms, flow=True)
    with pytest.raises(ValueError, match="flow model"):
        SAMPLERS["tcd"].function(model, initial_noise(), sigmas, disable=True)
    assert model.calls == 0


def test_plain_torch_tables_equal_comfyuis(comfy):
    from comfyui_qsched.samplers.model_sampling import discrete_sigma_table, flow_sigma_table
    _, model_sampling = comfy
    assert torch.equal(discrete_sigma_table(), _comfy_model_sampling(model_sampling, False).sigmas)
    flow = _comfy_model_sampling(model_sampling, True)
    assert torch.equal(flow_sigma_table(1.0), flow.sigmas)
    flow.set_parameters(shift=3.0)
    torch.testing.assert_close(flow_sigma_table(3.0), flow.sigmas, rtol=1e-6, atol=0)


def test_tcd_on_comfyuis_lcm_distilled_sampling_uses_the_full_table(comfy):
    # ModelSamplingDiscreteDistilled (ComfyUI's "lcm" model sampling) keeps only 50 of the 1000 sigmas.
    _, model_sampling = comfy
    if COMFYUI_DIR not in sys.path:
        sys.path.insert(0, COMFYUI_DIR)
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscreteDistilled

    class Distilled(ModelSamplingDiscreteDistilled, model_sampling.EPS):
        pass
    distilled, full = Distilled(), _comfy_model_sampling(model_sampling, False)
    assert len(distilled.sigmas) == 50
    sigmas = few_step_sigmas("lcm", full.sigmas, 4)
    runs = [SAMPLERS["tcd"].function(ToyModel(ms), initial_noise() * sigmas[0], sigmas, extra_args={"seed": 1},
                                     disable=True, gamma=0.3) for ms in (distilled, full)]
    assert torch.equal(runs[0], runs[1])
