"""Weight-only quantized layers with a fast eager path: 8/4-bit storage, 16-bit compute.

Same storage, scales, LoRA protocol and CPU numerics as the simulate backend's weight-only layers. On a CUDA input
the weight is widened in as few launches as the host can afford (at batch 1 an eager step is bound by the host's
launch cost, not by the GPU): int8 per-channel weights in one torch multiply (int8 x 16-bit scale, the simulate
rounding bit for bit), int4 or grouped weights in one Triton kernel, then the usual cuBLAS GEMM or convolution.
The simulate backend's linears widen their weight the same way (FastSimulatedLinear).
Linears that see at most `STREAMING_MAX_ROWS` rows (adaLN modulation, batch-sized inputs) skip the widened copy:
a Triton GEMM reads the int8 codes directly."""
import torch

from . import branch_ops, kernels
from .layers import SimulatedConv, SimulatedLinear, input_channels

# Up to this many rows a weight-only int8 linear streams its codes through one Triton GEMM (1 byte per weight read
# instead of 1 + 2 written + 2 read); above, cuBLAS on the widened weight wins (H200 kernel table, peers_h200.md).
STREAMING_MAX_ROWS = 16
# Whether per-channel int4 weights stream too (the same kernel unpacks them in registers; checked bit for bit under the
# interpreter). Off until timed on a GPU: FLUX's W4A8 modulation linears (1 x 3072 -> 18432) now widen a 113 MB
# weight per call (Triton dequantization + cuBLAS: 87-96 us on the H200 against the int8 stream's 49-59 us).
STREAMING_INT4 = False


def _widens(x):
    """The weight is widened by FastWeight for this input: CUDA with Triton, eager, 16-bit."""
    return kernels.runs_triton(x) and x.dtype in (torch.bfloat16, torch.float16)


def _fast(layer, x):
    return layer.quant_spec.weight_only and _widens(x)


def fold_pays(rows, out_features, columns):
    """Whether folding the branch into the widened weight moves fewer bytes than running it beside: the fold reads
    and writes the 16-bit weight once more (4 N K bytes); beside, the branch reads x again and writes, reads and adds
    its output (about 2 T K + 8 T N bytes) in three more launches. So SDXL's layers fold (thousands of rows) and
    FLUX's modulation linears (one row against a 113 MB weight) do not."""
    return rows * (columns + 4 * out_features) >= 2 * out_features * columns


class FastWeight:
    """The 16-bit weight of a weight-only layer, widened on the input's device in one launch."""

    def scale_as(self, x):
        """weight_scale in x's dtype and device, converted once (a new buffer, e.g. after .to(), converts again)."""
        cached = self.__dict__.get("_scale_as")
        if cached is None or cached[0] is not self.weight_scale or cached[1].dtype != x.dtype \
                or cached[1].device != x.device:
            cached = (self.weight_scale, self.weight_scale.to(x.device, x.dtype))
            self.__dict__["_scale_as"] = cached
        return cached[1]

    def folded_forward(self, x, packed, bias, run):
        """A weight-only layer with a low-rank branch, on the fast path: the branch goes into the widened 16-bit
        weight (one in-place addmm of up down per call, r columns) before `run(x, weight, bias)`, instead of two
        more GEMMs over x and an add over y: on SDXL's many small layers (host-bound) those tripled the launches.
        The sum is rounded once to 16 bits, as a 16-bit model's own weight is. None where it does not apply or does
        not pay (fold_pays)."""
        if not (self.quant_spec.rank and _fast(self, x) and self.lowrank_down.device == x.device):
            return None
        columns = self._matrix_columns()
        if not fold_pays(x.numel() // input_channels(self), self.float_weight_shape()[0], columns):
            return None
        down, up = branch_ops._prepared(self, x, False)
        weight = self.fast_weight(packed, x)  # a fresh tensor: added to in place
        weight.view(up.shape[0], -1).addmm_(up, down)
        return run(x, weight, bias)

    def fast_weight(self, packed, x):
        """[out, columns] weight in x's dtype: exactly numerics.dequantize_weight's values."""
        spec = self.quant_spec
        if not spec.packed_int4 and not spec.group_size:
            return torch.mul(packed, self.scale_as(x))  # int8 * 16-bit -> 16-bit in one kernel
        return kernels.triton_kernels.dequantize(packed, self.weight_scale.to(x.device), self.float_weight_shape()[0],
                                                 self._matrix_columns(), x.dtype, spec.packed_int4)


class FastWeightOnlyLinear(FastWeight, SimulatedLinear):
    def streams(self, x):
        """Whether this input's rows stream the codes through the Triton GEMM (no widened weight)."""
        spec = self.quant_spec
        rows = x.numel() // self.in_features
        return rows <= STREAMING_MAX_ROWS and not spec.group_size \
            and (not spec.packed_int4 or STREAMING_INT4 and self.in_features % 2 == 0)

    def packed_forward(self, x, packed, bias):
        out = None if self.streams(x) else self.folded_forward(x, packed, bias, torch.nn.functional.linear)
        return super().packed_forward(x, packed, bias) if out is None else out

    def quantized_forward(self, x, packed, bias):
        if not _fast(self, x):
            return super().quantized_forward(x, packed, bias)
        spec = self.quant_spec
        rows = x.reshape(-1, self.in_features)
        if self.streams(x):
            out = kernels.triton_kernels.weight_only_linear(rows if rows.stride(-1) == 1 else rows.contiguous(), packed,
                                                            self.weight_scale.to(x.device), bias, spec.packed_int4,
                                                            self.out_features)
            return out.view(*x.shape[:-1], self.out_features)
        return torch.nn.functional.linear(x, self.fast_weight(packed, x), bias)


class FastSimulatedLinear(FastWeight, SimulatedLinear):
    """The simulate backend's linears (8/4-bit activations fake-quantized per token, any spec): on a CUDA input the
    weight is widened in one launch (FastWeight: the same values as numerics.dequantize_weight, bit for bit; checked
    on an H100 by bench/gpu_scales16.py) instead of simulate's torch unpacking, then the same fake quantization of
    the input and the same GEMM: simulate's numbers with fewer passes over the weight."""

    def quantized_forward(self, x, packed, bias):
        if not _widens(x):
            return super().quantized_forward(x, packed, bias)
        return torch.nn.functional.linear(self.quantize_input(x, -1), self.fast_weight(packed, x), bias)


class FastWeightOnlyConv(FastWeight, SimulatedConv):
    def packed_forward(self, x, packed, bias):
        out = self.folded_forward(x, packed, bias, lambda rows, weight, bias: self._conv_forward(
            rows, weight.view(self.float_weight_shape()), bias))
        return super().packed_forward(x, packed, bias) if out is None else out

    def quantized_forward(self, x, packed, bias):
        if not _fast(self, x):
            return super().quantized_forward(x, packed, bias)
        return self._conv_forward(x, self.fast_weight(packed, x).view(self.float_weight_shape()), bias)
