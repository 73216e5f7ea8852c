"""Batched calibration in real ComfyUI: the generator's images at batch N equal each item generated alone
(batch 1) within float tolerance, across candidates, prompts of different token lengths, samplers, cfg and a
flow model; batches follow ComfyUI's free memory; the node finds the same schedule and log at any batch size.

Needs COMFYUI_DIR; tiny random SD1.5 and SD3 models from the harness, a tiny random open_clip scorer.
"""
import json
import os

import pytest
import torch

from comfy_fixtures import CLIP_L, SD3_UNET, SD15_CHECKPOINT, rounding_tolerance
from test_metrics_fixtures import save_open_clip, tiny_vit_clip

LONG_PROMPT = " ".join(["a tall lighthouse on a rocky coast under a stormy sky with waves"] * 8)  # > 77 tokens
PROMPTS = ["a red cube on a table", LONG_PROMPT, "a green field under a blue sky", "a cat"]


@pytest.fixture(scope="module")
def sd15(comfyui_dir, comfy_models):
    import comfy.sd
    return comfy.sd.load_checkpoint_guess_config(comfy_models.path("checkpoints", SD15_CHECKPOINT))[:3]


@pytest.fixture(scope="module")
def sd3(comfyui_dir, comfy_models):
    import comfy.sd
    import folder_paths
    import nodes
    folder_paths.add_model_folder_path("vae_approx", comfy_models.folder("vae_approx"))
    model = comfy.sd.load_diffusion_model(comfy_models.path("unet", SD3_UNET))
    clip = comfy.sd.load_clip([comfy_models.path("clip", CLIP_L)], clip_type=comfy.sd.CLIPType.SD3)
    return model, clip, nodes.VAELoader().load_vae("taesd3")[0]


class RecordingVAE:
    """The real VAE, keeping the latents it decodes."""

    def __init__(self, vae):
        self.vae, self.latents = vae, []

    def decode(self, samples):
        self.latents.append(samples.clone())
        return self.vae.decode(samples)


def _generator(models, max_batch, sampler="lcm", scheduler="lcm_original", cfg=1.0, steps=2, vae=None):
    from comfyui_qsched.comfy_adapter.calibration import make_generator
    model, clip, model_vae = models
    return make_generator(model, clip, vae or model_vae, sampler_name=sampler, scheduler=scheduler, steps=steps,
                          cfg=cfg, seed=5, width=64, height=64, prompts=PROMPTS, max_batch=max_batch)


def _items(steps=2):
    from comfyui_qsched.samplers import QSchedSchedule
    a, b = QSchedSchedule.linear(steps, 0.85, 1.15), QSchedSchedule.linear(steps, 1.1, 0.9)
    return [(a, 0), (b, 1), (a, 2), (QSchedSchedule.identity(steps), 1), (b, 3), (a, 1)]


CASES = [("sd15", "lcm", "lcm_original", 1.0), ("sd15", "euler_ancestral", "normal", 2.0),
         ("sd15", "tcd", "lcm_original", 1.0), ("sd3", "euler_ancestral", "simple", 1.0)]


ONE_LEVEL = 4e-3   # about one 8-bit level of a decoded image in [0, 1]


def assert_same_images(images, expected, dtype):
    """Within one 8-bit level everywhere when ComfyUI computes in float32. In 16 bit (the GPU run) the random TAESD
    amplifies the latents' rounding until a few pixels saturate the other way (H200: 0.2% of values), so there at
    most 0.5% of the values may differ by more than a level."""
    if dtype == torch.float32:
        torch.testing.assert_close(images, expected, rtol=0, atol=ONE_LEVEL)
    else:
        assert ((images - expected).abs() > ONE_LEVEL).float().mean().item() < 5e-3


