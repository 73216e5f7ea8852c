import copy

import pytest
import torch
from torch import nn

from comfyui_qsched.quant import BackendError, LayerPolicy, QuantSpec, QuantSpecError, module_bytes, quantize_module
from comfyui_qsched.quant import numerics

ALL_SPECS = ["W8A8", "W6A8", "W4A8", "W4A6", "W4A5", "W4A4"]


def small_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(),
                        nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                        nn.Linear(256, 32))
    return net.requires_grad_(False)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_parse_specs():
    spec = QuantSpec.parse("w4a8-g128")
    assert (spec.w_bits, spec.a_bits, spec.weight_granularity, spec.group_size) == (4, 8, "group", 128)
    assert QuantSpec.parse("W8A8-tensor").act_granularity == "tensor"
    assert QuantSpec.parse("W4A16").weight_only
    for text in ALL_SPECS + ["W4A8-g64", "W8A8-tensor", "W4A16"]:
        assert QuantSpec.parse(QuantSpec.parse(text).name) == QuantSpec.parse(text)


@pytest.mark.parametrize("text,problem", [("W9A8", "weight bits"), ("W4A12", "activation bits"),
                                          ("W4A8-g3", "group size"), ("W4A8-foo", "unknown option"),
                                          ("int4", "cannot parse")])
def test_bad_specs_are_named(text, problem):
    with pytest.raises(QuantSpecError, match=problem):
        QuantSpec.parse(text)


@pytest.mark.parametrize("columns", [64, 63])
def test_int4_packing_round_trips(columns):
    codes = torch.randint(-7, 8, (5, columns), dtype=torch.int8)
    packed = numerics.pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (columns + 1) // 2)
    assert torch.equal(numerics.unpack_int4(packed, columns), codes)


def test_weight_error_shrinks_as_bits_grow():
    torch.manual_seed(1)
    weight = torch.randn(64, 256)
    errors = []
    for bits in range(2, 9):
        codes, scale = numerics.quantize_weight(weight, bits)
        errors.append(relative_error(numerics.dequantize_weight(codes, scale), weight))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors


def test_every_bit_width_through_simulate_orders_by_error():
    net, x = small_net(), torch.randn(2, 4, 8, 8)
    reference = net(x)
    errors = {}
    for text in ALL_SPECS:
        quantized = copy.deepcopy(net)
        report = quantize_module(quantized, text, policy="first_last=off")
        assert report.quantized == 5 and report.kept == 0
        errors[text] = relative_error(quantized(x), reference)
    ordered = [errors[text] for text in ALL_SPECS]
    assert all(0 < a < b for a, b in zip(ordered, ordered[1:])), errors
    assert errors["W8A8"] < 0.02


def test_packed_storage_is_really_smaller():
    net = small_net()
    before = module_bytes(net)
    w8 = quantize_module(copy.deepcopy(net), "W8A8", policy="first_last=off")
    w4_model = copy.deepcopy(net)
    w4 = quantize_module(w4_model, "W4A8", policy="first_last=off")
    assert w8.bytes_before == before and w4.bytes_before == before
    assert w8.ratio < 0.27 and w4.ratio < 0.14  # fp32 -> 1 byte / half a byte + small scales and fp32 biases
    layer = w4_model[5]
    assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == 256 * 64 * 8 * 8 // 2
    assert module_bytes(w4_model) == w4.bytes_after


