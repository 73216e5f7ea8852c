"""The Triton quantized GEMM (quant/kernels/gemm_kernels.py) under Triton's interpreter against independent
references (tests/triton_gemm_checks.py, in a child process started with TRITON_INTERPRET=1), and on the CPU its
torch definition (quant/qgemm.py) as the int8 / fp8 backends run it for group-wise weights: the simulate backend's
numbers, LoRA merges on the same grid, the quant cache, torch.compile through the custom op. bench/gpu_gemm.py
repeats the kernel checks on a GPU at FLUX's shapes."""

import pytest
import torch
from torch import nn

import triton_gemm_checks
import triton_interpreted_checks

from comfyui_qsched.quant import BackendError, auto, branch_ops, fp8, int8, kernels, linear_ops, numerics, qgemm
from comfyui_qsched.quant import quantize_module
from comfyui_qsched.quant.cache import quantize_cached


@pytest.fixture(scope="module")
def interpreted():
    return triton_interpreted_checks.run_interpreted("triton_gemm_checks.py")


@pytest.mark.parametrize("check", sorted(triton_gemm_checks.checks()))
def test_gemm_kernel_matches_its_reference(interpreted, check):
    assert interpreted[check] == "ok", interpreted[check]


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64), nn.Linear(64, 32, bias=False)
                         ).requires_grad_(False)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_torch_definition_is_the_per_group_integer_product():
    """quant/qgemm.py against int64 products per group, scaled in group order (float32), bit for bit; per channel
    equal to the int8 backend's torch._int_mm path (int8_codes.scale_int32)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 128, generator=generator)
    a, sa = int8.quantize_rows(x, 9)
    codes, scale = numerics.quantize_weight(torch.randn(40, 128, generator=generator), 4, 32)
    out = qgemm.reference(a, sa, codes, scale, None, 9, torch.float32)
    expected = torch.zeros(9, 40)
    for g in range(4):
        part = a[:, 32 * g:32 * (g + 1)].long() @ codes[:, 32 * g:32 * (g + 1)].long().t()
        expected = expected + part.float() * scale[:, g]
    assert torch.equal(out, expected * sa)
    codes, scale = numerics.quantize_weight(torch.randn(40, 128, generator=generator), 8)
    bias = torch.randn(40, generator=generator).to(torch.bfloat16)
    assert torch.equal(qgemm.reference(a, sa, codes, scale, bias, 9, torch.bfloat16),
                       int8.scale_int32(torch._int_mm(a, codes.t()), sa, scale, bias, 9, torch.bfloat16))


@pytest.mark.parametrize("spec", ["W4A8-g64", "W4A8-g16", "W8A8-g32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_backend_group_wise_layers_give_simulate_numbers(spec, dtype):
    """Same stored codes and group scales as simulate; the output is simulate's (int8 activations per token, the
    group-wise weight) up to float32 rounding, one activation code apart at most where simulate divides by the
    scale and the int8 codes multiply by its inverse (tests/test_quant_int8.py has the per-channel case)."""
    model, simulated = net(), net()
    report = quantize_module(model, spec, backend="int8", policy="first_last=off")
    quantize_module(simulated, spec, backend="simulate", policy="first_last=off")
    assert report.by_backend() == {"int8": 3}
    assert isinstance(model[0], int8.Int8Linear)
    for index in (0, 2, 3):
        assert torch.equal(model[index].weight, simulated[index].weight)
        assert torch.equal(model[index].weight_scale, simulated[index].weight_scale)
    model, simulated = model.to(dtype), simulated.to(dtype)
    x = torch.randn(3, 7, 128).to(dtype)
    out, expected = model(x), simulated(x)
    assert out.dtype == dtype and out.shape == (3, 7, 32)
    # simulate rounds its dequantized weight to bf16 (2**-9 per weight) and each of the three layers' outputs
    assert rel(out, expected) < (2e-2 if dtype == torch.bfloat16 else 1e-4)
    layer = model[0]  # one layer against float64 of its own int8 activation codes and dequantized group-wise weight
    codes, scale = int8.quantize_rows(x.reshape(-1, 128), 21)
    exact = (codes.double() * scale.double()) @ numerics.dequantize_weight(
        layer.codes(), layer.weight_scale, torch.float64).t() + layer.bias.double()
    assert rel(layer(x).reshape(21, -1), exact) < (4e-3 if dtype == torch.bfloat16 else 1e-6)


def test_fp8_backend_group_wise_w4a8_is_the_e4m3_product(monkeypatch):
    """GROUP_GEMM "exact": e4m3 activation codes per token times the int4 codes and group scales: float64 of the same
    fake-quantized activations and dequantized weight, up to float32 rounding."""
    monkeypatch.setattr(linear_ops, "GROUP_GEMM", "exact")
    model = net()
    report = quantize_module(model, "W4A8-g32", backend="fp8", policy="first_last=off")
    assert report.by_backend() == {"fp8": 3}
    layer = model[0]
    assert layer.weight.dtype == torch.uint8 and layer.weight_scale.shape == (256, 4)
    x = torch.randn(5, 128)
    codes, scale = fp8.quantize_rows(x, 5)
    exact = (codes.double() * scale.double()) @ numerics.dequantize_weight(layer.codes(), layer.weight_scale,
                                                                          torch.float64).t() + layer.bias.double()
    assert rel(layer(x), exact) < 1e-6
    simulated = net()
    quantize_module(simulated, "W4A8-g32", backend="simulate", policy="first_last=off")
    # e4m3 keeps 3 mantissa bits of the activations where int8 keeps 7: ~3% per layer, three layers
    assert rel(model(x), simulated(x)) < 0.1


def test_group_e4m3_weight_is_one_e4m3_rounding_of_the_dequantized_weight():
    """GROUP_GEMM "e4m3": e4m3(code * s_g / s_c) * s_c is the dequantized weight code * s_g within one e4m3 rounding
    (3 mantissa bits: 1/16 relative, 2**-10 absolute below e4m3's smallest normal 2**-6), exact in each row's
    largest group (integer codes are e4m3 numbers); an all-zero row stays zero."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(32, 256, generator=generator)
    w[:, 3] *= 40  # one group with a large scale: the others get ratios far below 1
    w[7] = 0
    codes, scale = numerics.quantize_weight(w, 4, 64)
    scale = scale.half()
    weight, channel = linear_ops.group_e4m3_reference(numerics.pack_int4(codes), scale, 32, 256)
    assert weight.dtype == torch.float8_e4m3fn and channel.shape == (32, 1)
    dequantized = codes.double() * scale.double().repeat_interleave(64, dim=1)
    ours = weight.double() * channel.double()
    slack = dequantized.abs() / 16 + 2.0 ** -10 * channel.double()
    assert bool(((ours - dequantized).abs() <= slack).all())
    largest = scale.double().repeat_interleave(64, dim=1) == scale.double().amax(1, keepdim=True)
    assert torch.equal(ours[largest], dequantized[largest])
    assert not torch.equal(ours, dequantized)  # the other groups did round
    assert bool((ours[7] == 0).all())


def test_fp8_backend_e4m3_group_form_is_one_fp8_product(monkeypatch):
    """A W4A8-g64 fp8 layer in the default form (GROUP_GEMM "e4m3"): per-token e4m3 activations times the e4m3
    weight, scaled by the row and channel scales (float64 reference, built here), within bf16 rounding; near the exact
    group form."""
    assert linear_ops.GROUP_GEMM == "e4m3"
    model = net()
    quantize_module(model, "W4A8-g64", backend="fp8", policy="first_last=off")
    layer = model[0].to(torch.bfloat16)
    x = torch.randn(5, 128).to(torch.bfloat16)
    out = layer(x)
    monkeypatch.setattr(linear_ops, "GROUP_GEMM", "exact")
    exact_form = layer(x)
    codes, row_scale = fp8.quantize_rows(x, 5)
    group_scale = layer.weight_scale.double()
    dequantized = layer.codes().double() * group_scale.repeat_interleave(64, dim=1)
    channel = group_scale.amax(1, keepdim=True)
    weight = (dequantized / channel).float().to(torch.float8_e4m3fn).double() * channel
    expected = (codes.double() * row_scale.double()) @ weight.t() + layer.bias.double()
    assert out.dtype == torch.bfloat16 and rel(out, expected) < 2 ** -8
    assert 0 < rel(out, exact_form) < 0.05


def test_compiled_e4m3_group_form_traces_one_fp8_gemm_and_no_float64():
    """Under torch.compile a W4A8-g64 fp8 layer traces the e4m3 form as one torch._scaled_mm (the eager definition's
    exact sums would become a float64 GEMM on the GPU): the traced graph holds _scaled_mm and nothing in float64,
    and gives the float64 product of the same codes within float32 summation."""
    model = net()
    quantize_module(model, "W4A8-g64", backend="fp8", policy="first_last=off")
    layer = model[0].to(torch.bfloat16)
    x = torch.randn(5, 128).to(torch.bfloat16)
    graphs = []

    def recording_backend(graph_module, _inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=recording_backend, fullgraph=True)(x)
    torch._dynamo.reset()
    nodes = [node for graph in graphs for node in graph.graph.nodes]
    assert any(node.target is torch._scaled_mm for node in nodes)
    assert not any(node.target in ("double", torch.Tensor.double) or torch.float64 in node.args
                   or node.kwargs.get("dtype") is torch.float64 for node in nodes)
    codes, row_scale = fp8.quantize_rows(x, 5)
    weight, channel = linear_ops.group_e4m3_reference(layer.weight, layer.weight_scale, 256, 128)
    expected = (codes.double() * row_scale.double()) @ (weight.double() * channel.double()).t() + layer.bias.double()
    assert compiled.dtype == torch.bfloat16 and rel(compiled, expected) < 2 ** -8
    assert rel(compiled, layer(x)) < 2 ** -8


def test_group_ratios_are_computed_once_per_scale_tensor_and_again_after_a_change():
    """fp8_group_fast's memo: the ratios of a resident layer's scales come back without recomputing (the same
    tensors), equal to group_ratios; an in-place change of the scales, or another scale tensor, recomputes."""
    scale = torch.rand(6, 4, generator=torch.Generator().manual_seed(1)).half() + 0.01
    ratio, channel = linear_ops._memoized_group_ratios(scale)
    expected_ratio, expected_channel = linear_ops.group_ratios(scale)
    assert torch.equal(ratio, expected_ratio) and torch.equal(channel, expected_channel)
    again = linear_ops._memoized_group_ratios(scale)
    assert again[0] is ratio and again[1] is channel
    scale[2, 1] = 5.0
    changed_ratio, changed_channel = linear_ops._memoized_group_ratios(scale)
    assert changed_ratio is not ratio and changed_channel[2, 0] == 5.0
    assert torch.equal(changed_ratio, linear_ops.group_ratios(scale)[0])
    moved = scale.float().half()  # what an offloaded layer's per-call cast gives: a new tensor
    assert linear_ops._memoized_group_ratios(moved)[0] is not changed_ratio
    scale.data = torch.full_like(scale, 2.0)  # new storage under the same tensor object
    swapped_ratio, swapped_channel = linear_ops._memoized_group_ratios(scale)
    assert bool((swapped_channel == 2.0).all()) and bool((swapped_ratio == 1.0).all())


def test_backends_refuse_group_sizes_the_kernel_lacks():
    with pytest.raises(BackendError, match="weight groups of 16, 32, 64, 128"):
        quantize_module(net(), "W4A8-g8", backend="int8")
    with pytest.raises(ValueError, match="the fp8 backend does W8A8 and W4A8"):
        quantize_module(net(), "W8A8-g64", backend="fp8")  # e4m3 W8 codes are per channel
    with pytest.raises(ValueError, match="the fp8 backend does W8A8 and W4A8"):
        quantize_module(net(), "W4A8-g48", backend="fp8")


def test_auto_runs_group_wise_w4a8_as_the_e4m3_form_on_fp8_gpus_only(monkeypatch):
    """Group-wise W4A8 takes the fp8 backend's e4m3 form on FP8 GPUs (measured near per-channel W4A8's speed, quant/
    auto.py), where 8-bit compute pays; W8A8-g, group sizes the form lacks, the exact form and GPUs without FP8 keep
    simulate (the Triton group GEMM measured slower); per-channel specs keep their 8-bit GEMMs."""
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: True)
    monkeypatch.setattr(auto, "int8_supported", lambda device: True)
    wide, narrow = nn.Linear(2048, 2048), nn.Linear(256, 256)
    backend = auto.AutoBackend()
    backend.check(None, "cuda")
    spec = numerics_spec("W4A8-g64")
    path, runs, why = backend.choose(wide, spec)
    assert (path, runs) == ("fp8", spec) and "e4m3 form" in why
    assert backend.choose(wide, numerics_spec("W4A8-g64-r32"))[0] == "fp8"
    assert backend.choose(narrow, spec)[:2] == ("weight-only", numerics_spec("W4A16-g64"))
    assert backend.choose(wide, numerics_spec("W8A8-g64"))[0] == "simulate"
    assert backend.choose(wide, numerics_spec("W4A8-g8"))[0] == "simulate"
    assert backend.choose(wide, numerics_spec("W4A8"))[0] == "fp8"
    monkeypatch.setattr(linear_ops, "GROUP_GEMM", "exact")
    assert backend.choose(wide, spec)[0] == "simulate"
    monkeypatch.setattr(linear_ops, "GROUP_GEMM", "e4m3")
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: False)
    assert backend.choose(wide, spec)[0] == "simulate"
    assert backend.choose(wide, numerics_spec("W4A8"))[0] == "int8"


