"""The calibrated quantized loader in real ComfyUI (COMFYUI_DIR): the tiny SD1.5 backbone (Linear and Conv2d layers)
loaded through the node with the tiny checkpoint's CLIP, its planned layers rounded by GPTQ in passes; against the FP
model on the calibration's own samples it beats the round-to-nearest load; the cache returns the same tensors and
misses on other settings; a small budget gives the codes of one pass; an interrupt stops cleanly; presets record
the rounding."""
import os
import re

import pytest
import torch

from comfy_fixtures import SD15_CHECKPOINT

PROMPTS = "a red fox in the snow\na lighthouse in a storm\na bowl of lemons on a table"
SETTINGS = dict(prompts=PROMPTS, n_prompts=0, seed=3, sampler_name="lcm", scheduler="lcm_original", steps=2, cfg=1.0,
                width=64, height=64, batch_size=3)
LARGE_BUDGET = 64.0  # GiB: every layer in one pass


@pytest.fixture(scope="module", autouse=True)
def every_layer_sampled_enough():
    """The tiny model at 64 x 64 sees fewer calibration rows per input column than quant.gptq.MIN_ROWS_PER_COLUMN
    asks for in most layers: these plumbing tests round every layer by GPTQ; the rule has its own test below."""
    from comfyui_qsched.quant import gptq
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gptq, "MIN_ROWS_PER_COLUMN", 0.0)
        yield


@pytest.fixture(scope="module")
def env(comfyui_dir, comfy_models):
    import comfy.model_management
    import folder_paths
    import nodes
    for name, path in comfy_models.folders.items():
        folder_paths.add_model_folder_path(name, path)
    folder_paths.add_model_folder_path("diffusion_models", comfy_models.folder("checkpoints"))  # UNETLoader reads it
    clip = nodes.CheckpointLoaderSimple().load_checkpoint(SD15_CHECKPOINT)[1]
    from comfyui_qsched.nodes import calibrated_loader, loaders
    return {"nodes": nodes, "node": calibrated_loader.QSchedCalibratedDiffusionModelLoader, "loaders": loaders,
            "mm": comfy.model_management, "clip": clip}


@pytest.fixture(scope="module")
def calibrated(env):
    """(MODEL, summary) of the calibrated W4A8 load with every layer in one pass, shared by the tests that read it."""
    return load(env)


def load(env, quantization="W4A8", budget=LARGE_BUDGET, cache="off", **changes):
    return env["node"].execute(SD15_CHECKPOINT, env["clip"], quantization, "simulate", "", cache, budget,
                               **{**SETTINGS, **changes}).result


def load_nearest(env, quantization="W4A8"):
    return env["loaders"].QSchedQuantizedDiffusionModelLoader.execute(SD15_CHECKPOINT, quantization, "simulate", "",
                                                                      "off").result


def load_float(env):
    return env["nodes"].UNETLoader().load_unet(SD15_CHECKPOINT, "default")[0]


def calibration_latents(env, model):
    """The calibration's own samples (its prompts, seeds, sampler), from `model`."""
    from comfyui_qsched.comfy_adapter.calibration import make_generator
    from comfyui_qsched.calibration.prompts import parse_prompts
    settings = {k: v for k, v in SETTINGS.items() if k not in ("prompts", "n_prompts", "batch_size")}
    generate = make_generator(model, env["clip"], None, prompts=parse_prompts(PROMPTS), max_batch=3, **settings)
    with torch.no_grad():
        latents = generate([(None, i) for i in range(3)])
    env["mm"].unload_all_models()
    return latents.float().cpu()


def codes(model):
    return {name: tensor.clone() for name, tensor in model.model.diffusion_model.state_dict().items()}


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_planned_layers_are_gptq_rounded_and_closer_to_the_fp_model_than_nearest(env, calibrated):
    from comfyui_qsched.comfy_adapter.loading import quantizer_of
    from comfyui_qsched.quant.calibrated import gptq_layers
    fp = load_float(env)
    planned = gptq_layers(fp.model.diffusion_model, "W4A8")
    model, summary = calibrated
    assert f"GPTQ rounding on {len(planned)} of {len(planned)} quantized layers" in summary, summary
    assert "calibration: 3 prompts, lcm/lcm_original 2 steps, 64x64, cfg 1, seed 3, 1 passes" in summary
    assert len(planned) > 20 and any(".conv" in name or "in_layers.2" in name for name in planned)
    assert quantizer_of(model) == {"spec": "W4A8", "backend": "simulate", "rounding": "GPTQ"}
    reference = calibration_latents(env, fp)
    error_gptq = rel(calibration_latents(env, model), reference)
    error_nearest = rel(calibration_latents(env, load_nearest(env)[0]), reference)
    print(f"W4A8 per channel, tiny SD1.5, calibration samples vs FP: GPTQ {error_gptq:.4f}, "
          f"nearest {error_nearest:.4f}")
    assert error_gptq < 0.8 * error_nearest, (error_gptq, error_nearest)


