"""The 8-bit-compute linears' per-call work, in as few host steps as it can be: one fused activation-quantization
launch (Triton) and one GEMM (cuBLAS FP8 `_scaled_mm`, or int8 `_int_mm` plus one scaling launch), nothing else.

Each is also a `torch.library` custom op (`torch.ops.qsched.fp8_linear`, `torch.ops.qsched.int8_linear`, with
fake implementations), so a graph can hold the whole quantized matmul as one node. In eager the layers call the
functions directly (the dispatcher would add host time per call; `EAGER_THROUGH_OP` switches, for the benchmark),
and under torch.compile they trace the torch definitions, which inductor fuses into the neighbouring kernels
(`COMPILE_THROUGH_OP` switches to the opaque op). Off CUDA (or without Triton) the torch definitions run: the
CPU numerics are the GPU's (same codes, same scaling) up to the GEMM's summation order."""
import functools
from typing import Optional

import torch

from . import fp8_codes as fp8, int8_codes as int8, kernels, qgemm

EAGER_THROUGH_OP = False
COMPILE_THROUGH_OP = False
# The GEMM the per-channel 8-bit linears run on CUDA: "cublas" (torch._scaled_mm / torch._int_mm, packed int4
# unpacked by a separate kernel first) or "triton" (quant/kernels/gemm_kernels.py: int4 unpacked in registers, the
# int8 rescale in the epilogue; the same numbers, bit for bit for int8 codes). Group-wise weights always run the
# Triton GEMM (cuBLAS has no group scales). Measured on an H100 (2026-12-07, bench/gpu_gemm.py, FLUX's linears per
# step, 4352 tokens; BF16 74.9 ms): int8 W8 codes Triton 80.6 vs torch._int_mm 110.8; W4 codes unpacked in registers
# 307.8 (int8) and 357.3 (e4m3) vs unpack + cuBLAS 110.7 (int8) and 63.7 (FP8). So "auto" (the int8 backend's
# default) takes the Triton GEMM for W8 codes on Hopper and later, and cuBLAS for W4 codes and on older GPUs (on
# Turing and Ampere nothing was measured); FP8 W4 stays on cuBLAS.
GEMMS = ("auto", "cublas", "triton")
FP8_W4_GEMM = "cublas"  # W4A8 on the fp8 backend (W8A8 e4m3 stays on _scaled_mm)
INT8_GEMM = "auto"  # W8A8 and W4A8 on the int8 backend
TRITON_INT8_MIN_CAPABILITY = (9, 0)
# How the Triton GEMM does group scales on CUDA: "exact" (one dot per group, int32 partial sums for int8 codes, scaled
# in group order: qgemm.reference bit for bit) or "fp16" (the weight tile dequantized to float16 in registers, one
# float16 MMA per step: no per-group work on the CUDA cores, half the 8-bit MMA rate; weights rounded to float16,
# 2**-11 relative: qgemm.dequant_reference). The CPU runs qgemm.reference either way.
# "e4m3" (e4m3 activation codes only, the fp8 backend): each group-wise int4 weight becomes an e4m3 weight
# e4m3(code * s_g / s_c), s_c the row's largest group scale, for one cuBLAS FP8 GEMM with per-channel scales s_c: the
# speed of per-channel W4A8, at the price of one e4m3 rounding of each weight (3 mantissa bits: up to 1/16 of it;
# exact for the row's largest group). group_e4m3_reference is its definition. It is the default: on an H200
# (2026-12-07, bench/gpu_gemm.py --e4m3-form, FLUX's linears per step) W4A8-g64 took 71.9 ms in this form against
# BF16's 76.1 and per-channel W4A8's 66.3, where the exact Triton form took 7.7x BF16 on an H100; on the digits testbed
# the extra rounding moved FID by -0.02..+0.02 of FP32's, within the W4A8 target (testbed/digits/RESULTS.md).
GROUP_GEMMS = ("exact", "fp16", "e4m3")
GROUP_GEMM = "e4m3"


