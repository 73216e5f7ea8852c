"""GPU run only (QSCHED_TEST_DEVICE=cuda): LoRA on quantized layers under ComfyUI's DynamicVRAM model patcher
(ModelPatcherDynamic + comfy-aimdo), the default on NVIDIA GPUs since ComfyUI 0.33 when it starts via main.py.
Enabled here in-process the way main.py enables it; the tiny SD1.5 checkpoint and LoRA of the quant-loader tests."""
import pytest
import torch

from test_comfy_quant_loaders import build_lora, denoise, env, load, rel  # noqa: F401  (env: the module fixture)


@pytest.fixture(scope="module")
def dynamic_vram(env):  # noqa: F811
    import comfy.cli_args
    import comfy.model_management
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("this ComfyUI has no DynamicVRAM (before 0.33)")
    import comfy.memory_management
    import comfy_aimdo.control
    try:
        comfy_aimdo.control.init(simple_vram_headroom=None)
    except TypeError:
        comfy_aimdo.control.init()
    devices = comfy.model_management.get_all_torch_devices()
    headroom = int(getattr(comfy.cli_args.args, "vram_headroom", 0) * 1024 ** 3)
    try:
        initialized = comfy_aimdo.control.init_devices((d.index, headroom) for d in devices)
    except TypeError:
        initialized = comfy_aimdo.control.init_devices(d.index for d in devices)
    assert initialized, "comfy-aimdo did not initialise on this GPU"
    saved = comfy.model_patcher.CoreModelPatcher, comfy.memory_management.aimdo_enabled
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    yield comfy.model_patcher.ModelPatcherDynamic
    comfy.model_management.unload_all_models()
    comfy.model_patcher.CoreModelPatcher, comfy.memory_management.aimdo_enabled = saved


@pytest.mark.parametrize("backend", ["simulate", "fp8"])
def test_lora_applies_on_quantized_layers_under_dynamic_vram(env, dynamic_vram, backend):  # noqa: F811
    nodes = env["nodes"]
    reference = load(env, None)
    quantized = load(env, "W8A8", backend=backend)[0]
    assert isinstance(quantized, dynamic_vram) and isinstance(reference, dynamic_vram)
    lora = build_lora(env, reference)
    ref_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(reference, lora, 1.0)[0]
    q_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(quantized, lora, 1.0)[0]
    plain, with_lora = denoise(env, quantized), denoise(env, q_lora)
    float_plain, float_lora = denoise(env, reference), denoise(env, ref_lora)
    lora_effect = rel(float_lora, float_plain)
    assert lora_effect > 0.05, "the test LoRA must change the output noticeably"
    assert rel(plain, float_plain) < (0.05 if backend == "simulate" else 0.1)
    assert rel(with_lora, plain) > 0.5 * lora_effect
    assert rel(with_lora, float_lora) < (0.05 if backend == "simulate" else 0.1)
    assert rel(denoise(env, quantized), plain) == 0.0  # the LoRA clone left the shared weights as they were
