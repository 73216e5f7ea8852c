"""Q-Sched sampling nodes inside ComfyUI (in-process), against ComfyUI's own KSampler on tiny real models.

Needs COMFYUI_DIR; the models are the harness's random-initialised SD1.5 checkpoint and SD3 flow model.
"""
import pytest
import torch

from comfy_fixtures import CLIP_L, SD3_UNET, SD15_CHECKPOINT

SEED = 7


@pytest.fixture(scope="module")
def comfy(comfyui_dir):
    """ComfyUI's modules and our node module, imported in this process."""
    import comfy.sample
    import comfy.sd
    import nodes
    from comfyui_qsched.nodes import sampling
    from comfyui_qsched.samplers import QSchedSchedule, ScheduleError
    return type("Comfy", (), dict(sd=comfy.sd, nodes=nodes, sampling=sampling, QSchedSchedule=QSchedSchedule,
                                  ScheduleError=ScheduleError))


def _encode(nodes, clip, text):
    return nodes.CLIPTextEncode().encode(clip, text)[0]


@pytest.fixture(scope="module")
def sd15(comfy, comfy_models):
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(comfy_models.path("checkpoints", SD15_CHECKPOINT))[:3]
    return dict(model=model, positive=_encode(comfy.nodes, clip, "a red cube"),
                negative=_encode(comfy.nodes, clip, "blurry"),
                latent=comfy.nodes.EmptyLatentImage().generate(64, 64, 1)[0])


@pytest.fixture(scope="module")
def sd3(comfy, comfy_models):
    model = comfy.sd.load_diffusion_model(comfy_models.path("unet", SD3_UNET))
    clip = comfy.sd.load_clip([comfy_models.path("clip", CLIP_L)], clip_type=comfy.sd.CLIPType.SD3)
    return dict(model=model, positive=_encode(comfy.nodes, clip, "a red cube"),
                negative=_encode(comfy.nodes, clip, "blurry"),
                latent={"samples": torch.zeros(1, 16, 8, 8)})


def _native(comfy, m, sampler, scheduler, steps=3, cfg=2.0, denoise=1.0):
    return comfy.nodes.common_ksampler(m["model"], SEED, steps, cfg, sampler, scheduler, m["positive"], m["negative"],
                                       m["latent"], denoise=denoise)[0]["samples"]


def _qsched(comfy, m, sampler, scheduler, schedule=None, steps=3, cfg=2.0, denoise=1.0):
    return comfy.sampling.sample_with_schedule(m["model"], SEED, steps, cfg, sampler, scheduler, m["positive"],
                                               m["negative"], m["latent"], schedule, denoise=denoise)["samples"]


@pytest.mark.parametrize("sampler,scheduler", [("lcm", "sgm_uniform"), ("euler", "normal"),
                                               ("euler_ancestral", "normal")])
def test_identity_schedule_equals_native_ksampler_bit_for_bit_on_sd15(comfy, sd15, sampler, scheduler):
    native = _native(comfy, sd15, sampler, scheduler)
    ours = _qsched(comfy, sd15, sampler, scheduler, comfy.QSchedSchedule.identity(3))
    assert torch.isfinite(native).all() and native.abs().max() > 0
    assert torch.equal(ours, native), f"max |diff| = {(ours - native).abs().max()}"


def test_no_schedule_means_identity_and_denoise_follows_ksampler(comfy, sd15):
    assert torch.equal(_qsched(comfy, sd15, "euler", "normal", None, denoise=0.6),
                       _native(comfy, sd15, "euler", "normal", denoise=0.6))