def _columns(rows):
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def fp8_gemm_reference(x, weight, column_scale, bias, a_tail=None, b_tail=None):
    """The torch form of the FP8 linears' cuBLAS GEMM: per-token e4m3 codes of x (rows padded to 16, as _scaled_mm
    needs) times the e4m3 weight [N, K] with float32 column scales [N(, 1)], + bias, rounded once to x's dtype.
    a_tail(rows, row scales, padded rows) -> e4m3 columns and b_tail [N, t] widen K (the low-rank branch's folds)."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    padded = -(-count // 16) * 16
    codes, scale = fp8.quantize_rows(rows, padded)
    if a_tail is not None:
        codes = torch.cat([codes, a_tail(rows, scale, padded)], dim=1)
        weight = torch.cat([weight, b_tail], dim=1)
    out = torch._scaled_mm(codes, weight.t(), scale_a=scale, scale_b=column_scale.view(1, -1), bias=bias,
                           out_dtype=x.dtype, use_fast_accum=fp8.FAST_ACCUMULATION and x.is_cuda)
    return out[:count].view(*x.shape[:-1], weight.shape[0])


def fp8_reference(x, packed, weight_scale, bias, out_features, int4):
    weight = kernels_free_int4(packed, out_features, x.shape[-1], fp8.E4M3) if int4 else packed
    return fp8_gemm_reference(x, weight, weight_scale, bias)


def int8_reference(x, packed, weight_scale, bias, out_features, int4):
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    codes, scale = int8.quantize_rows(rows, int8.padded_rows(count, rows.device.type))
    weight = kernels_free_int4(packed, out_features, x.shape[-1], torch.int8) if int4 else packed
    acc = torch._int_mm(codes, weight.t())
    return int8.scale_int32(acc, scale, weight_scale, bias, count, x.dtype).view(*x.shape[:-1], out_features)


def kernels_free_int4(packed, rows, cols, dtype):
    """Packed int4 -> codes in `dtype` (int8, or e4m3 through bf16: exact for |code| <= 8), in torch."""
    from .numerics import unpack_int4
    codes = unpack_int4(packed, cols)
    return codes if dtype == torch.int8 else codes.to(torch.bfloat16).to(dtype)


def fp8_fast(x, packed, weight_scale, bias, out_features, int4):
    if int4 and FP8_W4_GEMM == "triton" and kernels.gemm_kernels is not None:
        return qgemm_fast(x, packed, weight_scale, bias, out_features, int4, False)
    return _fp8_gemm(x, packed, weight_scale, bias, out_features, int4)


def _fp8_gemm(x, packed, column_scale, bias, out_features, int4, ratio=None):
    """One activation-quantization launch (per-token e4m3, rows padded to 16 as _scaled_mm needs), the weight in
    e4m3 (as stored; packed int4 unpacked; with `ratio`, group-wise int4 as GROUP_GEMM "e4m3" makes it), one cuBLAS
    FP8 GEMM with float32 column scales."""
    tk = kernels.triton_kernels
    rows = _columns(x.reshape(-1, x.shape[-1]))
    count, cols = rows.shape
    padded = -(-count // 16) * 16
    codes, scale = tk.quantize_rows_fp8(rows, padded)
    if ratio is not None:
        weight = tk.int4_groups_e4m3(packed, ratio, out_features, cols)
    else:
        weight = tk.int4_unpack(packed, out_features, cols, fp8.E4M3) if int4 else packed
    out = torch._scaled_mm(codes, weight.t(), scale_a=scale, scale_b=column_scale.view(1, -1), bias=bias,
                           out_dtype=x.dtype, use_fast_accum=fp8.FAST_ACCUMULATION)
    return (out if padded == count else out[:count]).view(*x.shape[:-1], out_features)


@functools.lru_cache(maxsize=None)
def _capability(device_index):
    return torch.cuda.get_device_capability(device_index)


def int8_runs_triton(device, int4):
    """Whether an int8-backend layer on CUDA `device` runs the Triton GEMM (INT8_GEMM, see above)."""
    if kernels.gemm_kernels is None:
        return False
    if INT8_GEMM == "auto":
        return not int4 and _capability(device.index if device.index is not None else torch.cuda.current_device()) \
            >= TRITON_INT8_MIN_CAPABILITY
    return INT8_GEMM == "triton"


def int8_fast(x, packed, weight_scale, bias, out_features, int4):
    if int8_runs_triton(x.device, int4):
        return qgemm_fast(x, packed, weight_scale, bias, out_features, int4, True)
    tk = kernels.triton_kernels
    rows = _columns(x.reshape(-1, x.shape[-1]))
    count, cols = rows.shape
    codes, scale, _ = tk.quantize_act(rows, int8.padded_rows(count, "cuda"), True)
    weight = tk.int4_unpack(packed, out_features, cols, torch.int8) if int4 else packed
    out = tk.int8_epilogue(torch._int_mm(codes, weight.t()), scale, weight_scale, bias, count, x.dtype)
    return out.view(*x.shape[:-1], out_features)


def group_ratios(weight_scale):
    """(float32 ratios s_g / s_c [N, G], float32 channel scales s_c [N, 1]) of group scales [N, G]; an all-zero row
    gets ratios 0 and s_c 1."""
    scale = weight_scale.float()
    channel = scale.amax(dim=1, keepdim=True)
    channel = torch.where(channel > 0, channel, torch.ones_like(channel))
    return scale / channel, channel


def group_e4m3_reference(packed, weight_scale, out_features, cols):
    """(e4m3 weight [N, K], float32 channel scales [N, 1]) of group-wise packed int4: e4m3(code * s_g / s_c), the
    float32 product rounded once (GROUP_GEMM "e4m3")."""
    ratio, channel = group_ratios(weight_scale)
    codes = kernels_free_int4(packed, out_features, cols, torch.int8).float()
    groups = ratio.shape[1]
    weight = (codes.view(out_features, groups, cols // groups) * ratio.unsqueeze(-1)).view(out_features, cols)
    return weight.to(fp8.E4M3), channel


def fp8_group_reference(x, packed, weight_scale, bias, out_features, int4=True):
    """Torch definition of fp8_group_fast: per-token e4m3 codes of x times the e4m3 weight of group_e4m3_reference
    (exact float64 sums), scaled by the row and channel scales, + bias, rounded once."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    codes, scale = fp8.quantize_rows(rows, count)
    weight, channel = group_e4m3_reference(packed, weight_scale, out_features, x.shape[-1])
    out = qgemm.reference(codes, scale, weight, channel, bias, count, x.dtype)
    return out.view(*x.shape[:-1], out_features)


