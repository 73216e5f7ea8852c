"""Quantized loaders in real ComfyUI (COMFYUI_DIR): tiny SD1.5 fixture, LoRA through ComfyUI's LoraLoader,
low-VRAM (per-call weight casting + LowVramPatch), the cache, bad files, and a whole workflow on the server."""
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from comfy_fixtures import CLIP_L, SD15_CHECKPOINT, load_example_workflow, ui_workflow_to_prompt

LORA = "qsched_tiny_sd15_lora.safetensors"
# fp8: torch._scaled_mm on CPU here, on Ada/Hopper in the GPU run; int8: torch._int_mm on CPU here and on GPUs
LORA_BACKENDS = ["simulate", "fp8", "int8"]


@pytest.fixture(scope="module")
def env(comfyui_dir, comfy_models):
    import comfy.model_management
    import folder_paths
    import nodes
    for name, path in comfy_models.folders.items():
        folder_paths.add_model_folder_path(name, path)
    folder_paths.add_model_folder_path("diffusion_models", comfy_models.folder("clip"))  # a file that is no backbone
    from comfyui_qsched.nodes import loaders
    return {"nodes": nodes, "loaders": loaders, "mm": comfy.model_management, "models": comfy_models}


def build_lora(env, patcher, seed=5):
    """Rank-4 LoRA on every attention/feed-forward linear of the tiny UNet, in kohya key format."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in patcher.model.diffusion_model.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0", "ff.net.2")):
            out_features, in_features = module.out_features, module.in_features
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(4, in_features, generator=generator) / in_features ** 0.5
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator) * 0.2
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    path = env["models"].path("loras", LORA)
    save_file(tensors, path)
    return LORA


def load(env, quantization="W8A8", backend="simulate", policy="", cache="off"):
    if quantization is None:
        return env["nodes"].CheckpointLoaderSimple().load_checkpoint(SD15_CHECKPOINT)[0]
    loader = env["loaders"].QSchedQuantizedCheckpointLoader
    return loader.execute(SD15_CHECKPOINT, quantization, backend, policy, cache).result


def denoise(env, patcher, lowvram_bytes=0):
    """One model call through ComfyUI's loading path (patches applied as ComfyUI applies them)."""
    torch.manual_seed(0)
    device = env["mm"].get_torch_device()
    x, context = torch.randn(1, 4, 16, 16).to(device), torch.randn(1, 77, 768).to(device)
    env["mm"].unload_all_models()
    if lowvram_bytes:
        patcher.load(device, lowvram_model_memory=lowvram_bytes, force_patch_weights=False)
        layers = list(patcher.model.diffusion_model.modules())
        assert any(getattr(layer, "comfy_cast_weights", False) for layer in layers)
        if patcher.patches:  # LoRA in low-VRAM mode: applied per call through LowVramPatch weight functions
            assert any(len(getattr(layer, "weight_function", ())) for layer in layers)
    else:
        env["mm"].load_models_gpu([patcher])
    with torch.no_grad():
        out = patcher.model.apply_model(x, torch.tensor([1.0], device=device), c_crossattn=context)
    patcher.unpatch_model()
    return out.cpu()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_loader_quantizes_the_backbone_and_reports_it(env):
    reference = load(env, None)
    model, clip, vae, summary = load(env, "W4A8")
    assert "layers quantized" in summary and "MiB ->" in summary
    assert clip is not None and vae is not None
    assert model.model_size() < 0.45 * reference.model_size()
    backbone = model.model.diffusion_model
    assert backbone.input_blocks[1][1].transformer_blocks[0].attn1.to_q.weight.dtype == torch.uint8
    assert backbone.input_blocks[0][0].weight.is_floating_point()  # conv_in kept
    import comfy.ops
    assert isinstance(backbone.input_blocks[1][1].transformer_blocks[0].attn1.to_q, comfy.ops.CastWeightBiasOp)
    errors = {spec: rel(denoise(env, load(env, spec)[0]), denoise(env, reference)) for spec in ("W8A8", "W4A4")}
    assert errors["W8A8"] < 0.05 and errors["W8A8"] < errors["W4A4"], errors