def _sampled_alone(models, item, sampler, scheduler, cfg, steps=2):
    """The batch-1 twin: what Q-Sched KSampler's path gives for this prompt with seed + i (latent, image)."""
    from comfyui_qsched.comfy_adapter.conditioning import TextConditioning
    from comfyui_qsched.comfy_adapter.sampling import sample_with_schedule
    model, clip, vae = models
    schedule, index = item
    encode = TextConditioning(clip)
    channels = model.get_model_object("latent_format").latent_channels
    latent = sample_with_schedule(model, 5 + index, steps, cfg, sampler, scheduler, encode(PROMPTS[index]),
                                  encode(""), {"samples": torch.zeros(1, channels, 8, 8)}, schedule)["samples"]
    return latent, vae.decode(latent).reshape(-1, 64, 64, 3).float()


@pytest.mark.parametrize("model_name,sampler,scheduler,cfg", CASES, ids=[f"{c[0]}-{c[1]}-cfg{c[3]:g}" for c in CASES])
def test_batched_images_equal_their_batch_one_twins(request, model_name, sampler, scheduler, cfg):
    """Each item of a batch (own schedule, own prompt, noise from seed + prompt index) equals what Q-Sched
    KSampler gives for it alone: latents to rounding (`rounding_tolerance` of their scale), decoded images within
    one 8-bit level (`assert_same_images`: the random TAESD amplifies the latents' rounding, and a batched decode
    rounds differently too)."""
    models = request.getfixturevalue(model_name)
    items = _items()
    twins = [_sampled_alone(models, item, sampler, scheduler, cfg) for item in items]
    latents_alone, alone = torch.cat([t[0] for t in twins]), torch.cat([t[1] for t in twins])
    many = RecordingVAE(models[2])
    batched = _generator(models, 6, sampler, scheduler, cfg, vae=many)(items)
    assert batched.shape == alone.shape == (6, 64, 64, 3)
    assert len(many.latents) == 2                               # the long prompt's two items form their own batch
    order = [0, 2, 4, 1, 3, 5]                                  # batches: short prompts first, then the long one
    latents_batched = torch.cat(many.latents)[torch.tensor(order).argsort()]
    dtype = models[0].model_dtype()
    scale, tolerance = latents_alone.abs().max().item(), rounding_tolerance(dtype)
    torch.testing.assert_close(latents_batched, latents_alone, rtol=tolerance, atol=tolerance * scale)
    assert_same_images(batched, alone, dtype)
    assert (alone[0] - alone[2]).abs().max() > 1e-2 and (alone[1] - alone[3]).abs().max() > 1e-3
    one_at_a_time = torch.cat([_generator(models, 1, sampler, scheduler, cfg)([item]) for item in items[:2]])
    assert_same_images(one_at_a_time, alone[:2], dtype)


def test_batches_follow_comfyuis_free_memory(sd15, monkeypatch):
    """With free memory for two samples, six items go through the model in batches of 2, 2, 2 (then the
    identity/long-prompt group splits by conditioning shape) and the images stay the same."""
    import comfy.model_management as mm
    from comfyui_qsched.comfy_adapter import calibration

    model = sd15[0]
    batches = []
    model = model.clone()
    model.set_model_unet_function_wrapper(lambda apply, args: (batches.append(args["input"].shape[0]),
                                                               apply(args["input"], args["timestep"], **args["c"]))[1])
    models = (model, sd15[1], sd15[2])
    full = _generator(models, 16)(_items())
    per_sample = model.model.memory_required([1, 4, 8, 8]) * calibration.MEMORY_MARGIN
    room = lambda device: mm.minimum_inference_memory() + model.model_size() - model.loaded_size() + 2.5 * per_sample
    monkeypatch.setattr(calibration, "free_memory", room)           # what ComfyUI would report on a small device
    assert calibration.memory_batch_limit(model, (4, 8, 8), 1.0) == 2
    assert calibration.memory_batch_limit(model, (4, 8, 8), 2.0) == 1   # cond and uncond per sample
    batches.clear()
    limited = _generator(models, 16)(_items())
    assert max(batches) == 2 and sum(batches) == 6 * 2              # 6 images x 2 steps, 2 at a time at most
    torch.testing.assert_close(limited, full, rtol=0, atol=ONE_LEVEL)


