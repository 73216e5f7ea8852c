"""Group-wise W4A8 on the int8 and fp8 backends (the Triton GEMM on a GPU, its torch definition here) through the
quantized loader in real ComfyUI (COMFYUI_DIR): a LoRA through ComfyUI's LoraLoader merges on the group grid exactly
as the simulate backend's layers do, acts per call in low-VRAM loading, and unpatching restores the codes; the low-rank
branch's split fold (branch_ops) through the same loader and patching."""
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


@pytest.mark.parametrize("spec", ["W4A8-r4", "W4A8-g32-r4"])
def test_the_split_branch_form_inside_comfyui(env, monkeypatch, spec):  # noqa: F811
    """The low-rank branch as the split fold (branch_ops form "split", the torch definition on the CPU) inside
    ComfyUI's loader and patching: the UNet as close to the FP model as with the default form (the two differ by a
    few % where e4m3 activation codes flip, the branch itself by ~0.1%: test_quant_branch_ops.py), a LoRA changes
    it as it changes the default form's output, the layers that took the split are those whose bound holds, and
    unpatching restores the codes."""
    from comfyui_qsched.quant import branch_ops, linear_ops
    lora_loader = env["nodes"].LoraLoaderModelOnly()
    fp = load(env, None)
    model = load(env, spec, backend="fp8")[0]
    lora = build_lora(env, model)
    with_lora = lora_loader.load_lora_model_only(model, lora, 1.0)[0]
    fp_lora = lora_loader.load_lora_model_only(fp, lora, 1.0)[0]
    default, default_lora = denoise(env, model), denoise(env, with_lora)
    monkeypatch.setattr(branch_ops, "EAGER_FORM", "split")
    split, split_lora = denoise(env, model), denoise(env, with_lora)
    reference, reference_lora = denoise(env, fp), denoise(env, fp_lora)
    errors = [rel(out, ref) for out, ref in ((split, reference), (default, reference), (split_lora, reference_lora),
                                            (default_lora, reference_lora))]
    print(f"{spec}: error to the FP model, split / default {errors[0]:.4f} / {errors[1]:.4f}, with the LoRA "
          f"{errors[2]:.4f} / {errors[3]:.4f}; split vs default {rel(split, default):.4f}")
    assert not torch.equal(split, default) and rel(split, default) < 0.1
    assert abs(errors[0] - errors[1]) < 0.05 * errors[1] and abs(errors[2] - errors[3]) < 0.05 * errors[3]
    cosine = torch.nn.functional.cosine_similarity((split_lora - split).flatten(), (default_lora - default).flatten(),
                                                   dim=0)
    assert cosine > 0.9, cosine
    layers = [m for m in model.model.diffusion_model.modules() if hasattr(getattr(m, "lowrank_up", None),
                                                                         "_qsched_split")]
    assert layers, "no layer took the split"
    bounds = []
    for layer in layers:
        grouped = linear_ops._grouped(layer.weight_scale)
        channel = linear_ops.group_ratios(layer.weight_scale)[1] if grouped else layer.weight_scale
        bounds.append(branch_ops.split_bound(layer.lowrank_down, layer.lowrank_up, channel))
        assert layer.lowrank_up._qsched_split[1][4] == bounds[-1]
    taken = sum(bound <= branch_ops.SPLIT_BOUND_MAX for bound in bounds)
    print(f"{spec}: {taken} of {len(layers)} branch layers took the split fold")
    assert taken > 0
    assert torch.equal(denoise(env, model), split)  # the LoRA'd codes were restored


def test_the_split_branch_compiles_through_comfyuis_wrapper_as_one_op_per_layer(env, monkeypatch):  # noqa: F811
    """ComfyUI's own torch.compile wrapper (comfy_api.torch_helpers.set_torch_compile_wrapper, what its
    TorchCompileModel node sets) over a W4A8-r4 fp8 UNet taking the split form: the traced graphs hold the
    qsched::split_linear op and nothing of the branch beside it (no addmm), every branch linear runs through it once
    per call, and the compiled model denoises to the eager split's output bit for bit."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from comfyui_qsched.quant import branch_ops, fp8
    monkeypatch.setattr(branch_ops, "EAGER_FORM", "split")
    model = load(env, "W4A8-r4", backend="fp8")[0]
    eager = denoise(env, model)
    linears = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)
               and getattr(m, "quant_spec", None) is not None and m.quant_spec.rank and not m.in_features % 16
               and not m.out_features % 16 and isinstance(m, fp8.Fp8Linear)]
    nodes = []

    def recording_backend(graph_module, _inputs):
        nodes.extend(node.target for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module.forward

    calls = []
    run = branch_ops.split_or_addmm_linear
    monkeypatch.setattr(branch_ops, "split_or_addmm_linear", lambda *args: calls.append(args[-1].shape) or run(*args))
    compiled = model.clone()
    torch._dynamo.reset()
    set_torch_compile_wrapper(compiled, backend=recording_backend)
    torch.manual_seed(0)
    device = env["mm"].get_torch_device()
    x, context = torch.randn(1, 4, 16, 16).to(device), torch.randn(1, 77, 768).to(device)
    env["mm"].unload_all_models()
    env["mm"].load_models_gpu([compiled])
    with torch.no_grad():
        out = compiled.model.apply_model(x, torch.tensor([1.0], device=device), c_crossattn=context,
                                         transformer_options={"wrappers": compiled.wrappers})  # as sampling does
    compiled.unpatch_model()
    torch._dynamo.reset()
    print(f"{len(nodes)} traced calls, {nodes.count(branch_ops.SPLIT_OP)} split ops in the graphs, {len(calls)} "
          f"op calls, {len(linears)} branch linears")
    assert linears and branch_ops.SPLIT_OP in nodes and len(calls) == len(linears)  # every one, once, through the op
    assert torch.addmm not in nodes and torch.Tensor.addmm_ not in nodes
    assert torch.equal(out.cpu(), eager)