@pytest.mark.parametrize("backend", LORA_BACKENDS)
@pytest.mark.parametrize("spec", ["W8A8", "W8A8-r8"])  # -r8: the LoRA goes into the residual codes beside the branch
@pytest.mark.parametrize("lowvram", [False, True])
def test_lora_applies_on_dequantized_weights(env, lowvram, spec, backend):
    nodes = env["nodes"]
    reference = load(env, None)
    quantized = load(env, spec, backend=backend)[0]
    lora = build_lora(env, reference)
    budget = 1 if lowvram else 0  # 1 byte: every layer stays "offloaded" and casts per call (LowVramPatch)
    ref_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(reference, lora, 1.0)[0]
    q_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(quantized, lora, 1.0)[0]
    codes_before = quantized.model.diffusion_model.middle_block[1].transformer_blocks[0].attn2.to_q.weight.clone()
    plain, with_lora = denoise(env, quantized, budget), denoise(env, q_lora, budget)
    float_plain, float_lora = denoise(env, reference), denoise(env, ref_lora)
    lora_effect = rel(float_lora, float_plain)
    assert lora_effect > 0.05, "the test LoRA must change the output noticeably"
    assert rel(with_lora, plain) > 0.5 * lora_effect
    # quantized + LoRA ~ float + LoRA; e4m3 keeps 3 mantissa bits where int8 keeps 7
    assert rel(with_lora, float_lora) < (0.1 if backend == "fp8" else 0.05)
    layer = quantized.model.diffusion_model.middle_block[1].transformer_blocks[0].attn2.to_q
    after = layer.weight
    assert (layer.quant_spec.rank == 8) == spec.endswith("-r8")
    assert codes_before.dtype == (torch.float8_e4m3fn if backend == "fp8" else torch.int8)
    assert after.dtype == codes_before.dtype and torch.equal(after.cpu(), codes_before.cpu())  # unpatched: codes restored
    assert rel(denoise(env, quantized, budget), plain) == 0.0


@pytest.mark.parametrize("spec", ["W4A8", "W4A8-g32-r8"])
def test_lora_per_call_in_low_vram_equals_lora_merged_at_load(env, monkeypatch, spec):
    """Both requantize the LoRA-patched weight onto the layer's scales, whichever way ComfyUI hands it over, in the
    dtype the host does LoRA arithmetic in. ComfyUI 0.33 uses float16 on GPUs that run it well (float32 on the
    CPU), forced here on the CPU through its per-device cache; 0.3.64 always uses float32. In float32 both ways
    give the same codes. In float16 ComfyUI itself rounds a merged patch (float32 product, float16 sum) and a
    per-call one (float16 throughout) differently, and int4 rounding magnifies that: the two must still differ by
    far less than the LoRA changes the output."""
    quantized = load(env, spec)[0]
    q_lora = env["nodes"].LoraLoaderModelOnly().load_lora_model_only(quantized, build_lora(env, quantized), 1.0)[0]
    lora_effect = rel(denoise(env, q_lora), denoise(env, quantized))
    host_dtypes = getattr(env["mm"], "LORA_COMPUTE_DTYPES", None)
    for dtype in [torch.float32] if host_dtypes is None else [torch.float32, torch.float16]:
        if host_dtypes is not None:
            monkeypatch.setitem(host_dtypes, env["mm"].get_torch_device(), dtype)
        difference = rel(denoise(env, q_lora, lowvram_bytes=1), denoise(env, q_lora))
        if dtype == torch.float32:
            assert difference == 0.0
        else:
            assert difference < 0.2 * lora_effect, (difference, lora_effect)


@pytest.mark.parametrize("spec", ["W4A8", "W4A4-g32-r8"])
def test_lowvram_matches_full_load(env, spec):
    model = load(env, spec)[0]
    assert rel(denoise(env, model, lowvram_bytes=1), denoise(env, model)) < 1e-6
    if spec.endswith("-r8"):  # offloading moves the branch with the layer: ComfyUI's size accounting includes it
        layer = model.model.diffusion_model.middle_block[1].transformer_blocks[0].attn2.to_q
        assert layer.lowrank_down.shape == (8, layer.in_features)
        assert "lowrank_down" in dict(layer.named_buffers()) and layer.lowrank_up.dtype in (torch.bfloat16,
                                                                                           torch.float16)


@pytest.mark.parametrize("spec", ["W4A8", "W4A4-g64-r32", "W4A4-g64-ag64-r32"])
def test_cache_round_trip_through_the_node(env, tmp_path, spec):
    import folder_paths
    from comfyui_qsched.quant.options import CACHE_FOLDER
    folder_paths.folder_names_and_paths[CACHE_FOLDER] = ([str(tmp_path)], set())
    first = load(env, spec, cache="on")
    second = load(env, spec, cache="on")
    assert first[3].endswith("cache written") and second[3].endswith("cache hit")
    assert rel(denoise(env, second[0]), denoise(env, first[0])) == 0.0
    assert len(os.listdir(tmp_path)) == 1
    specs = {str(layer.quant_spec) for layer in second[0].model.diffusion_model.modules()
             if getattr(layer, "quant_spec", None) is not None}
    assert spec in specs  # the cache gives back the spec it was written with (activation groups included)


