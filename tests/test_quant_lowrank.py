"""The 16-bit low-rank branch (-r<N>): the split against a float64 numpy SVD, its effect on error, every backend that
takes the spec adding it, group-wise scales per width, bits per weight."""

import numpy as np
import pytest
import torch
from torch import nn

from comfyui_qsched.quant import BackendError, QuantSpec, QuantSpecError, numerics, quantize_module
from comfyui_qsched.quant.export import comfy_int8_state_dict
from comfyui_qsched.quant.lowrank import branch_output, split
from comfyui_qsched.quant.spec import bits_per_weight


def structured_weight(rows, columns, seed=0):
    """A weight like a trained one: a few strong directions (with outlier columns) over a small noisy rest."""
    generator = torch.Generator().manual_seed(seed)
    strong = torch.randn(rows, 6, generator=generator) @ torch.randn(6, columns, generator=generator)
    strong[:, :3] *= 8  # outlier input channels
    return strong / columns ** 0.5 + 0.05 * torch.randn(rows, columns, generator=generator)


def numpy_truncated(weight, rank):
    u, s, vh = np.linalg.svd(weight.double().numpy(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def relative(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_split_is_the_truncated_svd_and_the_residual_completes_it(dtype, tolerance):
    weight = structured_weight(48, 80)
    down, up, residual = split(weight, 8, dtype)
    assert down.shape == (8, 80) and up.shape == (48, 8) and down.dtype == up.dtype == dtype
    product = up.double() @ down.double()
    assert relative(product, numpy_truncated(weight, 8)) < tolerance  # 16-bit factors of the float64 SVD
    assert relative(residual + product, weight) < 1e-6  # residual is taken against the rounded factors
    x = torch.randn(5, 7, 80)
    assert relative(branch_output(x, down, up), x.double().numpy() @ product.numpy().T) < 1e-5


def test_reconstruction_error_falls_with_the_rank():
    weight = structured_weight(64, 128, seed=1)
    errors = []
    for rank in (0, 2, 6, 16, 48):
        matrix, product = weight, 0
        if rank:
            down, up, matrix = split(weight, rank)
            product = up.float() @ down.float()
        codes, scale = numerics.quantize_weight(matrix, 4, 32)
        errors.append(relative(numerics.dequantize_weight(codes, scale) + product, weight))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def two_layers(rows=96, columns=128):
    net = nn.Sequential(nn.Linear(columns, rows), nn.Linear(rows, rows), nn.Linear(rows, 16)).requires_grad_(False)
    with torch.no_grad():
        net[1].weight.copy_(structured_weight(rows, rows, seed=2))
    return net


def layer_error(spec, backend="simulate", seed=4):
    net = two_layers()
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(seed))
    hidden = net[0](x)
    reference = net[1](hidden)
    report = quantize_module(net, spec, backend=backend)  # first/last stay float: only net[1] is quantized
    assert report.quantized == 1
    return relative(net[1](hidden), reference), net[1]


def test_w4a4_with_the_branch_is_closer_to_the_float_layer():
    without, _ = layer_error("W4A4-g64")
    with_branch, layer = layer_error("W4A4-g64-r32")
    assert layer.lowrank_down.shape == (32, 96) and layer.lowrank_up.shape == (96, 32)
    assert with_branch < 0.7 * without, (with_branch, without)


def test_simulated_branch_layer_equals_an_independent_computation():
    _, layer = layer_error("W4A8-g32-r8")
    weight = structured_weight(96, 96, seed=2)
    u, s, vh = np.linalg.svd(weight.double().numpy(), full_matrices=False)
    root = np.sqrt(s[:8])
    up, down = u[:, :8] * root, root[:, None] * vh[:8]
    assert relative(layer.lowrank_up.double(), up) < 1e-2 and relative(layer.lowrank_down.double(), down) < 1e-2
    x = torch.randn(10, 96)
    residual = weight - layer.lowrank_up.float() @ layer.lowrank_down.float()
    codes, scale = numerics.quantize_weight(residual, 4, 32)
    expected = nn.functional.linear(numerics.fake_quantize_activation(x, 8), numerics.dequantize_weight(codes, scale),
                                    layer.bias) + (x @ layer.lowrank_down.float().T) @ layer.lowrank_up.float().T
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    float_weight = layer.float_weight()
    assert relative(float_weight, weight) < relative(numerics.dequantize_weight(codes, scale), weight)
    assert torch.equal(layer.requantize_float(float_weight), layer.weight)  # LoRA merges restore exactly


@pytest.mark.parametrize("backend, spec", [("simulate", "W4A8-r16"), ("fp8", "W4A8-r16"), ("fp8", "W8A8-r16"),
                                           ("auto", "W4A8-g32-r16"), ("simulate", "W8A16-r16"),
                                           ("simulate", "W6A8-g32-r16")])
def test_every_backend_that_takes_the_spec_adds_the_branch(backend, spec):
    base = QuantSpec.parse(spec).with_rank(None).name
    without, _ = layer_error(base, backend)
    with_branch, layer = layer_error(spec, backend)
    assert layer.quant_spec.rank == 16 and with_branch < 0.8 * without, (with_branch, without)


def test_comfy_kitchen_and_weight_only_layers_add_the_branch(monkeypatch):
    """comfy_kitchen's int8_linear is replaced by its definition (int8 weight x per-token int8 activation): the
    branch must come on top of whatever the kernel returns; the fast weight-only class likewise."""
    from comfyui_qsched.quant import backends, kitchen

    class FakeKitchen:  # the kernel's contract, not ComfyUI code: per-token int8 activations, int8 weights
        @staticmethod
        def int8_linear(x, codes, scale, bias, out_dtype):
            return nn.functional.linear(numerics.fake_quantize_activation(x, 8), codes.float() * scale[:, None], bias)

    monkeypatch.setattr(kitchen, "_MODULE", [FakeKitchen])
    for make in (lambda layer, spec: backends.ComfyKitchenBackend().quantize(layer, spec),
                 lambda layer, spec: backends.weight_only(layer, spec, "weight-only")):
        errors = []
        for spec in ("W8A8", "W8A8-r16"):
            layer = nn.Linear(96, 96).requires_grad_(False)
            layer.weight.copy_(structured_weight(96, 96, seed=5) * 40)  # outliers that per-channel int8 feels
            x = torch.randn(32, 96)
            reference = layer(x)
            make(layer, QuantSpec.parse(spec))
            errors.append(relative(layer(x), reference))
        assert errors[1] < 0.8 * errors[0], errors


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_weight_only_fast_path_folds_the_branch_into_the_widened_weight(monkeypatch, kind):
    """On the weight-only fast path (made to run here: W8A16's widening is one torch multiply) the branch goes into
    the 16-bit weight: two matmuls per call (the fold's addmm, the layer's own) and no add over the output, where
    the branch beside it takes two more GEMMs (or convolutions) and an add; the result within bfloat16 rounding of
    the float64 layer with the branch."""
    from comfyui_qsched.quant import backends, fast

    torch.manual_seed(3)
    layer = (nn.Linear(96, 80) if kind == "linear" else nn.Conv2d(16, 24, 3, padding=1)).requires_grad_(False)
    backends.weight_only(layer, QuantSpec.parse("W8A16-r8"), "weight-only")
    layer = layer.to(torch.bfloat16)
    x = (torch.randn(40, 96) if kind == "linear" else torch.randn(2, 16, 6, 6)).to(torch.bfloat16)
    weight = layer.dequantize().double() + (layer.lowrank_up.double() @ layer.lowrank_down.double()).reshape(
        layer.dequantize().shape)
    run = nn.functional.linear if kind == "linear" else \
        (lambda rows, w, b: nn.functional.conv2d(rows, w, b, padding=1))
    expected = run(x.double(), weight, layer.bias.double())

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    def traced():
        ops = Ops()
        ops.seen = []
        with ops:
            out = layer(x)
        return out, [name for name in ops.seen if name in ("mm", "addmm", "addmm_", "convolution", "add", "add_")]

    unfused, unfused_ops = traced()
    monkeypatch.setattr(fast, "_widens", lambda rows: True)
    folded, folded_ops = traced()
    assert len(folded_ops) == 2 and "add_" not in folded_ops and "add" not in folded_ops, folded_ops
    assert len(unfused_ops) >= 3 and "add_" in unfused_ops, unfused_ops
    assert relative(folded.double(), expected) < 2 ** -7 and relative(unfused.double(), expected) < 2 ** -7
    if kind == "linear":  # 20 rows against the whole weight: folding would move more bytes than it saves
        assert not fast.fold_pays(20, 80, 96) and fast.fold_pays(40, 80, 96)
        x = x[:20]
        assert "add_" in traced()[1]


def test_conv_branch_matches_a_dense_convolution():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.Conv2d(32, 4, 1))
    x = torch.randn(2, 3, 12, 12)
    hidden = net[0](x)
    quantize_module(net.requires_grad_(False), "W4A16-r4")
    layer = net[1]
    assert layer.lowrank_down.shape == (4, 16 * 9) and layer.lowrank_up.shape == (32, 4)
    branch = (layer.lowrank_up.float() @ layer.lowrank_down.float()).reshape(32, 16, 3, 3)
    expected = nn.functional.conv2d(hidden, layer.dequantize() + branch, layer.bias, stride=2, padding=1)
    assert torch.allclose(layer(hidden), expected, rtol=1e-4, atol=1e-5)


def test_rank_is_a_cap_per_layer_and_grouped_convs_go_without():
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6), nn.Conv2d(6, 6, 3, groups=3), nn.Linear(6, 6))
    report = quantize_module(net.requires_grad_(False), "W4A8-r16", policy="first_last=off")
    specs = {layer.name: (layer.spec, layer.reason) for layer in report.layers}
    assert specs["1"][0] == "W4A8-r6" and "rank 16 exceeds the 6 x 8 weight" in specs["1"][1]
    assert specs["2"][0] == "W4A8" and "no low-rank branch" in specs["2"][1]
    assert not hasattr(net[2], "lowrank_down")