@pytest.mark.parametrize("fp8_gpu,direct_backend,planned_as", [
    (False, "simulate", "auto: simulate (group-wise weights: the Triton group GEMM measured slower)"),
    (True, "fp8", "auto: fp8")])
def test_auto_planned_for_a_gpu_runs_group_wise_w4a8_as_the_backend_it_chose(monkeypatch, fp8_gpu, direct_backend,
                                                                             planned_as):
    """Planned for a GPU with int8 tensor cores only: simulate; with FP8: the fp8 backend (its e4m3 form)."""
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: fp8_gpu)
    monkeypatch.setattr(auto, "int8_supported", lambda device: True)
    monkeypatch.setattr(auto, "A8_MIN_FEATURES", 32)
    planned, direct = net(), net()
    report = quantize_module(planned, "W4A8-g32", backend="auto", device="cuda", policy="first_last=off")
    quantize_module(direct, "W4A8-g32", backend=direct_backend, policy="first_last=off")
    assert set(report.by_backend()) == {planned_as}
    x = torch.randn(4, 128)
    assert torch.equal(planned(x), direct(x))


def numerics_spec(text):
    from comfyui_qsched.quant import QuantSpec
    return QuantSpec.parse(text)


@pytest.mark.parametrize("backend", ["int8", "fp8"])
def test_lora_merge_requantizes_group_wise_layers_on_their_grid(backend):
    """A LoRA delta merged into the float weight and requantized on the layer's group scales gives simulate's codes;
    the float weight of the unchanged codes requantizes to themselves (restoring a layer is exact)."""
    model, simulated = net(), net()
    quantize_module(model, "W4A8-g32-r8", backend=backend, policy="first_last=off")
    quantize_module(simulated, "W4A8-g32-r8", backend="simulate", policy="first_last=off")
    layer, reference = model[2], simulated[2]
    weight = layer.float_weight()
    assert torch.equal(weight, reference.float_weight())
    assert torch.equal(layer.requantize_float(weight), layer.weight)
    delta = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)) * 0.01
    merged = layer.requantize_float(weight + delta)
    assert torch.equal(merged, reference.requantize_float(weight + delta)) and not torch.equal(merged, layer.weight)


