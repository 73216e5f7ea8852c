"""SmoothQuant's migration as the calibrated loader ships it (quant/smoothing.py): the factors against the formula
written out in float64, the float product unchanged, the smoothed moments against the inputs' own, a smoothed
quantized layer against an independent float64 reference on every CPU backend (Linear and Conv2d), passes, LoRA
requantization, the cache, the export refusal, and the testbed's smooth() bit for bit as it was measured."""
import copy

import pytest
import torch
from torch import nn

from comfyui_qsched.quant import gptq, smoothing
from comfyui_qsched.quant.apply import quantize_module
from comfyui_qsched.quant.calibrated import gptq_layers, round_in_passes
from comfyui_qsched.quant.spec import QuantSpec

POLICY = "first_last=off"   # these small models' every layer is quantized


def outlier_inputs(rows, columns, seed=0):
    """Activations whose few channels are 30x larger than the rest, as SmoothQuant's paper finds in transformers."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, columns, generator=generator)
    x[:, ::17] *= 30.0
    return x


def linear(seed=1, columns=64, rows=48):
    torch.manual_seed(seed)
    return nn.Linear(columns, rows)


def moments(x):
    return (x.double().T @ x.double() / x.shape[0]).float()


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_factors_follow_the_formula_in_float64_for_linear_and_conv():
    layer = linear()
    x = outlier_inputs(512, 64)
    s = smoothing.factors(layer.weight, moments(x))
    w, h = layer.weight.double(), x.double().T @ x.double() / 512
    expected = h.diagonal().sqrt() ** 0.5 / w.abs().amax(0) ** 0.5
    assert s.dtype == torch.float32 and s.shape == (64,)
    assert torch.allclose(s.double(), expected, rtol=1e-5)
    conv = nn.Conv2d(6, 8, 3)
    patches = torch.randn(300, 6 * 9, dtype=torch.float64)
    h = patches.T @ patches / 300
    rms = h.diagonal().view(6, 9).mean(1).sqrt()     # the channel's mean square over its kernel's columns
    w_max = conv.weight.double().abs().transpose(0, 1).reshape(6, -1).amax(1)
    assert torch.allclose(smoothing.factors(conv.weight, h.float()).double(), rms ** 0.5 / w_max ** 0.5, rtol=1e-5)


def test_the_float_product_and_the_moments_follow_the_smoothing():
    layer = linear()
    x = outlier_inputs(256, 64)
    s = smoothing.factors(layer.weight, moments(x))
    smoothed_x = smoothing.divide_input(x, s, -1)
    product = nn.functional.linear(smoothed_x.double(), smoothing.smoothed_weight(layer.weight, s).double())
    assert rel(product, nn.functional.linear(x.double(), layer.weight.double())) < 1e-6
    assert torch.allclose(smoothing.smoothed_moments(moments(x), s), moments(smoothed_x), rtol=1e-4, atol=1e-6)
    assert torch.allclose(smoothing.original_weight(smoothing.smoothed_weight(layer.weight, s), s), layer.weight,
                          rtol=1e-6, atol=0)
    spread = lambda v: float(v.abs().amax(0).max() / v.abs().amax(0).min())   # noqa: E731
    assert spread(smoothed_x) < 0.2 * spread(x)     # the outlier channels are tamed


def test_modes_resolve_on_for_4_bit_activations_only_under_auto():
    assert smoothing.resolve("auto", QuantSpec.parse("W4A4-g16-r8"))
    assert not smoothing.resolve("auto", QuantSpec.parse("W4A8-g64"))
    assert not smoothing.resolve("auto", QuantSpec.parse("W4A16"))
    assert smoothing.resolve("on", QuantSpec.parse("W8A8")) and not smoothing.resolve("off", QuantSpec.parse("W4A4"))
    with pytest.raises(ValueError, match="smoothing must be one of auto, on, off, got 'yes'"):
        smoothing.resolve("yes", QuantSpec.parse("W4A4"))


def reference_output(x, s, codes, scale, spec, weight_shape, bias, down=None, up=None):
    """Independent float64 forward of a smoothed quantized Linear: x / s, fake-quantized per token to a_bits (absmax
    over the row, symmetric), times codes * scale, plus the branch on the unquantized x / s."""
    xs = x.double() / s.double()
    if not spec.weight_only:
        limit = 2 ** (spec.a_bits - 1) - 1
        step = xs.abs().amax(-1, keepdim=True) / limit
        xs_q = torch.round(xs / step).clamp(-limit, limit) * step
    else:
        xs_q = xs
    columns = weight_shape[1]
    per_column = scale.double().repeat_interleave(columns // scale.shape[1], dim=1)
    out = xs_q @ (codes.double() * per_column).T + bias.double()
    if down is not None:
        out = out + (xs @ down.double().T) @ up.double().T
    return out


@pytest.mark.parametrize("spec_text", ["W4A4-g16", "W4A4-g16-r8", "W8A8", "W4A16"])
def test_a_smoothed_layer_matches_an_independent_float64_reference(spec_text):
    spec = QuantSpec.parse(spec_text)
    layer, x = linear().double().float(), outlier_inputs(64, 64, seed=3)
    h = moments(outlier_inputs(512, 64))
    s = smoothing.factors(layer.weight, h)
    holder = nn.Sequential(layer)
    tensors = gptq.calibrated_tensors(layer, spec, h, (torch.int8,), None, s)
    quantize_module(holder, spec, POLICY, backend="simulate", calibrated={"0": (spec.name, *tensors)})
    quantized = holder[0]
    assert torch.equal(quantized.smoothing_divisor, s)
    codes = quantized.codes().float()
    branch = (quantized.lowrank_down, quantized.lowrank_up) if spec.rank else ()
    expected = reference_output(x, s, codes, quantized.weight_scale, spec, (48, 64), quantized.bias, *branch)
    with torch.no_grad():
        got = quantized(x)
    # float32 against float64: the fake quantization's rounding points may differ by one step on a few entries
    assert rel(got.double(), expected) < 2e-3, rel(got.double(), expected)


def smoothed_layers(spec_text, backend, conv=False, seed=2):
    """(float layer, the same quantized with smoothing, inputs): codes by GPTQ on W diag(s) through quantize_module."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1) if conv else nn.Linear(64, 48))
    if conv:
        x = torch.randn(8, 16, 8, 8)   # 512 patches for 144 columns: GPTQ's row rule holds
        x[:, ::5] *= 30
    else:
        x = outlier_inputs(256, 64, seed=4)
    float_model = copy.deepcopy(model)
    layers = gptq_layers(model, spec_text, POLICY, backend)
    rounded = round_in_passes(model, layers, lambda: model(x), 1 << 30, "cpu", smooth=True)
    quantize_module(model, spec_text, POLICY, backend=backend, calibrated=rounded)
    return float_model[0], model[0], x


