"""Group-wise W4A8 on the int8 and fp8 backends (the Triton GEMM on a GPU, its torch definition here) through the
quantized loader in real ComfyUI (COMFYUI_DIR): a LoRA through ComfyUI's LoraLoader merges on the group grid exactly
as the simulate backend's layers do, acts per call in low-VRAM loading, and unpatching restores the codes."""
import pytest
import torch

from test_comfy_quant_loaders import build_lora, denoise, env, load, rel  # noqa: F401  (env: the fixture)


def group_linears(patcher):
    from comfyui_qsched.quant.layers import PackedWeightMixin
    return {name: layer for name, layer in patcher.model.diffusion_model.named_modules()
            if isinstance(layer, PackedWeightMixin) and isinstance(layer, torch.nn.Linear)
            and layer.quant_spec is not None and layer.quant_spec.group_size}


@pytest.mark.parametrize("backend", ["int8", "fp8"])
@pytest.mark.parametrize("lowvram", [False, True])
def test_group_wise_w4a8_takes_a_lora_as_simulate_does(env, backend, lowvram):  # noqa: F811
    from comfyui_qsched.quant import fp8, int8
    spec, budget = "W4A8-g32", 1 if lowvram else 0
    lora_loader = env["nodes"].LoraLoaderModelOnly()
    simulated = load(env, spec, backend="simulate")[0]
    quantized = load(env, spec, backend=backend)[0]
    lora = build_lora(env, simulated)
    s_lora = lora_loader.load_lora_model_only(simulated, lora, 1.0)[0]
    q_lora = lora_loader.load_lora_model_only(quantized, lora, 1.0)[0]
    layers = group_linears(quantized)
    layer = quantized.model.diffusion_model.middle_block[1].transformer_blocks[0].attn2.to_q
    assert isinstance(layer, int8.Int8Linear if backend == "int8" else fp8.Fp8Linear)
    assert layer.quant_spec.name == spec and layer.weight_scale.shape[1] == layer.in_features // 32 > 1
    codes_before = {name: m.weight.clone() for name, m in layers.items()}
    plain, with_lora = denoise(env, quantized, budget), denoise(env, q_lora, budget)
    s_plain, s_with_lora = denoise(env, simulated, budget), denoise(env, s_lora, budget)
    lora_effect = rel(s_with_lora, s_plain)
    assert lora_effect > 0.05, "the test LoRA must change the output noticeably"
    assert rel(with_lora, plain) > 0.5 * lora_effect
    # the int8 / fp8 backends compute convolutions in 16 bit (weight-only) where simulate quantizes their activations:
    # a few % apart over the whole UNet; fp8 adds e4m3 activations (3 mantissa bits) in the linears
    assert rel(with_lora, s_with_lora) < (0.05 if backend == "int8" else 0.1)
    for name, m in layers.items():
        assert torch.equal(m.weight.cpu(), codes_before[name].cpu()), f"{name}: codes not restored"
    assert rel(denoise(env, quantized, budget), plain) == 0.0
    if not lowvram:  # merged at load: the LoRA'd codes on the group grid are simulate's, bit for bit
        simulated_layers = group_linears(simulated)
        for patcher in (q_lora, s_lora):
            env["mm"].unload_all_models()
            patcher.patch_model()
        changed = [name for name, m in layers.items() if not torch.equal(m.weight, codes_before[name])]
        assert changed and all(torch.equal(layers[name].weight, simulated_layers[name].weight) for name in changed)
        for patcher in (q_lora, s_lora):
            patcher.unpatch_model()
        assert all(torch.equal(m.weight, codes_before[name]) for name, m in layers.items())