def test_prompts_of_different_token_lengths_go_in_separate_batches(sd15):
    from comfyui_qsched.comfy_adapter.calibration import conditioning_signature
    from comfyui_qsched.comfy_adapter.conditioning import TextConditioning
    encode = TextConditioning(sd15[1])
    short, long = encode(PROMPTS[0]), encode(LONG_PROMPT)
    assert short[0][0].shape[1] == 77 and long[0][0].shape[1] == 154
    assert conditioning_signature(short) == conditioning_signature(encode(PROMPTS[2]))
    assert conditioning_signature(short) != conditioning_signature(long)


@pytest.fixture(scope="module")
def scorer(comfyui_dir, tmp_path_factory):
    from comfyui_qsched.scoring import load_scorer
    path = save_open_clip(tiny_vit_clip(seed=5), tmp_path_factory.mktemp("scorer") / "tiny_clip.safetensors")
    return load_scorer(path, architecture="auto", device="cpu")


def test_node_calibration_is_the_same_at_any_batch_size(sd15, scorer, tmp_path):
    import folder_paths
    from comfyui_qsched.nodes import calibrate
    folder_paths.set_user_directory(str(tmp_path))
    summaries, logs = {}, {}
    for batch_size in (1, 8):
        output = calibrate.QSchedCalibrate.execute(
            *sd15, scorer, sampler_name="lcm", scheduler="lcm_original", steps=2, cfg=1.0, strategy="coarse_to_fine",
            budget_images=0, seed=3, prompts="\n".join(PROMPTS[:3]), width=64, height=64,
            preset_name=f"batch-{batch_size}", batch_size=batch_size)
        summaries[batch_size] = output.ui["qsched_calibration"][0]
        (log_file,) = os.listdir(tmp_path / "qsched_runs")
        entries = [json.loads(line) for line in (tmp_path / "qsched_runs" / log_file).read_text().splitlines()]
        logs[batch_size] = [entries[0]] + [e for e in entries[1:] if "key" in e]   # scored candidates, not the run line
        os.remove(tmp_path / "qsched_runs" / log_file)
    alone, batched = summaries[1], summaries[8]
    tolerance = 10 * rounding_tolerance(sd15[0].model_dtype())   # a score sums many rounded pixels and features
    assert batched["best"] == alone["best"]
    assert batched["images_generated"] == alone["images_generated"] > 30
    assert batched["best_score"] == pytest.approx(alone["best_score"], rel=tolerance)
    assert logs[8][0] == logs[1][0]                                   # same settings: the same log key
    assert [(e["key"], e["prompts"]) for e in logs[8][1:]] == [(e["key"], e["prompts"]) for e in logs[1][1:]]
    for one, other in zip(logs[1][1:], logs[8][1:]):
        assert other["scores"] == pytest.approx(one["scores"], rel=tolerance)


def test_on_the_cpu_batches_do_not_follow_the_memory_other_processes_leave(sd15, monkeypatch):
    """The CPU's available memory moves with the machine's load; batch sizes that followed it would change the
    scores' rounding, and the search's pick, from run to run. On the CPU the limit comes from the total memory; on a
    GPU from what ComfyUI reports free there."""
    import comfy.model_management as mm
    from comfyui_qsched.comfy_adapter import calibration

    monkeypatch.setattr(mm, "get_free_memory", lambda *args, **kwargs: 1 << 20)       # a busy machine: 1 MiB left
    monkeypatch.setattr(mm, "get_total_memory", lambda *args, **kwargs: 64 << 30)
    assert calibration.free_memory(torch.device("cpu")) == 64 << 30
    assert calibration.free_memory(torch.device("cuda", 0)) == 1 << 20
    model = sd15[0]
    expected = 1 if model.load_device.type != "cpu" else None
    limit = calibration.memory_batch_limit(model, (4, 8, 8), 1.0)
    assert limit == expected if expected is not None else limit > 16
