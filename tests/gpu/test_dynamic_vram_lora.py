"""GPU run only (QSCHED_TEST_DEVICE=cuda, ComfyUI 0.33+): quantized layers, and LoRA on them, under ComfyUI's
DynamicVRAM model patcher (ModelPatcherDynamic + comfy-aimdo), its default on NVIDIA GPUs when it starts through
main.py. Enabled in-process the way main.py enables it (conftest.py loads comfy-aimdo first); the tiny SD1.5
checkpoint and LoRA of the quant-loader tests.

DynamicVRAM loads a checkpoint lazily in its stored precision and casts at each call, so the pack quantizes the
weights as stored (float32 here), where the legacy patcher hands it the weights already cast to the compute dtype
(float16 on this GPU): the two give slightly different codes, hence outputs. So the codes are checked against a
quantization of the checkpoint's own weights, and the outputs against the float model under the same patcher."""
import pytest

from test_comfy_quant_loaders import build_lora, denoise, env, load, rel  # noqa: F401  (env: the module fixture)
from comfy_fixtures import SD15_CHECKPOINT

CASES = [("W8A8", "simulate"), ("W8A8", "fp8"), ("W4A8", "simulate"), ("W8A8-r8", "simulate"), ("W8A8-r8", "fp8")]
# Relative L2 to the float model's output, as in the legacy-patcher tests. The tiny random UNet amplifies 4-bit
# error (W4A8 is about as far from float as the LoRA's own effect), so W4A8 is checked through its codes only.
OUTPUT_BOUND = {("W8A8", "simulate"): 0.05, ("W8A8", "fp8"): 0.1, ("W8A8-r8", "simulate"): 0.05,
                ("W8A8-r8", "fp8"): 0.1}
# Quantizing the float16-cast weights instead of the stored ones (the legacy patcher on this GPU) changes 0.71% of
# the W8A8 codes and 0.04% of the W4A8 ones (H200): the bound tells the two apart at W8A8 and catches corrupted
# codes at either width.
CODE_MISMATCH_BOUND = 1e-3


@pytest.fixture(scope="module")
def dynamic_vram(env):  # noqa: F811
    import comfy.cli_args
    import comfy.memory_management
    import comfy.model_management
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("this ComfyUI has no DynamicVRAM (before 0.33)")
    import comfy_aimdo.control
    import comfy_aimdo.host_buffer
    assert comfy_aimdo.host_buffer.lib is not None, "comfy-aimdo's native library did not load"
    devices = comfy.model_management.get_all_torch_devices()
    headroom = int(getattr(comfy.cli_args.args, "vram_headroom", 0) * 1024 ** 3)
    try:
        initialized = comfy_aimdo.control.init_devices((d.index, headroom) for d in devices)
    except TypeError:   # comfy-aimdo 0.4.9's protocol, as main.py falls back to
        initialized = comfy_aimdo.control.init_devices(d.index for d in devices)
    assert initialized, "comfy-aimdo did not initialise on this GPU"
    comfy.model_management.unload_all_models()
    saved = comfy.model_patcher.CoreModelPatcher, comfy.memory_management.aimdo_enabled
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    yield comfy.model_patcher.ModelPatcherDynamic
    comfy.model_management.unload_all_models()
    comfy.model_patcher.CoreModelPatcher, comfy.memory_management.aimdo_enabled = saved


def code_mismatch(patcher, env):  # noqa: F811
    """Fraction of the packed layers' codes that differ from a quantization of the checkpoint's stored weights."""
    from safetensors.torch import load_file

    from comfyui_qsched.quant import numerics
    from comfyui_qsched.quant.layers import PackedWeightMixin
    stored = load_file(env["models"].path("checkpoints", SD15_CHECKPOINT))
    differ = total = 0
    for name, layer in patcher.model.diffusion_model.named_modules():
        if isinstance(layer, PackedWeightMixin) and layer.quant_spec is not None:
            weight = stored[f"model.diffusion_model.{name}.weight"].float()
            spec = layer.quant_spec
            if spec.rank:  # the codes hold the residual beside the branch the layer stores
                weight = weight - layer.branch_weight(device="cpu")
            expected, _ = numerics.quantize_weight(weight.reshape(weight.shape[0], -1), spec.w_bits, spec.group_size)
            differ += (layer.codes(layer.weight.cpu()) != expected).sum().item()
            total += expected.numel()
    assert total > 0, "no packed layer found"
    return differ / total


@pytest.mark.parametrize("case", CASES, ids=[f"{q}-{b}" for q, b in CASES])
def test_quantized_model_and_lora_under_dynamic_vram(env, dynamic_vram, case):  # noqa: F811
    quantization, backend = case
    nodes = env["nodes"]
    reference = load(env, None)
    quantized = load(env, quantization, backend=backend)[0]
    assert isinstance(quantized, dynamic_vram) and isinstance(reference, dynamic_vram)
    lora = build_lora(env, reference)
    q_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(quantized, lora, 1.0)[0]
    ref_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(reference, lora, 1.0)[0]
    plain, with_lora, plain_again = denoise(env, quantized), denoise(env, q_lora), denoise(env, quantized)
    float_plain, float_lora = denoise(env, reference), denoise(env, ref_lora)
    lora_effect = rel(float_lora, float_plain)
    assert lora_effect > 0.05, "the test LoRA must change the output noticeably"
    assert rel(with_lora, plain) > 0.5 * lora_effect
    assert rel(plain_again, plain) == 0.0  # the LoRA clone left the shared weights as they were
    if backend == "simulate":
        assert code_mismatch(quantized, env) < CODE_MISMATCH_BOUND
    if case in OUTPUT_BOUND:
        assert rel(plain, float_plain) < OUTPUT_BOUND[case]
        assert rel(with_lora, float_lora) < OUTPUT_BOUND[case]