@pytest.mark.parametrize("backend,spec", [("int8", "W4A8-g32"), ("fp8", "W4A8-g16"), ("int8", "W4A8-g32-r8")])
def test_cache_round_trip_of_group_wise_layers(tmp_path, backend, spec):
    source = tmp_path / "backbone.safetensors"
    source.write_bytes(b"stand-in for the user's file")
    first, second = net(), net()
    _, status = quantize_cached(first, spec, str(source), str(tmp_path / "cache"), backend=backend)
    assert status == "written"
    _, status = quantize_cached(second, spec, str(source), str(tmp_path / "cache"), backend=backend)
    assert status == "hit"
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name
    x = torch.randn(3, 128)
    assert torch.equal(first(x), second(x))


@pytest.mark.parametrize("int8_codes", [True, False])
def test_epilogue_branch_definition_adds_the_up_projection_before_one_rounding(int8_codes, monkeypatch):
    """qgemm_linear with xd, up (the 'epilogue' form's torch definition): the layer without branch plus
    lr @ up^T in float32, one rounding; against the layer's shared (unfused) forward within bf16 rounding, both in
    the exact group form (the epilogue has no e4m3 form)."""
    monkeypatch.setattr(linear_ops, "GROUP_GEMM", "exact")
    model = net()
    quantize_module(model, "W4A8-g32-r16", backend="int8" if int8_codes else "fp8", policy="first_last=off")
    layer = model[0].to(torch.bfloat16)
    x = torch.randn(2, 5, 128).to(torch.bfloat16)
    xd = nn.functional.linear(x, layer.lowrank_down)
    fused = linear_ops.qgemm_linear(x, layer.weight, layer.weight_scale, layer.bias, 256, True, int8_codes, xd,
                                    layer.lowrank_up)
    plain = linear_ops.qgemm_reference(x, layer.weight, layer.weight_scale, layer.bias, 256, True, int8_codes)
    without_bias = linear_ops.qgemm_reference(x, layer.weight, layer.weight_scale, None, 256, True, int8_codes,
                                              xd, layer.lowrank_up)
    exact = (linear_ops.qgemm_reference(x.float(), layer.weight, layer.weight_scale, None, 256, True, int8_codes)
             .double() + layer.bias.double() + xd.double() @ layer.lowrank_up.double().t())
    assert rel(fused, exact) < 4e-3 and rel(layer(x), exact) < 8e-3
    assert not torch.equal(fused, plain) and not torch.equal(fused, without_bias)
    assert "epilogue" in branch_ops.EAGER_FORMS
    # on the CPU the layer's fast forms step aside (no Triton on CPU tensors): the unfused forward runs
    assert branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, int8_codes, form="epilogue") is None