def test_the_model_knows_its_quantizer_and_the_preset_loader_names_another(env, tmp_path, caplog):
    import folder_paths
    from comfyui_qsched.calibration import presets
    from comfyui_qsched.comfy_adapter.calibration import user_preset_folder
    from comfyui_qsched.comfy_adapter.loading import quantizer_of
    from comfyui_qsched.nodes.presets import QSchedLoadPreset
    from comfyui_qsched.samplers import QSchedSchedule
    model = load(env, "W4A4-g64-r32")[0]
    assert quantizer_of(model) == {"spec": "W4A4-g64-r32", "backend": "simulate"}
    assert quantizer_of(load(env, None)) is None
    saved = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        schedule = QSchedSchedule.from_lists([1.0, 1.0], [1.0, 1.0], sampler="lcm")
        for name, spec, sha in (("same", "W4A4-g64-r32", None), ("other", "W4A8", None), ("hashed", "W4A8", "0" * 64)):
            presets.save_preset(user_preset_folder(), name, presets.make_preset(
                schedule, model_name="tiny", model_hash=sha, quantizer={"spec": spec, "backend": "simulate"}))
        named = "fitted on W4A8 (simulate backend), this model has W4A4-g64-r32 (simulate backend)"
        with caplog.at_level("WARNING", logger="qsched.presets"):
            QSchedLoadPreset.execute("same.json", model=model)
            assert "fitted on" not in caplog.text
            QSchedLoadPreset.execute("other.json", model=model)  # no model hash recorded: a warning only
        assert named in caplog.text
        with pytest.raises(presets.PresetModelMismatch, match=re.escape(named)):  # the refusal names both
            QSchedLoadPreset.execute("hashed.json", model=model)
    finally:
        folder_paths.set_user_directory(saved)


def test_bad_files_and_backends_are_named(env):
    loader = env["loaders"].QSchedQuantizedDiffusionModelLoader
    with pytest.raises(ValueError, match=f"{CLIP_L}: not a diffusion backbone"):
        loader.execute(CLIP_L, "W8A8", "simulate", "", "off")
    with pytest.raises(ValueError, match="bitsandbytes does W8A8"):
        load(env, "W4A8", backend="bitsandbytes")
    with pytest.raises(ValueError, match="first_last must be"):
        load(env, "W8A8", policy="first_last=maybe")
    for node in (loader, env["loaders"].QSchedQuantizedCheckpointLoader):  # the same, when the prompt is queued
        assert node.validate_inputs("first_last=maybe") == "layer_policy: first_last must be 'on' or 'off', got 'maybe'"
        assert node.validate_inputs("*.qkv=W8A8, first_last=off") is True
    already = env["models"].path("diffusion_models", "already_quantized.safetensors")
    save_file({"blocks.0.weight": torch.zeros(4, 4, dtype=torch.int8),
               "blocks.0.comfy_quant": torch.zeros(2, dtype=torch.uint8)}, already)
    with pytest.raises(ValueError, match="already_quantized.safetensors is already quantized"):
        loader.execute("already_quantized.safetensors", "W8A8", "simulate", "", "off")


def test_quantized_workflow_with_lora_runs_on_the_server(comfy_server, env):
    build_lora(env, load(env, None))
    graph = {
        "1": {"class_type": "QSchedQuantizedCheckpointLoader", "inputs": {
            "ckpt_name": SD15_CHECKPOINT, "quantization": "W4A8", "backend": "simulate", "layer_policy": "",
            "cache": "off"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": LORA,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["2", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "lcm", "scheduler": "normal",
            "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "qsched_quant"}},
    }
    images = comfy_server.output_images(comfy_server.run(graph, timeout=300))
    assert len(images) == 1 and os.path.isfile(images[0])
    assert "Q-Sched quantized qsched_tiny_sd15.safetensors: W4A8 via simulate" in comfy_server.log()


def test_example_workflow_runs_on_the_tiny_checkpoint(comfy_server):
    prompt = ui_workflow_to_prompt(load_example_workflow("quantized_qsched_txt2img"), comfy_server.object_info())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "QSchedQuantizedCheckpointLoader":
            inputs["ckpt_name"] = SD15_CHECKPOINT
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
    images = comfy_server.output_images(comfy_server.run(prompt, timeout=300))
    assert len(images) == 1 and os.path.isfile(images[0])
