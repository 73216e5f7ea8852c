"""Weight-only quantized layers with a fast eager path: 8/4-bit storage, 16-bit compute.

Same storage, scales, LoRA protocol and CPU numerics as the simulate backend's weight-only layers; on a CUDA
input the weight is widened inside one Triton kernel instead of being dequantized in several torch ops:
linears run a GEMM that reads the int8 / packed int4 codes directly (1 or 0.5 bytes per weight, scales in the
epilogue), convolutions dequantize their weight in one kernel and call the usual conv."""
import torch

from . import kernels
from .layers import SimulatedConv, SimulatedLinear

# Row counts above which a weight-only linear dequantizes its weight in one kernel and lets cuBLAS run the GEMM
# (the Triton GEMM wins on small row counts, where reading 1-byte weights is what costs); bench/peers.py --kernels.
DEQUANTIZE_ABOVE_ROWS = 256


def _fast(layer, x):
    spec = layer.quant_spec
    return spec.weight_only and kernels.runs_triton(x) and x.dtype in (torch.bfloat16, torch.float16)


class FastWeightOnlyLinear(SimulatedLinear):
    def quantized_forward(self, x, packed, bias):
        if not _fast(self, x):
            return super().quantized_forward(x, packed, bias)
        rows = x.reshape(-1, self.in_features)
        scale = self.weight_scale.to(x.device)
        if rows.shape[0] > DEQUANTIZE_ABOVE_ROWS or self.quant_spec.group_size:  # the GEMM takes channel scales
            weight = kernels.triton_kernels.dequantize(packed, scale, self.out_features, self.in_features, x.dtype,
                                                       self.quant_spec.packed_int4)
            return torch.nn.functional.linear(x, weight, bias)
        rows = rows if rows.stride(-1) == 1 else rows.contiguous()
        out = kernels.triton_kernels.weight_only_linear(rows, packed, scale, bias,
                                                        self.quant_spec.packed_int4, self.out_features)
        return out.reshape(*x.shape[:-1], self.out_features)


class FastWeightOnlyConv(SimulatedConv):
    def quantized_forward(self, x, packed, bias):
        if not _fast(self, x):
            return super().quantized_forward(x, packed, bias)
        shape = self.float_weight_shape()
        weight = kernels.triton_kernels.dequantize(packed, self.weight_scale.to(x.device), shape[0],
                                                   self._matrix_columns(), x.dtype, self.quant_spec.packed_int4)
        return self._conv_forward(x, weight.reshape(shape), bias)
