"""fp8 backend: W8A8 / W4A8 linears through torch._scaled_mm with row-wise scales (Hopper/Ada fast path).

Activations are quantized dynamically per token to float8 e4m3 (one scale per row): "A8" here means FP8,
not INT8. W8 weights are stored as e4m3 with one scale per output channel; W4 weights as packed int4 codes
(two per byte) that are exact in e4m3 (|code| <= 7), so the GEMM is the same FP8 GEMM with half the weight
memory. W4A8 with weight groups (W4A8-g<G>, G in qgemm.GROUP_SIZES) keeps the packed int4 codes and group scales
and runs the Triton GEMM (quant/kernels/gemm_kernels.py). Other bit widths, and W8 with groups, are refused."""
import torch

from . import branch_ops, linear_ops, qgemm
from .layers import PackedWeightMixin, integer_layout

from .fp8_codes import E4M3, E4M3_MAX, FAST_ACCUMULATION, INV_E4M3_MAX, quantize_rows  # noqa: F401 (the fp8 API)


def fp8_supported(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu"


def check_spec(spec):
    if spec.a_bits != 8 or spec.w_bits not in (4, 8) or spec.act_granularity != "token" \
            or spec.group_size and (spec.w_bits != 4 or spec.group_size not in qgemm.GROUP_SIZES):
        raise ValueError(f"the fp8 backend does W8A8 and W4A8 with per-channel weights, W4A8 with weight groups of "
                         f"{', '.join(map(str, qgemm.GROUP_SIZES))}, and per-token activations only, not {spec}; "
                         f"use backend 'simulate' for it")


def fp8_layout(layer, spec):
    if spec.packed_int4:
        return integer_layout(layer, spec)
    return E4M3, (layer.out_features, layer.in_features), (layer.out_features, 1)


class Fp8Linear(PackedWeightMixin):
    def packed_layout(self, spec):
        return fp8_layout(self, spec)

    def quantize_(self, spec, compute_device=None):
        check_spec(spec)
        return super().quantize_(spec, compute_device)

    def quantize_matrix(self, matrix, spec):
        if spec.packed_int4:
            return super().quantize_matrix(matrix, spec)
        w = matrix.float()
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        return (w / scale).to(E4M3), scale

    def codes(self, packed=None):
        packed = self.weight if packed is None else packed
        if self.quant_spec.packed_int4:
            return super().codes(packed)
        return packed.to(E4M3)

    def requantize(self, weight):
        if self.quant_spec.packed_int4:
            return super().requantize(weight)
        scale = self.weight_scale.to(weight.device)
        return (weight.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)

    def fp8_weight(self, packed):
        codes = self.codes(packed)
        return codes.to(torch.bfloat16).to(E4M3) if self.quant_spec.packed_int4 else codes

    def packed_forward(self, x, packed, bias):
        if self.quant_spec.rank and self.in_features % 16 == 0 and self.out_features % 16 == 0:
            out = branch_ops.fast_branch_forward(self, x, packed, bias, int8_codes=False)
            if out is not None:
                return out
        return super().packed_forward(x, packed, bias)

    def quantized_forward(self, x, packed, bias):
        if self.in_features % 16 or self.out_features % 16:
            weight = self.dequantize(packed, dtype=x.dtype, device=x.device)  # _scaled_mm needs multiples of 16
            return torch.nn.functional.linear(self.quantize_input(x, -1), weight, bias)
        scale = self.weight_scale
        if scale.device != x.device:  # low-VRAM: buffers stay on the CPU, the weight comes per call
            scale = scale.to(x.device)
        if self.quant_spec.group_size:
            return linear_ops.qgemm_linear(x, packed, scale, bias, self.out_features, True, False)
        return linear_ops.fp8_linear(x, packed, scale, bias, self.out_features, self.quant_spec.packed_int4)

    def quantize_input(self, x, channel_dim):
        xf = x.float()
        scale = (xf.abs().amax(dim=channel_dim, keepdim=True) / E4M3_MAX).clamp(min=1e-12)
        return ((xf / scale).to(E4M3).float() * scale).to(x.dtype)
