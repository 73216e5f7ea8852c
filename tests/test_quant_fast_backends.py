"""The auto and comfy_kitchen backends, the fast weight-only layers and the ComfyUI int8 export, in plain torch.

What needs a GPU to run (Triton kernels, FP8 GEMMs on CUDA) is planned here with the device named "cuda" and
checked by bench/peers.py on the GPU; the CPU paths and every layer choice are checked here."""
import copy
import json

import pytest
import torch
from torch import nn

from comfyui_qsched.quant import BackendError, numerics, quantize_module
from comfyui_qsched.quant import auto, fp8, kitchen
from comfyui_qsched.quant.export import ExportError, comfy_int8_state_dict
from comfyui_qsched.quant.fast import FastWeightOnlyConv, FastWeightOnlyLinear


def net(seed=0):
    """A conv, a wide linear (2048 x 2048, where 8-bit compute pays), a narrow one, a one-row 'modulation'."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(4, 8, 3, padding=1))
    model.add_module("flat", nn.Flatten())
    model.add_module("wide", nn.Linear(8 * 4 * 4, 2048))
    model.add_module("wide2", nn.Linear(2048, 2048))
    model.add_module("narrow", nn.Linear(2048, 64))
    model.add_module("head", nn.Linear(64, 16))
    return model.requires_grad_(False)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_auto_on_the_cpu_is_the_simulate_backend_exactly():
    model, reference = net(), net()
    report = quantize_module(model, "W4A8", backend="auto", device="cpu")
    quantize_module(reference, "W4A8", backend="simulate")
    assert set(report.by_backend()) == {"auto: simulate (cpu: exact numerics)"}
    x = torch.randn(3, 4, 4, 4)
    assert torch.equal(model(x), reference(x))


def test_auto_plans_per_layer_on_an_fp8_gpu(monkeypatch):
    """Wide linears get FP8 GEMMs, narrow ones and convolutions keep 8-bit storage with 16-bit compute, one-row
    layers stay weight-only; specs without a fast kernel keep simulate's exact numerics."""
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: True)
    model = net()
    report = quantize_module(model, "W8A8", backend="auto", device="cuda", policy="first_last=off, head=W8A16")
    how = {layer.name: layer.backend for layer in report.layers}
    assert how["wide2"] == "auto: fp8" and isinstance(model.wide2, fp8.Fp8Linear)
    assert how["wide"].startswith("auto: weight-only (GEMM too small")  # 128 inputs
    assert how["narrow"].startswith("auto: weight-only (GEMM too small") and isinstance(model.narrow,
                                                                                         FastWeightOnlyLinear)
    assert how["conv"] == "auto: weight-only (convolution)" and isinstance(model.conv, FastWeightOnlyConv)
    assert how["head"].startswith("auto: weight-only (16-bit activations")
    assert model.narrow.quant_spec.name == "W8A16" and model.wide2.quant_spec.name == "W8A8"
    other = quantize_module(net(), "W4A4", backend="auto", device="cuda", policy="first_last=off")
    assert {layer.backend for layer in other.layers if layer.kind == "Linear"} == {"auto: simulate (no fast kernel "
                                                                                   "for W4A4)"}


def test_auto_on_a_gpu_without_fp8_takes_int8_tensor_cores(monkeypatch):
    """Turing / Ampere (7.5-8.8): W8A8 and W4A8 linears that pay get the int8 backend; older GPUs weight-only."""
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: False)
    monkeypatch.setattr(auto, "int8_supported", lambda device: True)
    backend = auto.AutoBackend()
    backend.check(None, "cuda")
    model = net()
    assert backend.choose(model.wide2, numerics_spec("W8A8"))[0] == "int8"
    assert backend.choose(model.wide2, numerics_spec("W4A8"))[0] == "int8"
    assert backend.choose(model.narrow, numerics_spec("W8A8"))[0] == "weight-only"
    monkeypatch.setattr(auto, "int8_supported", lambda device: False)
    assert backend.choose(model.wide2, numerics_spec("W8A8"))[0] == "weight-only"


def numerics_spec(text):
    from comfyui_qsched.quant import QuantSpec
    return QuantSpec.parse(text)