def test_group_wise_layer_compiles_through_the_custom_op():
    """torch.compile keeps the Triton GEMM's op opaque (its per-group torch definition would trace into a few ops
    per group); the compiled layer gives the eager numbers bit for bit."""
    model = net()
    quantize_module(model, "W4A8-g32", backend="int8", policy="first_last=off")
    x = torch.randn(6, 128)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), eager)


@pytest.mark.parametrize("backend,spec", [("fp8", "W4A8-r8"), ("fp8", "W4A8-g64-r8"), ("int8", "W8A8-r8")])
def test_addmm_branch_form_adds_the_branch_into_the_8bit_output_once(backend, spec):
    """Form "addmm" (auto's on CUDA for the cuBLAS paths): the layer's 8-bit output plus (x down^T) up^T, written
    out here in float64 from the layer's own tensors, within float32 rounding; as close to it as the
    shared unfused forward, and different from the output without the branch."""
    model = net()
    quantize_module(model, spec, backend=backend, policy="first_last=off")
    layer = model[0]
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(4))
    without = layer.quantized_forward(x, layer.weight, layer.bias)
    got = branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, backend == "int8", form="addmm")
    expected = without.double() + (x.double() @ layer.lowrank_down.double().t()) @ layer.lowrank_up.double().t()
    unfused = branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, backend == "int8", form="unfused")
    assert unfused is None  # the shared forward adds it
    assert got.shape == without.shape == (2, 3, 256) and got.dtype == x.dtype
    assert rel(got, expected) < 1e-6 and rel(layer(x), expected) < 1e-6
    assert rel(got, without) > 1e-3