@pytest.mark.parametrize("backend", ["bitsandbytes", "torchao"])
def test_backends_that_replace_the_layer_refuse_the_branch(backend):
    with pytest.raises(BackendError, match="cannot add the low-rank branch"):
        quantize_module(two_layers(), "W8A8-r16", backend=backend)


@pytest.mark.parametrize("w_bits", [4, 6, 8])
def test_group_scales_for_every_width(w_bits):
    channel, _ = layer_error(f"W{w_bits}A16")
    grouped, layer = layer_error(f"W{w_bits}A16-g16")
    assert layer.weight_scale.shape == (96, 6) and grouped < channel


def test_group_sizes_that_do_not_divide_the_input_fall_back_per_layer_or_are_named():
    report = quantize_module(two_layers(rows=72), "W4A8-g64")  # 72 inputs: not a multiple of 64
    assert report.layers[1].spec == "W4A8" and "not divisible by group 64: per channel" in report.layers[1].reason
    with pytest.raises(ValueError, match="input size 72 is not a multiple of the group size 64"):
        numerics.quantize_weight(torch.ones(4, 72), 4, 64)
    with pytest.raises(ValueError, match="fp8 backend does W8A8 and W4A8 with per-channel weights"):
        quantize_module(two_layers(), "W4A8-g48", backend="fp8")  # g64: the Triton GEMM (test_quant_gemm.py)