def test_auto_planned_for_a_gpu_runs_on_the_cpu_close_to_simulate(monkeypatch):
    """The GPU plan's layers also run on the CPU (torch paths): FP8 where chosen, weight-only elsewhere; weight-only
    layers have less error than simulate's W8A8 on the same layers."""
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: True)
    x = torch.randn(4, 4, 4, 4)
    reference = net()(x)
    planned, simulated = net(), net()
    quantize_module(planned, "W8A8", backend="auto", device="cuda", policy="first_last=off")
    quantize_module(simulated, "W8A8", backend="simulate", policy="first_last=off")
    assert relative_error(planned(x), reference) < 0.05 and relative_error(simulated(x), reference) < 0.05
    only_weights = net()
    quantize_module(only_weights, "W8A16", backend="simulate", policy="first_last=off")
    narrow_input = torch.randn(4, 2048)
    assert torch.equal(planned.narrow(narrow_input), only_weights.narrow(narrow_input))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fast_int8_weight_is_the_simulate_dequantization_bit_for_bit(dtype):
    model = net()
    quantize_module(model, "W8A16", backend="auto", device="cpu", policy="first_last=off")
    layer = model.narrow
    layer.__class__ = type("Probe", (FastWeightOnlyLinear, nn.Linear), {})
    x = torch.randn(2, 2048, dtype=dtype)
    widened = layer.fast_weight(layer.weight, x)
    assert widened.dtype == dtype and torch.equal(widened, layer.dequantize(dtype=dtype))
    assert layer.scale_as(x) is layer.scale_as(x)  # converted once
    layer.register_buffer("weight_scale", layer.weight_scale.clone())
    assert layer.scale_as(x) is not widened  # a new buffer (e.g. after .to()) is converted again
    assert torch.equal(layer.scale_as(x), layer.weight_scale.to(dtype))


def test_comfy_kitchen_backend_is_simulate_numerics_or_names_the_missing_package():
    model, reference = net(), net()
    if not kitchen.available():
        with pytest.raises(BackendError, match="needs the package 'comfy_kitchen'"):
            quantize_module(model, "W8A8", backend="comfy_kitchen")
        return
    report = quantize_module(model, "W8A8", backend="comfy_kitchen", policy="first_last=off")
    quantize_module(reference, "W8A8", backend="simulate", policy="first_last=off")
    assert report.by_backend()["comfy_kitchen int8_linear"] == 4  # every linear; the conv falls back
    assert isinstance(model.wide2, kitchen.KitchenInt8Linear) and model.wide2.weight.dtype == torch.int8
    assert torch.equal(model.wide2.weight, reference.wide2.weight)  # the same stored codes
    x = torch.randn(3, 2048)
    for name in ("wide2", "narrow"):  # int32 accumulation vs float GEMM on the same codes: rounding only
        assert relative_error(getattr(model, name)(x), getattr(reference, name)(x)) < 1e-5


def test_comfy_kitchen_refuses_other_specs():
    with pytest.raises(BackendError, match="comfy_kitchen does W8A8 only"):
        quantize_module(net(), "W4A8", backend="comfy_kitchen")


def test_comfy_int8_export_layout():
    model = net()
    report = quantize_module(model, "W8A8", backend="simulate", policy="first_last=off, head=W8A16")
    state, counts = comfy_int8_state_dict(model, dtype=torch.float32)
    assert counts == {"int8 W8A8 linear": 3, "weight-only linear, dequantized": 1, "convolution, dequantized": 1}
    assert report.quantized == 5
    for name in ("wide", "wide2", "narrow"):
        layer = getattr(model, name)
        assert state[f"{name}.weight"].dtype == torch.int8 and torch.equal(state[f"{name}.weight"], layer.weight)
        assert state[f"{name}.weight_scale"].shape == (layer.out_features,)
        assert json.loads(bytes(state[f"{name}.comfy_quant"].tolist())) == {"format": "int8_tensorwise"}
    for name in ("head", "conv"):  # ComfyUI cannot keep these quantized with the same numerics: 16-bit weights
        layer = getattr(model, name)
        assert f"{name}.comfy_quant" not in state and f"{name}.weight_scale" not in state
        assert torch.equal(state[f"{name}.weight"], numerics.dequantize_weight(
            layer.codes(), layer.weight_scale).reshape(layer.float_weight_shape()))
    assert torch.equal(state["wide.bias"], model.wide.bias)


def test_comfy_int8_export_refuses_what_the_format_cannot_hold():
    with pytest.raises(ExportError, match="no quantized layer"):
        comfy_int8_state_dict(net())
    e4m3 = net()
    quantize_module(e4m3, "W8A8", backend="fp8", policy="first_last=off")
    with pytest.raises(ExportError, match="quantize with backend 'simulate' or 'comfy_kitchen'"):
        comfy_int8_state_dict(e4m3)
    four_bit = copy.deepcopy(net())
    quantize_module(four_bit, "W4A8", backend="simulate", policy="first_last=off")
    with pytest.raises(ExportError, match="W4A8 stored as torch.uint8"):
        comfy_int8_state_dict(four_bit)