def fp8_group_traced(x, packed, weight_scale, bias, out_features, int4=True):
    """What torch.compile traces for GROUP_GEMM "e4m3": fp8_group_reference's codes and e4m3 weight, multiplied by
    one torch._scaled_mm (rows padded to 16, as fp8_reference), which inductor keeps as the cuBLAS FP8 GEMM. The
    reference's exact sums would trace into a float64 GEMM, tens of times slower on a GPU."""
    return fp8_gemm_reference(x, *group_e4m3_reference(packed, weight_scale, out_features, x.shape[-1]), bias)


def fp8_group_fast(x, packed, weight_scale, bias, out_features, int4=True):
    """GROUP_GEMM "e4m3" on CUDA: one activation-quantization launch, one unpacking launch, one cuBLAS FP8 GEMM."""
    ratio, channel = _memoized_group_ratios(weight_scale)
    return _fp8_gemm(x, packed, channel, bias, out_features, True, ratio)


def _memoized_group_ratios(weight_scale):
    """group_ratios, kept on the scale tensor itself: the scales of a resident layer do not change between calls
    (LoRA requantizes on fixed scales), and computing the ratios takes three more launches per layer call. A tensor
    moved or cast per call (offload) is a new tensor and gets its ratios afresh; an in-place change bumps _version,
    and new storage under the same tensor (`.data =`, as Module.to does to parameters) changes data_ptr."""
    key = (weight_scale._version, weight_scale.data_ptr(), weight_scale.device)
    memo = getattr(weight_scale, "_qsched_group_ratios", None)
    if memo is None or memo[0] != key:
        memo = (key, *group_ratios(weight_scale))
        weight_scale._qsched_group_ratios = memo
    return memo[1], memo[2]


def _grouped(weight_scale):
    """Whether weight scales [N, G] hold more than one group per row."""
    return weight_scale.dim() == 2 and weight_scale.shape[1] > 1