def test_export_folds_the_branch_into_fresh_int8_codes():
    _, layer = layer_error("W8A8-r16")
    state, counts = comfy_int8_state_dict(layer)
    assert counts == {"int8 W8A8 linear (low-rank branch folded in)": 1}
    assert "lowrank_down" not in state and "lowrank_up" not in state
    codes, scale = numerics.quantize_weight(layer.float_weight(), 8)
    assert torch.equal(state["weight"], codes) and torch.equal(state["weight_scale"], scale.reshape(-1))
    exported = numerics.dequantize_weight(codes, scale)
    direct_codes, direct_scale = numerics.quantize_weight(structured_weight(96, 96, seed=2), 8)
    weight = structured_weight(96, 96, seed=2)
    assert relative(exported, weight) < 1.2 * relative(numerics.dequantize_weight(direct_codes, direct_scale), weight)


@pytest.mark.parametrize("text, name, rank", [
    ("W4A4-g64-r32", "W4A4-g64-r32", 32), ("w4a8_r32_g64", "W4A8-g64-r32", 32), ("W8A8-r1", "W8A8-r1", 1),
    ("W4A8-tensor-r1024", "W4A8-tensor-r1024", 1024), ("W4A16-r8", "W4A16-r8", 8)])
def test_rank_option_parses_and_prints_last(text, name, rank):
    spec = QuantSpec.parse(text)
    assert spec.name == name and spec.rank == rank and QuantSpec.parse(spec.name) == spec
    assert spec.base.rank is None and spec.with_activations(16).rank == rank


