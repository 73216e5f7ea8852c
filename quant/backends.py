"""Backends turn one layer + spec into a quantized layer, and say honestly what they did.

auto          per device and layer, the fastest of the paths below that keeps the spec (quant/auto.py).
simulate      any bit width, CPU/GPU: packed int8 / int4 storage, quantize-dequantize numerics.
fp8           W8A8 / W4A8 linears through torch._scaled_mm (FP8 e4m3 activations); W4A8-g<G> through the Triton
              GEMM (quant/kernels/gemm_kernels.py); convs -> weight-only.
int8          W8A8 / W4A8 linears through torch._int_mm (int8 tensor cores: Turing, Ampere and later; CPU too);
              W8A8-g<G> / W4A8-g<G> through the Triton GEMM.
comfy_kitchen W8A8 linears through comfy-kitchen's int8_linear (ComfyUI 0.33+); convs -> weight-only.
bitsandbytes  W8A8 linears as LLM.int8 (Linear8bitLt, threshold 0), W4A16 as NF4 (Linear4bit); convs -> simulate.
torchao       W8A8 (int8 dynamic activations), W8A16 / W4A16 weight-only linears; convs -> simulate.
"weight-only" layers keep the simulate storage and compute in 16 bit (quant/fast.py: Triton kernels on CUDA).
bitsandbytes, torchao and comfy_kitchen are imported only when chosen. A low-rank branch (-r<N>) is added by the
shared packed-layer forward for simulate, weight-only, fp8 and comfy_kitchen layers; bitsandbytes and torchao
replace the layer with their own class and refuse it."""
import importlib

import torch
from torch import nn

from . import fp8, int8, kitchen
from .fast import FastSimulatedLinear, FastWeightOnlyConv, FastWeightOnlyLinear
from .layers import PackedWeightMixin, SimulatedConv, integer_layout, quantized_class


class BackendError(ValueError):
    pass


def _install(layer, spec, tensors, compute_device=None):
    """Quantize the layer's float weight, or take already quantized (packed, scale) tensors from a cache."""
    if tensors is None:
        layer.quantize_(spec, compute_device)
    else:
        layer.set_quantized_(spec, *tensors)


def _simulated_mixin(layer):
    return FastSimulatedLinear if isinstance(layer, nn.Linear) else SimulatedConv


def _simulate(layer, spec, how="simulate", tensors=None, compute_device=None):
    if not isinstance(layer, PackedWeightMixin):
        layer.__class__ = quantized_class(_simulated_mixin(layer), type(layer))
    _install(layer, spec, tensors, compute_device)
    return layer, how


def weight_only(layer, spec, how, tensors=None, compute_device=None):
    """8/4-bit storage as simulate stores it, 16-bit activations; fast kernels on CUDA (quant/fast.py)."""
    mixin = FastWeightOnlyLinear if isinstance(layer, nn.Linear) else FastWeightOnlyConv
    if not isinstance(layer, PackedWeightMixin):
        layer.__class__ = quantized_class(mixin, type(layer))
    _install(layer, spec.with_activations(16), tensors, compute_device)
    return layer, how


def _take_class(layer, layer_class, backend_name):
    """Make `layer` a `layer_class` (once: a cached reload finds it one already); another packed class cannot be."""
    if isinstance(layer, layer_class):
        return
    if isinstance(layer, PackedWeightMixin):
        raise BackendError(f"this layer class cannot take the {backend_name} backend")
    layer.__class__ = quantized_class(layer_class, type(layer))


def _weight_only_fallback(layer, spec, tensors, compute_device):
    kind = "linear" if isinstance(layer, nn.Linear) else "conv"
    return weight_only(layer, spec, f"weight-only ({kind} fallback)", tensors, compute_device)


class SimulateBackend:
    name = "simulate"
    cacheable = True

    def check(self, spec, device=None):
        pass

    def effective_spec(self, layer, spec):
        return spec

    def layout(self, layer, spec):
        return layer.packed_layout(spec) if isinstance(layer, PackedWeightMixin) else integer_layout(layer, spec)

    def quantize(self, layer, spec, tensors=None, compute_device=None):
        return _simulate(layer, spec, tensors=tensors, compute_device=compute_device)


class Fp8Backend:
    name = "fp8"
    cacheable = True

    def check(self, spec, device=None):
        fp8.check_spec(spec)
        if device is not None and not fp8.fp8_supported(device):
            raise BackendError(f"the fp8 backend needs a GPU with FP8 tensor cores (sm >= 8.9) or the CPU, not {device}")

    def effective_spec(self, layer, spec):
        return spec if isinstance(layer, nn.Linear) and not spec.weight_only else spec.with_activations(16)

    def layout(self, layer, spec):
        if isinstance(layer, nn.Linear) and not spec.weight_only:
            return fp8.fp8_layout(layer, spec)
        return SimulateBackend().layout(layer, spec)

    def quantize(self, layer, spec, tensors=None, compute_device=None):
        if isinstance(layer, nn.Linear) and not spec.weight_only:
            _take_class(layer, fp8.Fp8Linear, self.name)
            _install(layer, spec, tensors, compute_device)
            return layer, "fp8"
        return _weight_only_fallback(layer, spec, tensors, compute_device)


class Int8Backend:
    name = "int8"
    cacheable = True

    def check(self, spec, device=None):
        problem = int8.spec_problem(spec)
        if problem:
            raise BackendError(f"{problem}; use backend 'auto' or 'simulate'")
        device = None if device is None else torch.device(device)
        if device is not None and device.type == "cuda" and torch.cuda.get_device_capability(device) < (7, 5):
            raise BackendError(f"the int8 backend needs int8 tensor cores (compute capability 7.5+), not {device}")

    def effective_spec(self, layer, spec):
        return spec if int8.supports(layer, spec) else spec.with_activations(16)

    def layout(self, layer, spec):
        return SimulateBackend().layout(layer, spec)

    def quantize(self, layer, spec, tensors=None, compute_device=None):
        if int8.supports(layer, spec):
            _take_class(layer, int8.Int8Linear, self.name)
            _install(layer, spec, tensors, compute_device)
            return layer, "int8"
        return _weight_only_fallback(layer, spec, tensors, compute_device)