def test_layers_with_too_few_calibration_rows_round_to_nearest(env, monkeypatch):
    from comfyui_qsched.quant import gptq
    monkeypatch.setattr(gptq, "MIN_ROWS_PER_COLUMN", 2.0)
    model, summary = load(env)
    match = re.search(r"GPTQ rounding on (\d+) of (\d+) quantized layers", summary)
    left = re.search(r"; (\d+) layers rounded to nearest \(under 2 calibration rows per input column\)", summary)
    assert match and left, summary
    calibrated, planned, nearest_count = int(match.group(1)), int(match.group(2)), int(left.group(1))
    assert calibrated + nearest_count == planned and nearest_count > 0
    mine, nearest = codes(model), codes(load_nearest(env)[0])
    same = [name for name in mine if name.endswith(".weight") and torch.equal(mine[name], nearest[name])]
    quantized = [name for name in mine if name.endswith(".weight_scale")]
    assert len(quantized) == planned
    assert len([name for name in same if name[:-len(".weight")] + ".weight_scale" in mine]) == nearest_count


def test_a_small_budget_runs_more_passes_and_gives_the_codes_of_one_pass(env, calibrated):
    from comfyui_qsched.quant.calibrated import gptq_layers, plan_module_passes
    from comfyui_qsched.quant.gptq import accumulator_bytes, moment_columns
    fp = load_float(env).model.diffusion_model
    layers = gptq_layers(fp, "W4A8")
    device = env["mm"].get_torch_device()   # where the activations and so the accumulators are
    largest = max(accumulator_bytes(moment_columns(fp.get_submodule(name)), device) for name in layers)
    passes = plan_module_passes(fp, list(layers), largest, device)
    assert len(passes) > 2
    small, small_summary = load(env, budget=largest / 2**30)
    one = calibrated[0]
    assert f"{len(passes)} passes" in small_summary
    small_codes, one_codes = codes(small), codes(one)
    assert small_codes.keys() == one_codes.keys()
    assert all(torch.equal(small_codes[key], one_codes[key]) for key in one_codes)
    with pytest.raises(ValueError, match=r"alone needs .* GiB for its input moments, over the budget"):
        load(env, budget=largest / 2**30 / 2)


def test_the_cache_returns_the_same_tensors_and_misses_on_other_settings(env, tmp_path):
    import folder_paths
    from comfyui_qsched.quant.options import CACHE_FOLDER
    folder_paths.folder_names_and_paths[CACHE_FOLDER] = ([str(tmp_path)], set())
    first, first_summary = load(env, cache="on")
    second, second_summary = load(env, cache="on")
    assert "cache written" in first_summary and "1 passes" in first_summary
    assert "cache hit" in second_summary and "0 passes" in second_summary
    assert re.search(r"GPTQ rounding on (\d+) of \1 quantized layers", second_summary)
    first_codes, second_codes = codes(first), codes(second)
    assert all(torch.equal(first_codes[key], second_codes[key]) for key in first_codes)
    _, other_seed = load(env, cache="on", seed=4)
    _, nearest = load_nearest_cached(env)
    assert all("cache written" in s for s in (other_seed, nearest)), (other_seed, nearest)
    assert len(os.listdir(tmp_path)) == 3


def load_nearest_cached(env):
    return env["loaders"].QSchedQuantizedDiffusionModelLoader.execute(SD15_CHECKPOINT, "W4A8", "simulate", "",
                                                                      "on").result


def test_an_interrupt_stops_the_passes_cleanly(env):
    from comfyui_qsched.comfy_adapter.calibrated_loading import CalibrationSampling
    from comfyui_qsched.quant.calibrated import gptq_layers
    mm = env["mm"]
    patcher = load_float(env)
    backbone = patcher.model.diffusion_model
    layers = gptq_layers(backbone, "W4A8")
    settings, round_layers = CalibrationSampling(env["clip"], LARGE_BUDGET, **SETTINGS)(patcher)
    first = backbone.get_submodule(next(iter(layers)))
    stop = first.register_forward_hook(lambda *_: mm.interrupt_current_processing(True))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            round_layers(layers)
    finally:
        stop.remove()
        mm.interrupt_current_processing(False)
    assert not any(module._forward_hooks for module in backbone.modules())  # the moments' hooks are gone
    assert all(p.is_floating_point() for p in backbone.parameters())
    assert settings["prompt_count"] == 3 and len(settings["text_encoding_sha256"]) == 64