@pytest.mark.parametrize("spec", ["W4A8-r8", "W4A8-g64-r8"])
def test_split_branch_form_through_the_layer(spec):
    """Form "split" of a W4A8 fp8 layer (per channel, and group-wise in the e4m3 form): the 8-bit output plus the
    branch within 1% of the branch's float64 product, as the addmm form; a layer whose split_bound is past
    SPLIT_BOUND_MAX (a branch far larger than the residual's scales) takes the addmm form instead, exactly."""
    model = net()
    quantize_module(model, spec, backend="fp8", policy="first_last=off")
    layer = model[0]
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(5))
    without = layer.quantized_forward(x, layer.weight, layer.bias)
    branch = (x.double() @ layer.lowrank_down.double().t()) @ layer.lowrank_up.double().t()
    split = branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, False, form="split")
    addmm = branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, False, form="addmm")
    assert split.shape == addmm.shape == (2, 5, 256) and not torch.equal(split, addmm)
    assert rel(split.double() - without.double(), branch) < 0.01 and rel(split, addmm) < 0.01
    layer.lowrank_up.mul_(1000.0)  # in place: the prepared factors follow the buffer's version
    channel = linear_ops.group_ratios(layer.weight_scale)[1] if "g64" in spec else layer.weight_scale
    assert branch_ops.split_bound(layer.lowrank_down, layer.lowrank_up, channel) > branch_ops.SPLIT_BOUND_MAX
    assert torch.equal(branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, False, form="split"),
                       branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, False, form="addmm"))