class ComfyKitchenBackend:
    name = "comfy_kitchen"
    cacheable = True

    def check(self, spec, device=None):
        if spec.base.name != "W8A8":
            raise BackendError(f"comfy_kitchen does W8A8 only (int8_linear: int8 weights, int8 activations per "
                               f"token), not {spec}; use backend 'auto', 'fp8' or 'simulate'")
        try:
            kitchen.load()
        except ImportError as error:
            raise BackendError(f"backend 'comfy_kitchen' needs the package 'comfy_kitchen' (ComfyUI 0.33+ installs "
                               f"it), which is not installed ({error}); use backend 'auto' or 'simulate'") from error

    def effective_spec(self, layer, spec):
        return spec if kitchen.supports(layer, spec) else spec.with_activations(16)

    def layout(self, layer, spec):
        return SimulateBackend().layout(layer, spec)

    def quantize(self, layer, spec, tensors=None, compute_device=None):
        if kitchen.supports(layer, spec):
            _take_class(layer, kitchen.KitchenInt8Linear, self.name)
            _install(layer, spec, tensors, compute_device)
            return layer, "comfy_kitchen int8_linear"
        return _weight_only_fallback(layer, spec, tensors, compute_device)


def _import(package, backend):
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise BackendError(f"backend {backend!r} needs the package {package!r}, which is not installed "
                           f"({error}); use backend 'simulate' or 'fp8'") from error


def _refuse_rank(spec, backend):
    if spec.rank:
        raise BackendError(f"backend {backend!r} replaces the layer with its own class and cannot add the low-rank "
                           f"branch of {spec}; use backend 'auto', 'simulate', 'fp8' or 'comfy_kitchen'")


class BitsAndBytesBackend:
    name = "bitsandbytes"
    cacheable = False

    def check(self, spec, device=None):
        _refuse_rank(spec, self.name)
        if spec.name not in ("W8A8", "W4A16"):
            raise BackendError(f"bitsandbytes does W8A8 (LLM.int8) and W4A16 (NF4) only, not {spec}; "
                               "it has no W4A8 (its 4-bit linears compute in 16 bit)")
        self.bnb = _import("bitsandbytes", self.name)

    def quantize(self, layer, spec, tensors=None, compute_device=None):
        _refuse_rank(spec, self.name)
        if not isinstance(layer, nn.Linear) or type(layer).__name__.startswith(("Linear8bitLt", "Linear4bit")):
            return _simulate(layer, spec, "simulate (conv fallback)", compute_device=compute_device)
        if spec.weight_only and spec.w_bits != 4 or not spec.weight_only and spec.w_bits != 8:
            return _simulate(layer, spec, "simulate (no bitsandbytes equivalent)", compute_device=compute_device)
        bnb_nn = self.bnb.nn
        device = layer.weight.device
        has_bias = layer.bias is not None
        if spec.w_bits == 8:
            new = bnb_nn.Linear8bitLt(layer.in_features, layer.out_features, bias=has_bias,
                                      has_fp16_weights=False, threshold=0.0)
            new.weight = bnb_nn.Int8Params(layer.weight.data.to(torch.float16).cpu(), requires_grad=False,
                                           has_fp16_weights=False)
            how = "bitsandbytes Linear8bitLt (int8 activations)"
        else:
            new = bnb_nn.Linear4bit(layer.in_features, layer.out_features, bias=has_bias,
                                    compute_dtype=layer.weight.dtype, quant_type="nf4")
            new.weight = bnb_nn.Params4bit(layer.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            how = "bitsandbytes Linear4bit NF4 (16-bit compute)"
        if has_bias:
            new.bias = nn.Parameter(layer.bias.data.clone(), requires_grad=False)
        return new.to(device), how


class TorchAOBackend:
    name = "torchao"
    cacheable = False

    def check(self, spec, device=None):
        _refuse_rank(spec, self.name)
        if spec.name not in ("W8A8", "W8A16", "W4A16-g128", "W4A16-g64", "W4A16-g32"):
            raise BackendError(f"torchao here does W8A8 (int8 dynamic), W8A16 and W4A16-g<32|64|128> only, not {spec}; "
                               "its W4A8 config is a CPU-only prototype")
        self.torchao = _import("torchao", self.name)
        self.quantization = importlib.import_module("torchao.quantization")

    def config(self, spec):
        q = self.quantization
        if spec.name == "W8A8":
            return q.Int8DynamicActivationInt8WeightConfig(), "torchao int8 dynamic-activation int8-weight"
        if spec.w_bits == 8:
            return q.Int8WeightOnlyConfig(), "torchao int8 weight-only"
        return q.Int4WeightOnlyConfig(group_size=spec.group_size), "torchao int4 weight-only"

    def quantize(self, layer, spec, tensors=None, compute_device=None):
        _refuse_rank(spec, self.name)
        if not isinstance(layer, nn.Linear):
            return _simulate(layer, spec, "simulate (conv fallback)", compute_device=compute_device)
        if spec.name not in ("W8A8", "W8A16") and not spec.name.startswith("W4A16"):
            return _simulate(layer, spec, "simulate (no torchao equivalent)", compute_device=compute_device)
        config, how = self.config(spec)
        wrapper = nn.Sequential(layer)
        self.quantization.quantize_(wrapper, config)
        return wrapper[0], how