def test_group_weights_and_per_tensor_activations():
    net, x = small_net(), torch.randn(2, 4, 8, 8)
    reference = net(x)
    grouped = copy.deepcopy(net)
    report = quantize_module(grouped, "W4A16-g32", policy="first_last=off")
    channel = copy.deepcopy(net)
    quantize_module(channel, "W4A16", policy="first_last=off")
    assert grouped[5].weight_scale.shape == (256, 64 * 8 * 8 // 32)
    assert relative_error(grouped(x), reference) < relative_error(channel(x), reference)
    conv_in = next(layer for layer in report.layers if layer.name == "0")
    assert "per channel" in conv_in.reason  # 36 columns: 32 does not divide them
    per_tensor = copy.deepcopy(net)
    quantize_module(per_tensor, "W8A4-tensor", policy="first_last=off")
    per_token = copy.deepcopy(net)
    quantize_module(per_token, "W8A4", policy="first_last=off")
    assert relative_error(per_token(x), reference) < relative_error(per_tensor(x), reference)


def per_group_fake_quantize(x, bits, group, channel_dim):
    """Independent reference for activation groups: one scale per slice of `group` channels of each token (the last
    slice shorter), slice by slice, in float32 as the contract says."""
    qmax = 2 ** (bits - 1) - 1
    moved = x.float().movedim(channel_dim, -1).clone()
    for start in range(0, moved.shape[-1], group):
        block = moved[..., start:start + group]
        scale = block.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
        moved[..., start:start + group] = torch.round(block / scale).clamp(-qmax, qmax) * scale
    return moved.movedim(-1, channel_dim).to(x.dtype)


@pytest.mark.parametrize("shape,channel_dim,group", [((3, 5, 12), -1, 4), ((3, 5, 10), -1, 4), ((2, 10, 3, 3), 1, 4),
                                                     ((2, 6, 3, 3), 1, 6)])
def test_activation_groups_quantize_each_slice_of_each_token_alone(shape, channel_dim, group):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[..., 0] *= 30  # an outlier: with per-token scales it would flatten its whole token
    got = numerics.fake_quantize_activation(x, 4, "group", channel_dim, group)
    expected = per_group_fake_quantize(x, 4, group, channel_dim)
    assert got.dtype == x.dtype and torch.equal(got, expected)
    per_token = numerics.fake_quantize_activation(x, 4, "token", channel_dim)
    if group == x.shape[channel_dim]:  # one group per token is per-token quantization
        assert torch.equal(got, per_token)
    else:
        assert relative_error(got, x) < relative_error(per_token, x)


def test_activation_groups_through_the_layers():
    """W8A4-ag8 on the simulate backend: each linear quantizes its input per group of 8 channels of each token
    (checked on one layer against the reference), and the model's error drops below per-token W8A4's."""
    net, x = small_net(), torch.randn(2, 4, 8, 8)
    reference = net(x)
    grouped = copy.deepcopy(net)
    report = quantize_module(grouped, "W8A4-ag8", policy="first_last=off")
    assert {str(layer.spec) for layer in report.layers if layer.spec is not None} == {"W8A4-ag8"}
    per_token = copy.deepcopy(net)
    quantize_module(per_token, "W8A4", policy="first_last=off")
    assert relative_error(grouped(x), reference) < relative_error(per_token(x), reference)
    layer, inputs = grouped[7], torch.randn(3, 256)
    expected = nn.functional.linear(per_group_fake_quantize(inputs, 4, 8, -1).double(),
                                    numerics.dequantize_weight(layer.codes(), layer.weight_scale).double(),
                                    layer.bias.double())
    assert torch.allclose(layer(inputs).double(), expected, rtol=1e-5, atol=1e-5)


def test_the_8bit_backends_refuse_activation_groups():
    for backend in ("fp8", "int8"):
        with pytest.raises((BackendError, ValueError), match="per-token activations only"):
            quantize_module(small_net(), "W4A8-ag64", backend=backend)


def test_default_policy_keeps_first_and_last_layers():
    net = small_net()
    report = quantize_module(net, "W8A8")
    kept = {layer.name for layer in report.layers if layer.spec is None}
    assert kept == {"0", "9"}
    assert net[0].weight.dtype == torch.float32 and net[2].weight.dtype == torch.int8


class ToyDiT(nn.Module):
    """Names as ComfyUI's Flux uses them."""

    def __init__(self):
        super().__init__()
        self.img_in = nn.Linear(16, 32)
        self.time_in = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32))
        self.double_blocks = nn.ModuleList(nn.ModuleDict({"img_mod": nn.ModuleDict({"lin": nn.Linear(32, 96)}),
                                                          "qkv": nn.Linear(32, 96), "proj": nn.Linear(32, 32)})
                                           for _ in range(2))
        self.final_layer = nn.ModuleDict({"linear": nn.Linear(32, 16)})