@pytest.mark.parametrize("backend,spec_text", [("simulate", "W4A4-g16-r8"), ("simulate", "W4A16"),
                                               ("int8", "W8A8"), ("int8", "W4A8-r8"), ("fp8", "W4A8-r8"),
                                               ("int8", "W4A8-g16")])
def test_every_backend_sees_the_divided_input_in_its_quantized_path_and_branch(backend, spec_text):
    """The layer with its divisor equals the same layer without it fed x / s: the divisor is applied once, before
    whatever the backend does (its GEMM, its custom op, the branch)."""
    _, layer, x = smoothed_layers(spec_text, backend)
    s = layer.smoothing_divisor
    assert s is not None and layer.quant_spec is not None
    with torch.no_grad():
        got = layer(x)
        undivided = copy.deepcopy(layer)
        undivided._buffers.pop("input_divisor")
        expected = undivided(smoothing.divide_input(x, s, -1))
    assert torch.equal(got, expected)
    assert not torch.equal(got, undivided(x))


def test_a_smoothed_conv_layer_divides_its_input_channels():
    float_layer, layer, x = smoothed_layers("W4A4", "simulate", conv=True)
    s = layer.smoothing_divisor
    assert s.shape == (16,)
    with torch.no_grad():
        undivided = copy.deepcopy(layer)
        undivided._buffers.pop("input_divisor")
        assert torch.equal(layer(x), undivided(x / s.view(1, -1, 1, 1)))
        assert rel(layer(x), float_layer(x)) < 0.3
    # the weight LoRA and export see is in the input's own units: the stored W diag(s) divided by s again
    assert torch.allclose(layer.float_weight() * s.view(1, -1, 1, 1), layer.dequantize(), rtol=1e-6, atol=1e-8)


