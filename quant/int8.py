"""int8 backend: W8A8 / W4A8 linears through int8 tensor cores (torch._int_mm), for GPUs without FP8 (Turing,
Ampere: compute capability 7.5-8.8) and on the CPU.

Activations are quantized dynamically per token to int8 (scale = amax / 127, one per row); weights are the simulate
backend's int8 codes (W8) or packed int4 codes (W4, exact in int8) with one scale per output channel, so caches,
LoRA and the ComfyUI int8 export treat them like any packed layer. The GEMM accumulates exactly in int32; the result
is scaled back per row and column in float32 and rounded once. torch._int_mm on CUDA needs more than 16 rows and
K, N multiples of 8: rows are padded with zero rows (one launch, in the quantization kernel), layers of other
shapes get 16-bit compute (`supports`). The eager path is quant/linear_ops.py. Weights with groups (W8A8-g<G>,
W4A8-g<G>, G in qgemm.GROUP_SIZES) keep the simulate layout (codes + [out, in / G] scales) and run the Triton GEMM
(quant/kernels/gemm_kernels.py: exact int32 partial sums per group, scaled in group order)."""
import torch

from . import branch_ops, linear_ops, qgemm
from .layers import PackedWeightMixin

from .int8_codes import INT8_MAX, INV_INT8_MAX, padded_rows, quantize_rows, scale_int32  # noqa: F401 (the int8 API)


def spec_problem(spec):
    """Why the int8 backend cannot run `spec` (None if it can)."""
    if spec.a_bits != 8 or spec.w_bits not in (4, 8) or spec.act_granularity != "token" \
            or spec.group_size and spec.group_size not in qgemm.GROUP_SIZES:
        return (f"the int8 backend does W8A8 and W4A8 with per-channel weights or weight groups of "
                f"{', '.join(map(str, qgemm.GROUP_SIZES))} and per-token activations only, not {spec}")
    return None


def supports(layer, spec):
    return (isinstance(layer, torch.nn.Linear) and spec_problem(spec) is None and layer.in_features % 8 == 0
            and layer.out_features % 8 == 0)


class Int8Linear(PackedWeightMixin):
    """Stored as the simulate backend stores W8 / W4 (int8 codes or packed int4, float32 scales [out, 1])."""

    def packed_forward(self, x, packed, bias):
        if self.quant_spec.rank:
            out = branch_ops.fast_branch_forward(self, x, packed, bias, int8_codes=True)
            if out is not None:
                return out
        return super().packed_forward(x, packed, bias)

    def quantized_forward(self, x, packed, bias):
        scale = self.weight_scale
        if scale.device != x.device:  # low-VRAM: buffers stay on the CPU, the weight comes per call
            scale = scale.to(x.device)
        if self.quant_spec.group_size:
            return linear_ops.qgemm_linear(x, packed, scale, bias, self.out_features, self.quant_spec.packed_int4,
                                           True)
        return linear_ops.int8_linear(x, packed, scale, bias, self.out_features, self.quant_spec.packed_int4)