@pytest.mark.parametrize("spec", ["W4A8-r8", "W4A8-g64-r8"])
def test_compiled_split_form_is_one_opaque_node(spec, monkeypatch):
    """Under torch.compile a layer taking the split form is one node, the custom op qsched::split_linear (no traced
    GEMM or addmm beside it), with the eager split's numbers bit for bit; the bound is judged per call inside it, so
    the compiled graph follows a change of the buffers' values (past SPLIT_BOUND_MAX: the addmm form's numbers)."""
    monkeypatch.setattr(branch_ops, "EAGER_FORM", "split")
    model = net().to(torch.bfloat16)
    quantize_module(model, spec, backend="fp8", policy="first_last=off")
    layer = model[0]
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    graphs = []

    def recording_backend(graph_module, _inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=recording_backend, fullgraph=True)
    out = compiled(x)
    nodes = [node for graph in graphs for node in graph.graph.nodes if node.op == "call_function"]
    assert [node.target for node in nodes] == [branch_ops.SPLIT_OP]
    eager = branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, False, form="split")
    without = layer.quantized_forward(x, layer.weight, layer.bias)
    assert torch.equal(out, eager) and not torch.equal(out, without)
    layer.lowrank_up.mul_(1000.0)
    channel = linear_ops.group_ratios(layer.weight_scale)[1] if "g64" in spec else layer.weight_scale
    assert branch_ops.split_bound(layer.lowrank_down, layer.lowrank_up, channel) > branch_ops.SPLIT_BOUND_MAX
    out = compiled(x)
    torch._dynamo.reset()
    assert len(graphs) == 1  # no recompilation
    assert torch.equal(out, branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, False, form="addmm"))


def test_int8_gemm_auto_takes_triton_for_w8_codes_on_hopper_only(monkeypatch):
    """linear_ops.INT8_GEMM "auto": the Triton GEMM for W8 codes at compute capability 9.0+ (where it measured faster
    than torch._int_mm), cuBLAS for W4 codes and older GPUs; the branch's "auto" form follows it."""
    device = torch.device("cuda", 0)
    w8, w4 = numerics_spec("W8A8-r8"), numerics_spec("W4A8-r8")
    for capability, hopper in (((9, 0), True), ((8, 6), False), ((7, 5), False), ((10, 0), True)):
        monkeypatch.setattr(linear_ops, "_capability", lambda index, c=capability: c)
        assert linear_ops.int8_runs_triton(device, False) is hopper
        assert linear_ops.int8_runs_triton(device, True) is False
        assert branch_ops.auto_form(w8, True, device) == ("epilogue" if hopper else "addmm")
        assert branch_ops.auto_form(w4, True, device) == "addmm"
        assert branch_ops.auto_form(w8, False, device) == "addmm"  # the fp8 layers' cuBLAS GEMM
    assert branch_ops.auto_form(w8, True, torch.device("cpu")) == "unfused"
    assert branch_ops.auto_form(numerics_spec("W8A8-g64-r8"), True, device) == "addmm"
    assert branch_ops.auto_form(w4, False, device) == "split"  # W4A8 on FP8 codes (the fp8 backend)
    assert branch_ops.auto_form(numerics_spec("W4A8-g64-r8"), False, device) == "split"
    assert branch_ops.auto_form(w4, False, torch.device("cpu")) == "unfused"
    monkeypatch.setattr(linear_ops, "INT8_GEMM", "cublas")
    assert linear_ops.int8_runs_triton(device, False) is False
    monkeypatch.setattr(linear_ops, "INT8_GEMM", "triton")
    assert linear_ops.int8_runs_triton(device, True) is True
    monkeypatch.setattr(kernels, "gemm_kernels", None)
    assert linear_ops.int8_runs_triton(device, False) is False