def test_smoothing_lowers_the_w4a4_error_on_outlier_channels():
    float_layer, smoothed, x = smoothed_layers("W4A4-g16-r8", "simulate")
    model = nn.Sequential(copy.deepcopy(float_layer))
    rounded = round_in_passes(model, gptq_layers(model, "W4A4-g16-r8", POLICY), lambda: model(x), 1 << 30, "cpu")
    quantize_module(model, "W4A4-g16-r8", POLICY, calibrated=rounded)
    held_out = outlier_inputs(256, 64, seed=9)
    with torch.no_grad():
        reference = float_layer(held_out)
        errors = rel(smoothed(held_out), reference), rel(model[0](held_out), reference)
    print(f"W4A4-g16-r8 GPTQ on 30x outlier channels, held-out inputs: smoothed {errors[0]:.4f}, plain {errors[1]:.4f}")
    assert errors[0] < 0.7 * errors[1], errors


def test_codes_with_smoothing_in_several_passes_equal_one_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16))
    x = outlier_inputs(256, 32)
    layers = gptq_layers(model, "W4A4-g16-r4", POLICY)
    one = round_in_passes(model, layers, lambda: model(x), 1 << 30, "cpu", smooth=True)
    passes = []
    several = round_in_passes(model, layers, lambda: model(x), gptq.accumulator_bytes(64, "cpu"), "cpu",
                              smooth=True, on_pass=lambda i, n, names: passes.append(names))
    assert len(passes) == 3 and one.keys() == several.keys() == set(layers)
    for name in one:
        assert one[name][0] == several[name][0] and len(one[name]) == 6
        assert all(torch.equal(a, b) for a, b in zip(one[name][1:], several[name][1:]))
    assert all(p.is_floating_point() for p in model.parameters())      # the float model was never touched


def gptq_layer(spec_text, smooth):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 48))
    float_layer, x = copy.deepcopy(model[0]), outlier_inputs(256, 64, seed=4)
    rounded = round_in_passes(model, gptq_layers(model, spec_text, POLICY), lambda: model(x), 1 << 30, "cpu",
                              smooth=smooth)
    quantize_module(model, spec_text, POLICY, calibrated=rounded)
    return float_layer, model[0], x


def low_rank_patch(float_layer, size=0.1):
    """A LoRA-like change: rank 4, its effect on the output 13% of the output's norm here."""
    generator = torch.Generator().manual_seed(7)
    return size * float_layer.weight.detach().abs().mean() * (torch.randn(48, 4, generator=generator)
                                                             @ torch.randn(4, 64, generator=generator))