def test_the_ksampler_node_takes_the_hosts_path_with_what_only_the_host_knows(comfy, sd15):
    """The latent keys ComfyUI reads and drops flow through the node untouched by the pack: 0.33's
    downscale_ratio_spacial (here 16 on a model that downscales by 8) resizes the empty latent 2x and leaves the
    output, exactly as in ComfyUI's own KSampler; 0.3.64 knows no such key and keeps it, as its KSampler does."""
    import inspect

    from comfy.sample import fix_empty_latent_channels
    latent = {"samples": torch.zeros(1, 4, 8, 8), "downscale_ratio_spacial": 16}
    native = comfy.nodes.common_ksampler(sd15["model"], SEED, 2, 2.0, "euler", "normal", sd15["positive"],
                                         sd15["negative"], latent)[0]
    ours = comfy.sampling.QSchedKSampler.execute(sd15["model"], SEED, 2, 2.0, "euler", "normal", sd15["positive"],
                                                 sd15["negative"], latent, schedule=None)[0]
    assert sorted(ours) == sorted(native) and torch.equal(ours["samples"], native["samples"])
    host_reads_it = "downscale_ratio_spacial" in inspect.signature(fix_empty_latent_channels).parameters
    assert ours["samples"].shape[-1] == (16 if host_reads_it else 8)
    assert ("downscale_ratio_spacial" in ours) == (not host_reads_it)
    assert latent == {"samples": latent["samples"], "downscale_ratio_spacial": 16}   # the input is not changed


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "lcm"])
def test_identity_schedule_equals_native_ksampler_on_flow_model(comfy, sd3, sampler):
    native = _native(comfy, sd3, sampler, "simple")
    ours = _qsched(comfy, sd3, sampler, "simple", comfy.QSchedSchedule.identity(3))
    assert torch.equal(ours, native), f"max |diff| = {(ours - native).abs().max()}"


@pytest.mark.parametrize("model_name,sampler,scheduler", [("sd15", "lcm", "lcm_original"),
                                                          ("sd15", "euler", "normal"),
                                                          ("sd3", "euler", "flow_shift1")])
def test_coefficients_change_the_result(comfy, sd15, sd3, model_name, sampler, scheduler):
    m = {"sd15": sd15, "sd3": sd3}[model_name]
    identity = _qsched(comfy, m, sampler, scheduler, None)
    for c_x, c_eps in ((1.05, 1.0), (1.0, 0.9)):
        scaled = _qsched(comfy, m, sampler, scheduler, comfy.QSchedSchedule.constant(3, c_x, c_eps))
        assert torch.isfinite(scaled).all()
        assert (scaled - identity).abs().max() > 1e-3, (c_x, c_eps)


def test_one_euler_step_applies_eq4_to_comfyuis_denoised(comfy, sd15):
    """x_next = c_x x + (sigma_next - sigma) c_eps (x - D) / sigma, with D the CFG-combined denoised that
    ComfyUI itself computed (read through a post-CFG hook)."""
    import comfy.samplers as comfy_samplers
    captured = []
    model = sd15["model"].clone()
    model.set_model_sampler_post_cfg_function(lambda args: captured.append(args["denoised"]) or args["denoised"])
    guider = comfy_samplers.CFGGuider(model)
    guider.set_conds(sd15["positive"], sd15["negative"])
    guider.set_cfg(2.0)
    sigmas = comfy.sampling.scheduler_sigmas(model, "normal", 4)[1:3]  # one step between two non-zero sigmas
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    c_x, c_eps = 1.1, 0.9
    sampler = comfy.sampling.qsched_sampler("euler", comfy.QSchedSchedule.from_lists([c_x], [c_eps]))
    out = guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, disable_pbar=True, seed=0)
    sigma, sigma_next = float(sigmas[0]), float(sigmas[1])
    x = noise * sigma  # EPS noise scaling of an all-zero latent
    expected = c_x * x + (sigma_next - sigma) * c_eps * (x - captured[0].to(x.device)) / sigma
    assert len(captured) == 1
    torch.testing.assert_close(out.cpu(), model.model.process_latent_out(expected).cpu(), rtol=1e-5, atol=1e-4)


def test_qsched_sampler_node_in_sampler_custom_equals_native_euler(comfy, sd15):
    import comfy_extras.nodes_custom_sampler as custom
    sigmas = comfy.sampling.scheduler_sigmas(sd15["model"], "normal", 3)

    def run(sampler):
        return custom.SamplerCustom().sample(sd15["model"], True, SEED, 2.0, sd15["positive"], sd15["negative"],
                                              sampler, sigmas, sd15["latent"])[0]["samples"]
    ours = comfy.sampling.QSchedSampler.execute("euler", comfy.QSchedSchedule.identity(3))[0]
    native = custom.KSamplerSelect().get_sampler("euler")[0]
    assert torch.equal(run(ours), run(native))


def test_tcd_runs_on_sd15_and_gamma_matters(comfy, sd15):
    node = comfy.sampling.QSchedKSampler

    def run(gamma):
        return node.execute(sd15["model"], SEED, 3, 1.0, "tcd", "lcm_original", sd15["positive"], sd15["negative"],
                            sd15["latent"], tcd_gamma=gamma)[0]["samples"]
    a, b = run(0.0), run(0.5)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().max() > 1e-3


