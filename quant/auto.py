"""auto backend: per device and per layer, the fastest path that keeps what the spec asks for.

- CPU and other non-CUDA devices: simulate everywhere (exact quantize-dequantize numerics; works anywhere).
- CUDA, FP8 tensor cores (compute capability 8.9+): W8A8 / W4A8 linears whose GEMM is big enough for 8-bit compute
  to pay (`a8_pays`) run the fp8 backend (Triton activation quantization + cuBLAS FP8 GEMM in eager); the others
  keep their 8/4-bit storage and compute in 16 bit (quant/fast.py): the shape-aware policy.
- CUDA without FP8 but with int8 tensor cores (compute capability 7.5-8.8: Turing, Ampere): W8A8 / W4A8 linears
  that pay run the int8 backend (torch._int_mm, int8 activations per token); older GPUs keep them weight-only.
- Group-wise W4A8 (groups of 16-128) on FP8 GPUs: the fp8 backend's e4m3 form (linear_ops.GROUP_GEMM: one cuBLAS
  FP8 GEMM, each weight rounded once more to e4m3), on the linears where 8-bit compute pays; on an H200 its FLUX
  linears took 0.94 of BF16's (2026-12-07). Other group-wise weights (W8A8-g, and every one on GPUs without FP8):
  simulate. The int8 backend takes them through the Triton GEMM (quant/kernels/gemm_kernels.py), but on an H100 it
  measured slower than simulate (2026-12-07, FLUX 8 + 16 blocks, eager: W4A8-g64 3.78x BF16 through it, 2.22x
  simulate; its linears alone 7.7x BF16's).
- Specs no fast kernel implements (W6A8, W4A6, W4A4, other group sizes, ...): simulate, so their numerics stay exact.
- Weight-only specs (A16) and convolutions: weight-only layers (Triton dequantization on CUDA).
A low-rank branch (-r<N>) never changes the choice: every path adds it beside its own output (fp8 / int8 layers in
quant/branch_ops.py's EAGER_FORM).
Every layer's report line says which path it got and why."""
import torch
from torch import nn

from . import fp8, int8, linear_ops
from .backends import Fp8Backend, Int8Backend, SimulateBackend, weight_only

FAST_A8_SPECS = ("W8A8", "W4A8")
# 8-bit compute pays only on GEMMs wide in both directions: on an H200 at batch 1 every SDXL linear (at most 1280
# wide on one side) runs faster with 16-bit compute, because the activation quantization's extra launch and pass
# cost more than the FP8 GEMM saves, while FLUX's 3072-wide GEMMs gain (kernel table, bench/results/peers_h200.md).
A8_MIN_FEATURES = 2048
# Narrower linears where 8-bit compute measured faster than the same spec's weight-only path at every token count
# timed (SDXL at 512^2 and 1024^2), per spec, as (in_features, out_features): derived from the per-shape table
# bench/results/sdxl_linears_h100.jsonl by bench/sdxl_a8_rule.py (tests/test_quant_auto_rule.py keeps them equal).
A8_MEASURED_SHAPES = {"W8A8": frozenset(), "W4A8": frozenset()}


def a8_pays(layer, spec_name="W8A8"):
    if not (isinstance(layer, nn.Linear) and layer.in_features % 16 == 0 and layer.out_features % 16 == 0):
        return False
    shape = (layer.in_features, layer.out_features)
    return min(shape) >= A8_MIN_FEATURES or shape in A8_MEASURED_SHAPES.get(spec_name, ())


def int8_supported(device):
    """int8 tensor cores through torch._int_mm: compute capability 7.5 (Turing) and later."""
    return torch.cuda.get_device_capability(device) >= (7, 5)


class AutoBackend:
    name = "auto"
    cacheable = True

    def __init__(self):
        self.device = None

    def check(self, spec, device=None):
        if device is not None:
            self.device = torch.device(device)

    def _device(self, layer):
        return self.device if self.device is not None else layer.weight.device

    def choose(self, layer, spec):
        """(path, spec it runs, why): path is 'fp8', 'int8', 'weight-only' or 'simulate'."""
        device = self._device(layer)
        if device.type != "cuda":
            return "simulate", spec, f"{device.type}: exact numerics"
        if spec.weight_only:
            return "weight-only", spec, "16-bit activations by the spec or the layer policy"
        group_form = self._fp8_group_form(spec, device)
        if spec.group_size and int8.spec_problem(spec.base) is None and not group_form:
            return "simulate", spec, "group-wise weights: the Triton group GEMM measured slower"
        if spec.base.name not in FAST_A8_SPECS and not group_form:
            return "simulate", spec, f"no fast kernel for {spec}"
        if not isinstance(layer, nn.Linear):
            return "weight-only", spec.with_activations(16), "convolution"
        if not a8_pays(layer, spec.base.name):
            return "weight-only", spec.with_activations(16), "GEMM too small for 8-bit compute to pay"
        if fp8.fp8_supported(device):
            return "fp8", spec, "FP8 tensor cores" + (", group-wise as the e4m3 form" if spec.group_size else "")
        if int8_supported(device) and int8.supports(layer, spec):
            return "int8", spec, "int8 tensor cores (no FP8 on this GPU)"
        return "weight-only", spec.with_activations(16), "no 8-bit GEMM for it on this GPU"

    @staticmethod
    def _fp8_group_form(spec, device):
        """Whether `spec` is group-wise W4A8 that the fp8 backend runs as its e4m3 form (linear_ops.GROUP_GEMM) here."""
        if not (spec.group_size and spec.w_bits == 4 and linear_ops.GROUP_GEMM == "e4m3"
                and fp8.fp8_supported(device)):
            return False
        try:
            fp8.check_spec(spec.base)
        except ValueError:
            return False
        return True

    def _backend(self, path):
        return {"fp8": Fp8Backend, "int8": Int8Backend}.get(path, SimulateBackend)()

    def effective_spec(self, layer, spec):
        return self.choose(layer, spec)[1]

    def layout(self, layer, spec):
        path, spec, _ = self.choose(layer, spec)
        return self._backend(path).layout(layer, spec)

    def quantize(self, layer, spec, tensors=None, compute_device=None):
        path, effective, why = self.choose(layer, spec)
        if path == "weight-only":
            return weight_only(layer, effective, f"auto: weight-only ({why})", tensors, compute_device)
        new_layer, how = self._backend(path).quantize(layer, effective, tensors, compute_device)
        return new_layer, f"auto: {how}" if path != "simulate" else f"auto: simulate ({why})"