@pytest.mark.parametrize("spec_text", ["W4A4-g16", "W4A4-g16-r8"])
def test_a_lora_on_a_smoothed_layer_requantizes_w_plus_dw_times_s(spec_text):
    """A patch made for W (ComfyUI's LoRA) applied to float_weight and stored by requantize_float: the codes equal
    those of (W + dW) diag(s) minus the branch on the layer's fixed scales (an independent float64 rounding), the
    layer then follows the float layer with the LoRA as closely as the unsmoothed layer does with it, and storing
    the unpatched float weight gives back the codes."""
    float_layer, layer, x = gptq_layer(spec_text, smooth=True)
    s, scale, before = layer.smoothing_divisor, layer.weight_scale.clone(), layer.weight.clone()
    delta = low_rank_patch(float_layer)
    patched = layer.float_weight() + delta
    codes = layer.requantize_float(patched)
    expected = patched.double() * s.double()
    if layer.quant_spec.rank:
        expected -= layer.lowrank_up.double() @ layer.lowrank_down.double()
    columns = scale.double().repeat_interleave(64 // scale.shape[1], dim=1)
    limit = 2 ** (layer.quant_spec.w_bits - 1) - 1
    expected_codes = torch.round(expected / columns).clamp(-limit, limit)
    assert (layer.codes(codes).double() != expected_codes).float().mean() < 1e-3   # float32 ties at half steps only

    def error_with_lora(layer):
        patched = copy.deepcopy(layer)
        patched.weight = nn.Parameter(patched.requantize_float(patched.float_weight() + delta), requires_grad=False)
        with torch.no_grad():
            return rel(patched(x), nn.functional.linear(x, float_layer.weight + delta, float_layer.bias))

    with torch.no_grad():
        lora_effect = rel(nn.functional.linear(x, float_layer.weight + delta, float_layer.bias), float_layer(x))
    smoothed_error, plain_error = error_with_lora(layer), error_with_lora(gptq_layer(spec_text, smooth=False)[1])
    print(f"{spec_text} + LoRA (effect {lora_effect:.3f}) vs float + LoRA: smoothed {smoothed_error:.3f}, "
          f"not smoothed {plain_error:.3f}")
    assert smoothed_error < 1.1 * plain_error and smoothed_error < lora_effect, (smoothed_error, plain_error)
    restored = layer.requantize_float(layer.float_weight(before))
    assert torch.equal(restored, before) and torch.equal(layer.weight_scale, scale)


def test_the_export_refuses_a_smoothed_int8_layer_and_folds_a_dequantized_one():
    from comfyui_qsched.quant.export import ExportError, comfy_int8_state_dict
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
    x = outlier_inputs(256, 64)
    rounded = round_in_passes(model, gptq_layers(model, "W8A8", POLICY), lambda: model(x), 1 << 30, "cpu",
                              smooth=True)
    quantize_module(model, "W8A8", POLICY, calibrated=rounded)
    with pytest.raises(ExportError, match=r"^layer '0' is smoothed \(SmoothQuant alpha 0.5\): ComfyUI's int8 format "
                                          r"has no input divisor"):
        comfy_int8_state_dict(model)
    torch.manual_seed(0)
    weight_only = nn.Sequential(nn.Linear(64, 64))
    float_weight = weight_only[0].weight.detach().clone()
    rounded = round_in_passes(weight_only, gptq_layers(weight_only, "W8A16", POLICY), lambda: weight_only(x), 1 << 30,
                              "cpu", smooth=True)
    quantize_module(weight_only, "W8A16", POLICY, calibrated=rounded)
    state, counts = comfy_int8_state_dict(weight_only, torch.float32)
    assert "0.input_divisor" not in state and counts == {"weight-only linear, dequantized": 1}
    assert torch.allclose(state["0.weight"], weight_only[0].float_weight(), rtol=0, atol=0)
    with torch.no_grad():   # the written weight computes what the smoothed layer computes
        written = nn.functional.linear(x, state["0.weight"], state["0.bias"])
        assert rel(written, weight_only(x)) < 1e-5
    assert rel(state["0.weight"], float_weight) < 0.05


def test_the_cache_stores_the_divisor_and_names_a_mismatch(tmp_path):
    from safetensors.torch import load_file, save_file
    from comfyui_qsched.quant.cache import CacheError, cache_identity, read_cache, save_cache
    float_layer, layer, x = smoothed_layers("W4A4-g16-r8", "simulate")
    model = nn.Sequential(layer)
    identity = cache_identity("0" * 64, "W4A4-g16-r8", None, "simulate", {"smoothing": smoothing.NAME})
    assert identity != cache_identity("0" * 64, "W4A4-g16-r8", None, "simulate", {})
    path = str(tmp_path / "c.safetensors")
    save_cache(path, model, identity, {"0"})
    stored = read_cache(path, identity)
    assert torch.equal(stored["0"][5], layer.smoothing_divisor) and stored["0"][5].dtype == torch.float32
    fresh = nn.Sequential(copy.deepcopy(float_layer))   # the source's float model (bias as it is)
    quantize_module(fresh, "W4A4-g16-r8", POLICY, stored=stored)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    tensors = load_file(path)
    del tensors["0.input_divisor"]
    save_file(tensors, path, metadata=identity)
    with pytest.raises(CacheError, match=r"layer '0' has no smoothing divisor, but its metadata names "
                                         r"'SmoothQuant alpha 0.5'"):
        read_cache(path, identity)
    bad = {"0": (*stored["0"][:5], torch.ones(63))}
    with pytest.raises(ValueError, match=r"layer '0': stored smoothing divisor torch.float32\(63,\) does not match "
                                         r"float32 \(64,\)"):
        quantize_module(nn.Sequential(nn.Linear(64, 48)), "W4A4-g16-r8", POLICY, stored=bad)


def test_the_testbed_smooth_gives_what_was_measured_bit_for_bit():
    """testbed/digits' smooth() now calls quant/smoothing.py; against its former code (written out here) on the
    testbed's own layers and moments: the same weights, moments and smoothed predictions, bit for bit."""
    from comfyui_qsched.testbed.digits import quantizer_experiment as qe
    from comfyui_qsched.testbed.digits.diffusion import LCMDenoiser
    from comfyui_qsched.testbed.digits.experiment import load_testbed
    unet = load_testbed()[0]
    hessians = qe.calibration_moments(unet, "W4A4-g16", 2, pairs=10)

    def former(unet, hessians, alpha=0.5):
        smoothed = {}
        for name, hessian in hessians.items():
            layer = unet.get_submodule(name)
            weight = layer.weight.data
            channels = weight.shape[1]
            per_column = hessian.diagonal().clamp(min=1e-12).sqrt().view(channels, -1)
            rms = per_column.square().mean(1).sqrt()
            weight_max = weight.abs().transpose(0, 1).reshape(channels, -1).amax(1).clamp(min=1e-8)
            factors = (rms ** alpha / weight_max ** (1 - alpha)).clamp(min=1e-5)
            layer.weight.data = weight * factors.view(1, channels, *([1] * (weight.dim() - 2)))
            shape = (-1,) if isinstance(layer, torch.nn.Linear) else (channels, 1, 1)

            def divide(module, inputs, shape=shape, factors=factors):
                return (inputs[0] / factors.view(shape).to(inputs[0].dtype),) + tuple(inputs[1:])
            layer.register_forward_pre_hook(divide)
            columns = factors.repeat_interleave(per_column.shape[1])
            smoothed[name] = hessian / columns[:, None] / columns[None, :]
        return smoothed

    mine, theirs = copy.deepcopy(unet), copy.deepcopy(unet)
    now, before = qe.smooth(mine, hessians), former(theirs, hessians)
    assert qe.SMOOTH_ALPHA == smoothing.ALPHA == 0.5 and now.keys() == before.keys()
    assert all(torch.equal(now[name], before[name]) for name in now)
    assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    x = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 3
    sigma, labels = torch.full((10,), 3.0), torch.arange(10)
    with torch.no_grad():
        assert torch.equal(LCMDenoiser(mine)(x, sigma, labels=labels), LCMDenoiser(theirs)(x, sigma, labels=labels))