def _counting(model):
    """A clone of `model` that counts its forward calls."""
    calls = []
    clone = model.clone()
    clone.set_model_unet_function_wrapper(lambda apply, args: calls.append(1) or apply(args["input"],
                                                                                        args["timestep"],
                                                                                        **args["c"]))
    return clone, calls


@pytest.mark.parametrize("case,match", [
    ("schedule_length", "schedule has 4 coefficient pairs but sampling runs 3 steps"),
    ("unknown_sampler", "unknown Q-Sched sampler 'dpmpp_9m'"),
    ("unknown_scheduler", "unknown scheduler 'fastest'"),
    ("tcd_on_flow", "'tcd' works on EPS"),
    ("flow_scheduler_on_eps", "'flow_shift1' is for flow models"),
])
def test_bad_input_is_refused_before_any_model_call(comfy, sd15, sd3, case, match):
    m = dict(sd3 if case == "tcd_on_flow" else sd15)
    m["model"], calls = _counting(m["model"])
    sampler, scheduler, schedule = "euler", "normal", None
    if case == "schedule_length":
        schedule = comfy.QSchedSchedule.identity(4)
    elif case == "unknown_sampler":
        sampler = "dpmpp_9m"
    elif case == "unknown_scheduler":
        scheduler = "fastest"
    elif case == "tcd_on_flow":
        sampler, scheduler = "tcd", "simple"
    elif case == "flow_scheduler_on_eps":
        scheduler = "flow_shift1"
    with pytest.raises(ValueError, match=match):
        _qsched(comfy, m, sampler, scheduler, schedule)
    assert calls == []


def test_nan_in_the_latent_stops_with_the_step_named(comfy, sd15):
    from comfyui_qsched.samplers import NonFiniteLatentError
    m = dict(sd15)
    calls = []

    def nan_on_second_call(apply, args):
        calls.append(1)
        out = apply(args["input"], args["timestep"], **args["c"])
        return out * float("nan") if len(calls) == 2 else out
    m["model"] = sd15["model"].clone()
    m["model"].set_model_unet_function_wrapper(nan_on_second_call)
    with pytest.raises(NonFiniteLatentError, match="step 2 of 3"):
        _qsched(comfy, m, "euler", "normal", None, cfg=1.0)
    assert len(calls) == 2


@pytest.mark.parametrize("sampler", ["lcm", "tcd", "euler", "euler_ancestral"])
def test_coefficients_cost_no_extra_model_call(comfy, sd15, sampler):
    m = dict(sd15)
    m["model"], calls = _counting(m["model"])
    _qsched(comfy, m, sampler, "normal", comfy.QSchedSchedule.constant(2, 1.1, 0.9), steps=2, cfg=2.0)
    assert len(calls) == 2  # one (CFG-batched) call per step, as the native samplers