@pytest.mark.parametrize("text, message", [("W4A8-r0", "rank must be 1..1024"), ("W4A8-r1025", "rank must be 1..1024"),
                                           ("W4A8-r8-r16", "low-rank branch rank twice"), ("W4A8-r", "unknown option")])
def test_bad_ranks_are_named(text, message):
    with pytest.raises(QuantSpecError, match=message):
        QuantSpec.parse(text)


def test_bits_per_weight_counts_codes_scales_and_factors():
    assert bits_per_weight("W4A8", 3072, 3072) == 4 + 16 / 3072
    assert bits_per_weight("W4A8-g64-r32", 3072, 3072) == pytest.approx(4 + 16 / 64 + 16 * 32 * 6144 / 3072 ** 2)
    assert bits_per_weight("W4A8-g8", 64, 64) == 6.0
    assert bits_per_weight("W6A8", 3072, 3072, stored=True) == 8 + 32 / 3072  # W5-W8 codes are stored in int8
    # float16 group scales: stored as the nominal count
    assert bits_per_weight("W4A8-g64-r32", 3072, 3072, stored=True) == pytest.approx(4 + 16 / 64 + 32 * 16 * 6144
                                                                                     / 3072 ** 2)
    assert bits_per_weight("W4A8-r32", 8, 16) == 4 + 16 / 16 + 8 * 24 * 16 / 128  # rank capped at the smaller side


def test_bits_per_weight_matches_the_stored_bytes():
    net = two_layers()
    quantize_module(net, "W4A8-g32-r8")
    layer = net[1]
    stored_bits = 8 * sum(t.numel() * t.element_size() for t in (layer.weight, layer.weight_scale,
                                                                   layer.lowrank_down, layer.lowrank_up))
    assert stored_bits / (96 * 96) == bits_per_weight("W4A8-g32-r8", 96, 96, stored=True)


def test_large_weights_take_the_randomized_svd_and_it_matches_the_exact_one(monkeypatch):
    from comfyui_qsched.quant import lowrank
    weight = structured_weight(160, 200, seed=6)
    spectrum = torch.linspace(1, 0.01, 160) ** 2  # a decaying tail as trained weights have, beside the strong part
    weight = weight + torch.linalg.qr(torch.randn(160, 160))[0] @ torch.diag(spectrum) @ \
        torch.linalg.qr(torch.randn(200, 160))[0].T
    monkeypatch.setattr(lowrank, "EXACT_SVD_MAX_SIDE", 64)  # 160 > 64: the randomized path
    down, up, residual = split(weight, 16, torch.float16)
    exact = numpy_truncated(weight, 16)
    captured = np.linalg.norm(weight.double().numpy() - (up.double() @ down.double()).numpy())
    optimal = np.linalg.norm(weight.double().numpy() - exact)
    assert captured < 1.001 * optimal, (captured, optimal)
    # near the cut the tail's singular values are close, so the subspace itself may turn a little: 2% here
    assert relative(up.double() @ down.double(), exact) < 0.05
    again = split(weight, 16, torch.float16)
    assert torch.equal(again[0], down) and torch.equal(again[1], up)  # seeded: a reload gives the same factors


def test_a_models_bits_per_weight_weighs_each_layer_by_its_size():
    from comfyui_qsched.quant.layers import bits_per_weight_of
    net = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 128), nn.Linear(128, 32), nn.Linear(32, 8))
    assert bits_per_weight_of(net) is None
    quantize_module(net.requires_grad_(False), "W4A8-g32-r8")  # layers 1 and 2; first and last stay float
    expected = (bits_per_weight("W4A8-g32-r8", 128, 64) * 128 * 64 + bits_per_weight("W4A8-g32-r8", 32, 128) * 32
                * 128) / (128 * 64 + 32 * 128)
    assert bits_per_weight_of(net) == pytest.approx(expected)


def test_the_report_gives_the_bits_per_weight():
    net = two_layers()
    report = quantize_module(net, "W4A8-g32-r8")
    assert report.bits_per_weight == bits_per_weight("W4A8-g32-r8", 96, 96)
    assert f"{report.bits_per_weight:.2f} bits per quantized weight" in report.summary()