def test_bad_settings_are_named(env):
    with pytest.raises(ValueError, match="n_prompts is 5 but there are only 3 prompts"):
        load(env, n_prompts=5)
    with pytest.raises(ValueError, match="moments_budget_gib must be positive"):
        load(env, budget=0.0)
    with pytest.raises(ValueError, match="calibrated rounding needs a CLIP"):
        env["node"].execute(SD15_CHECKPOINT, None, "W4A8", "simulate", "", "off", 1.0, **SETTINGS)


def test_a_preset_fitted_on_nearest_rounding_is_named_on_a_calibrated_model(env, calibrated, tmp_path, caplog):
    import folder_paths
    from comfyui_qsched.calibration import presets
    from comfyui_qsched.comfy_adapter.calibration import user_preset_folder
    from comfyui_qsched.nodes.presets import QSchedLoadPreset
    from comfyui_qsched.samplers import QSchedSchedule
    model = calibrated[0]
    saved = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        schedule = QSchedSchedule.from_lists([1.0, 1.0], [1.0, 1.0], sampler="lcm")
        for name, quantizer in (("nearest", {"spec": "W4A8", "backend": "simulate"}),
                                ("gptq", {"spec": "W4A8", "backend": "simulate", "rounding": "GPTQ"})):
            presets.save_preset(user_preset_folder(), name, presets.make_preset(schedule, model_name="tiny",
                                                                                quantizer=quantizer))
        with caplog.at_level("WARNING", logger="qsched.presets"):
            QSchedLoadPreset.execute("gptq.json", model=model)
            assert "fitted on" not in caplog.text
            QSchedLoadPreset.execute("nearest.json", model=model)
        assert ("fitted on W4A8 (simulate backend), this model has W4A8 (simulate backend, GPTQ rounding)"
                in caplog.text)
    finally:
        folder_paths.set_user_directory(saved)


def test_the_cache_key_follows_the_prompts_and_the_text_encoder_not_the_batch(env):
    from comfy_fixtures import CLIP_L
    from comfyui_qsched.comfy_adapter.calibrated_loading import CalibrationSampling
    other_clip = env["nodes"].CLIPLoader().load_clip(CLIP_L, "stable_diffusion")[0]
    key = CalibrationSampling(env["clip"], 1.0, **SETTINGS).settings()
    assert CalibrationSampling(env["clip"], 2.0, **{**SETTINGS, "batch_size": 1}).settings() == key
    for clip, changes in ((env["clip"], {"prompts": "a red fox in the snow"}), (env["clip"], {"steps": 3}),
                          (other_clip, {})):
        other = CalibrationSampling(clip, 1.0, **{**SETTINGS, **changes}).settings()
        assert other != key
    assert CalibrationSampling(other_clip, 1.0, **SETTINGS).settings()["text_encoding_sha256"] != \
        key["text_encoding_sha256"]


def test_a_flow_model_workflow_with_the_calibrated_loader_runs_on_the_server(comfy_server):
    """The tiny SD3 MMDiT (a flow model, Linear layers only) with its CLIP, calibrated in several passes inside a
    queued prompt (ComfyUI's inference mode, progress hook), then sampled and saved."""
    from comfy_fixtures import CLIP_L, SD3_UNET
    graph = {
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L, "type": "sd3"}},
        "unet": {"class_type": "QSchedCalibratedDiffusionModelLoader", "inputs": {
            "unet_name": SD3_UNET, "clip": ["clip", 0], "quantization": "W4A8-g64", "backend": "simulate",
            "layer_policy": "", "cache": "off", "prompts": "a red cube\na blue sphere", "n_prompts": 0, "seed": 1,
            "sampler_name": "euler", "scheduler": "simple", "steps": 2, "cfg": 1.0, "width": 64, "height": 64,
            "batch_size": 2, "moments_budget_gib": 0.004}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["clip", 0]}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "qsched_gptq"}},
    }
    images = comfy_server.output_images(comfy_server.run(graph, timeout=300))
    assert len(images) == 1 and os.path.isfile(images[0])
    log = comfy_server.log()
    match = re.search(r"Q-Sched quantized qsched_tiny_sd3\.safetensors: W4A8-g64 via simulate.*GPTQ rounding on "
                      r"(\d+) of (\d+) quantized layers.*calibration: 2 prompts, euler/simple 2 steps, 64x64, cfg 1, "
                      r"seed 1, (\d+) passes", log)
    assert match, log[-3000:]
    print(match.group(0))
    # in its own process, with quant.gptq's rule: layers short of calibration rows round to nearest, and are named
    calibrated, planned = int(match.group(1)), int(match.group(2))
    assert 0 < calibrated <= planned and planned > 8 and int(match.group(3)) > 1
    if calibrated < planned:
        assert f"{planned - calibrated} layers rounded to nearest (under 2 calibration rows per input column)" in log