def test_few_step_sigmas_read_the_models_table(comfy, sd15, sd3):
    node = comfy.sampling.QSchedFewStepSigmas
    table = sd15["model"].get_model_object("model_sampling").sigmas.cpu()  # on the GPU once the model was loaded
    lcm = node.execute(sd15["model"], "lcm_original", 4)[0].cpu()
    torch.testing.assert_close(lcm, torch.cat([table[[999, 759, 499, 259]].float(), torch.zeros(1)]))
    trailing = node.execute(sd15["model"], "turbo_trailing", 4)[0]
    torch.testing.assert_close(trailing, torch.cat([table[[999, 749, 499, 249]].float(), torch.zeros(1)]))
    flow = node.execute(sd3["model"], "flow_shift1", 4)[0]
    torch.testing.assert_close(flow, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert len(node.execute(sd15["model"], "lcm_original", 2, denoise=0.5)[0]) == 3


def test_coefficients_node_builds_and_validates(comfy):
    node, S = comfy.sampling.QSchedCoefficients, comfy.QSchedSchedule
    linear = node.execute(4, "linspace", 1.2, 0.8, 1.0, 1.0, "", "")[0]
    assert linear == S.linear(4, 1.2, 0.8)
    assert linear.c_x[0] == pytest.approx(1.2) and linear.c_x[-1] == pytest.approx(1.0)
    listed = node.execute(3, "list", 1, 1, 1, 1, "1.1, 1.0,0.95", "0.9,1,1", "lcm")[0]
    assert listed.c_x == (1.1, 1.0, 0.95) and listed.c_eps == (0.9, 1.0, 1.0) and listed.sampler == "lcm"
    assert node.validate_inputs(3, "list", "1.1, 1.0,0.95", "0.9,1,1") is True
    assert "c_eps_list has 2 values but steps is 3" in node.validate_inputs(3, "list", "1,1,1", "1,1")
    assert "entry 2 ('abc') is not a number" in node.validate_inputs(3, "list", "1,abc,1", "1,1,1")
    assert "not positive" in node.validate_inputs(2, "list", "1,0", "1,1")
    assert "not finite" in node.validate_inputs(2, "list", "1,nan", "1,1")
    # ComfyUI leaves the inputs named by validate_inputs to it: their range and choices are checked there too
    assert node.validate_inputs(0, "linspace", "", "") == "steps is 0: give a whole number from 1 to 1000"
    assert node.validate_inputs(1001, "list", "1", "1").startswith("steps is 1001")
    assert node.validate_inputs(2, "spline", "1,1", "1,1") == "mode is 'spline': choose linspace or list"
    assert node.validate_inputs(None, "list", None, "1,1") is True  # linked inputs: checked when the node runs
    with pytest.raises(comfy.ScheduleError, match="c_x_list has 1 values but steps is 2"):
        node.execute(2, "list", 1, 1, 1, 1, "1", "1,1")


# --- per-step offsets on the noise prediction (eps' = c_eps * eps - b) -------------------------------------------

@pytest.mark.parametrize("model_name,sampler,scheduler", [("sd15", "lcm", "lcm_original"), ("sd15", "tcd", "normal"),
                                                          ("sd15", "euler", "normal"),
                                                          ("sd15", "euler_ancestral", "normal"),
                                                          ("sd3", "euler", "flow_shift1"),
                                                          ("sd3", "euler_ancestral", "simple"),
                                                          ("sd3", "lcm", "simple")])
def test_zero_offsets_sample_bit_identically_in_comfyui(comfy, sd15, sd3, model_name, sampler, scheduler):
    m = {"sd15": sd15, "sd3": sd3}[model_name]
    channels = m["latent"]["samples"].shape[1]
    plain = comfy.QSchedSchedule.linear(3, 0.95, 1.05)
    reference = _qsched(comfy, m, sampler, scheduler, plain)
    for offset in ([0.0] * 3, [[0.0] * channels] * 3):
        zero = comfy.QSchedSchedule.from_lists(plain.c_x, plain.c_eps, offset=offset)
        assert torch.equal(_qsched(comfy, m, sampler, scheduler, zero), reference)
    shifted = comfy.QSchedSchedule.from_lists(plain.c_x, plain.c_eps, offset=[0.0, 0.02, 0.0])
    assert (_qsched(comfy, m, sampler, scheduler, shifted) - reference).abs().max() > 1e-4


def test_one_lcm_step_adds_sigma_times_the_channel_offset_to_comfyuis_denoised(comfy, sd15):
    """One LCM step returns D' = D + sigma * b; ComfyUI hands back process_latent_out of it, so channel c of the
    output moves by sigma_0 * b_c / scale_factor and nothing else changes."""
    b = [0.05, -0.03, 0.0, 0.02]
    plain = _qsched(comfy, sd15, "lcm", "lcm_original", comfy.QSchedSchedule.identity(1), steps=1)
    shifted = _qsched(comfy, sd15, "lcm", "lcm_original", comfy.QSchedSchedule.from_lists([1.0], [1.0], offset=[b]),
                      steps=1)
    sigma0 = float(comfy.sampling.scheduler_sigmas(sd15["model"], "lcm_original", 1)[0])
    scale = sd15["model"].model.latent_format.scale_factor
    expected = torch.tensor(b).reshape(1, 4, 1, 1) * sigma0 / scale
    torch.testing.assert_close(shifted - plain, expected.expand_as(plain), rtol=1e-4, atol=1e-4)


def test_an_offset_for_another_channel_count_fails_before_any_model_call(comfy, sd3):
    m = dict(sd3)
    m["model"], calls = _counting(m["model"])
    schedule = comfy.QSchedSchedule.from_lists([1.0] * 3, [1.0] * 3, offset=[[0.1, 0.0, 0.0, 0.0]] * 3)
    with pytest.raises(comfy.ScheduleError, match="4 values per step .* latent has 16 channels"):
        _qsched(comfy, m, "euler", "flow_shift1", schedule)
    assert calls == []