def qgemm_reference(x, packed, weight_scale, bias, out_features, int4, int8_codes, xd=None, up=None,
                    group_gemm="exact"):
    """Torch definition of `qgemm_fast`: per-token int8 (or e4m3) codes of x, then quant/qgemm.py's product with
    the weight codes and their per-channel or group scales, bias and the low-rank term xd @ up^T, rounded once
    (group_gemm "fp16": the float16-dequantizing form's definition, for the GPU checks; the CPU layers run "exact")."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    codes, scale = (int8 if int8_codes else fp8).quantize_rows(rows, count)
    weight = kernels_free_int4(packed, out_features, x.shape[-1], torch.int8) if int4 else packed
    lr = None if xd is None else xd.reshape(count, -1)
    define = qgemm.dequant_reference if group_gemm == "fp16" and _grouped(weight_scale) else qgemm.reference
    out = define(codes, scale, weight, weight_scale, bias, count, x.dtype, lr, up)
    return out.view(*x.shape[:-1], out_features)


def qgemm_fast(x, packed, weight_scale, bias, out_features, int4, int8_codes, xd=None, up=None, group_gemm=None):
    """One activation-quantization launch and one Triton GEMM (quant/kernels/gemm_kernels.py) on CUDA; group_gemm:
    one of GROUP_GEMMS, None for GROUP_GEMM."""
    rows = _columns(x.reshape(-1, x.shape[-1]))
    count = rows.shape[0]
    if int8_codes:
        codes, scale, _ = kernels.triton_kernels.quantize_act(rows, count, True)
    else:
        codes, scale = kernels.triton_kernels.quantize_rows_fp8(rows, count)
    lr = None if xd is None else _columns(xd.reshape(count, -1))
    out = kernels.gemm_kernels.qgemm(codes, scale, packed, weight_scale, bias, count, out_features, int8_codes, int4,
                                     x.dtype, lr, up, dequant=(group_gemm or GROUP_GEMM) == "fp16")
    return out.view(*x.shape[:-1], out_features)


def _pick(fast, reference, x):
    return fast if kernels.triton_kernels is not None and x.is_cuda else reference


def _register(name, fast, reference):
    """torch.ops.qsched.<name>: the fast path on CUDA, the torch definition elsewhere; registered once per process
    (the pack may be imported under two package names)."""
    qualified = f"qsched::{name}"
    if hasattr(torch.ops.qsched, name):
        return getattr(torch.ops.qsched, name).default

    @torch.library.custom_op(qualified, mutates_args=())
    def op(x: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
           out_features: int, int4: bool) -> torch.Tensor:
        return _pick(fast, reference, x)(x, packed, weight_scale, bias, out_features, int4)

    @op.register_fake
    def _(x, packed, weight_scale, bias, out_features, int4):
        return x.new_empty((*x.shape[:-1], out_features))

    return getattr(torch.ops.qsched, name).default


FP8_OP = _register("fp8_linear", fp8_fast, fp8_reference)
FP8_GROUP_OP = _register("fp8_group_linear", fp8_group_fast, fp8_group_reference)
INT8_OP = _register("int8_linear", int8_fast, int8_reference)


def _qgemm_path(x):
    """The Triton GEMM on CUDA, its torch definition elsewhere."""
    return qgemm_fast if kernels.gemm_kernels is not None and x.is_cuda else qgemm_reference


def _register_qgemm():
    if hasattr(torch.ops.qsched, "qgemm_linear"):
        return torch.ops.qsched.qgemm_linear.default

    @torch.library.custom_op("qsched::qgemm_linear", mutates_args=())
    def op(x: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
           out_features: int, int4: bool, int8_codes: bool, xd: Optional[torch.Tensor],
           up: Optional[torch.Tensor]) -> torch.Tensor:
        return _qgemm_path(x)(x, packed, weight_scale, bias, out_features, int4, int8_codes, xd, up)

    @op.register_fake
    def _(x, packed, weight_scale, bias, out_features, int4, int8_codes, xd, up):
        return x.new_empty((*x.shape[:-1], out_features))

    return torch.ops.qsched.qgemm_linear.default


QGEMM_OP = _register_qgemm()


def _call(op, fast, reference, x, *args, traced=None):
    """traced: what torch.compile traces when it is not `reference` itself."""
    if torch.compiler.is_compiling():
        return op(x, *args) if COMPILE_THROUGH_OP else (traced or reference)(x, *args)
    if EAGER_THROUGH_OP:
        return op(x, *args)
    return _pick(fast, reference, x)(x, *args)


def fp8_linear(x, packed, weight_scale, bias, out_features, int4):
    """x [..., K] @ dequantized weight^T + bias through FP8 GEMMs; weight e4m3 [N, K] or packed int4 [N, K / 2]."""
    return _call(FP8_OP, fp8_fast, fp8_reference, x, packed, weight_scale, bias, out_features, int4)


def int8_linear(x, packed, weight_scale, bias, out_features, int4):
    """x [..., K] @ dequantized weight^T + bias through int8 GEMMs; weight int8 [N, K] or packed int4 [N, K / 2]."""
    return _call(INT8_OP, int8_fast, int8_reference, x, packed, weight_scale, bias, out_features, int4)


def qgemm_linear(x, packed, weight_scale, bias, out_features, int4, int8_codes, xd=None, up=None):
    """x [..., K] @ dequantized weight^T + bias (+ xd @ up^T) through the Triton GEMM: int8 or e4m3 activation codes,
    weight int8 / e4m3 [N, K] or packed int4 [N, K / 2], scales [N, 1] or per group [N, K / G]. Under torch.compile
    always the opaque op: the per-group torch definition would trace into a few ops per group."""
    if GROUP_GEMM == "e4m3" and int4 and not int8_codes and xd is None and _grouped(weight_scale):
        return _call(FP8_GROUP_OP, fp8_group_fast, fp8_group_reference, x, packed, weight_scale, bias, out_features,
                     True, traced=fp8_group_traced)
    args = (x, packed, weight_scale, bias, out_features, int4, int8_codes, xd, up)
    if torch.compiler.is_compiling() or EAGER_THROUGH_OP:
        return QGEMM_OP(*args)
    return _qgemm_path(x)(*args)