def test_policy_defaults_and_overrides_by_name():
    model = ToyDiT()
    policy = LayerPolicy.parse("double_blocks.1.*=keep, *.proj=W8A8", keep_first_last=False)
    report = quantize_module(model, "W4A8", policy=policy)
    decided = {layer.name: (layer.spec, layer.reason) for layer in report.layers}
    assert decided["img_in"][0] is None and decided["time_in.0"][0] is None and decided["final_layer.linear"][0] is None
    assert decided["double_blocks.0.img_mod.lin"][0] == "W4A16"  # one row per sample: weight-only
    assert decided["double_blocks.0.qkv"][0] == "W4A8"
    assert decided["double_blocks.0.proj"][0] == "W8A8"
    assert decided["double_blocks.1.qkv"] == (None, "override double_blocks.1.*")
    assert model.double_blocks[0].qkv.weight.dtype == torch.uint8
    assert model.double_blocks[0].proj.weight.dtype == torch.int8
    assert model.double_blocks[1].qkv.weight.dtype == torch.float32


@pytest.mark.parametrize("kwargs,error,problem", [
    ({"backend": "nunchaku"}, BackendError, "unknown quantization backend"),
    ({"backend": "fp8", "spec": "W4A4"}, ValueError, "fp8 backend does W8A8 and W4A8"),
    ({"backend": "bitsandbytes", "spec": "W4A8"}, BackendError, "no W4A8"),
    ({"policy": "conv_in keep"}, QuantSpecError, "not 'pattern=keep'"),
    ({"policy": "*.qkv=W3A9"}, QuantSpecError, "activation bits"),
])
def test_bad_inputs_fail_before_touching_the_model(kwargs, error, problem):
    net = small_net()
    arguments = {"spec": "W8A8", **kwargs}
    with pytest.raises(error, match=problem):
        quantize_module(net, arguments.pop("spec"), **arguments)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_missing_optional_backend_is_named():
    try:
        import torchao  # noqa: F401
        pytest.skip("torchao is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="needs the package 'torchao'"):
        quantize_module(small_net(), "W8A8", backend="torchao")


def test_fp8_backend_matches_fp8_numerics_on_cpu():
    net, x = small_net(), torch.randn(32, 4, 8, 8)
    reference = net(x)
    for text, bound in (("W8A8", 0.06), ("W4A8", 0.12)):
        model = copy.deepcopy(net)
        report = quantize_module(model, text, backend="fp8", policy="first_last=off")
        assert report.by_backend()["fp8"] == 3
        assert relative_error(model(x), reference) < bound
    assert model[5].weight.dtype == torch.uint8  # W4A8: int4 codes packed, cast to e4m3 for the GEMM


def test_fp8_linear_runs_odd_token_counts_through_the_fp8_gemm(monkeypatch):
    """77 text tokens are padded to 80 rows for torch._scaled_mm, and the padding never reaches the output."""
    from comfyui_qsched.quant.fp8 import Fp8Linear
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_module(net, "W8A8", backend="fp8", policy="first_last=off")
    assert isinstance(net[0], Fp8Linear)
    calls, real_scaled_mm = [], torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, *args, **kw: calls.append(a.shape) or real_scaled_mm(a, *args, **kw))
    x = torch.randn(1, 77, 64)
    out = net(x)
    assert calls == [(80, 64)] and out.shape == (1, 77, 32)
    row_by_row = torch.cat([net(x[:, i:i + 16]) for i in range(0, 77, 16)], dim=1)
    assert torch.allclose(out, row_by_row, atol=1e-6)  # per-token scales: each row independent of the others
