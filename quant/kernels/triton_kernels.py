"""Triton kernels of the fast eager path (Triton ships with CUDA builds of torch).

Self-contained (torch + triton only) so that tests can load this file under TRITON_INTERPRET=1 on a CPU.
Every kernel computes what quant/numerics.py and quant/fp8.py compute in torch, to the bit where the torch
code defines the rounding (activation codes, dequantized weights); GEMM outputs differ only by summation order.

The Triton interpreter converts fp32 -> bf16 / fp8 by truncation and cannot dot bf16 tiles, so roundings are
written out in integer arithmetic (exact on the GPU too: the final cast then sees a representable value) and
the GEMM kernels take `EXACT_DOT` (fp32 operands, set under the interpreter only)."""
import torch
import triton
import triton.language as tl

E4M3_MAX = 448.0
MAX_ROW = 16384  # the row quantizer holds one row in registers


@triton.jit
def _round_e4m3(q):
    """Round fp32 (|q| <= 448) to the nearest float8 e4m3fn value, ties to even, as torch's cast does."""
    bits = q.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
    subnormal = (q + 24576.0) - 24576.0  # multiples of 2**-9 below 2**-6
    return tl.where(tl.abs(q) < 0.015625, subnormal, normal)


@triton.jit
def _round_bf16(x):
    """fp32 -> the nearest bf16 value (still fp32), ties to even."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _to_output(x, out_ptr):
    if out_ptr.dtype.element_ty == tl.bfloat16:
        x = _round_bf16(x)
    return x.to(out_ptr.dtype.element_ty)


@triton.jit
def _quantize_rows_fp8_kernel(x_ptr, q_ptr, s_ptr, rows, cols, x_stride, BLOCK: tl.constexpr):
    """One row per program: amax, scale = max(amax / 448, 1e-12), codes = e4m3(x / scale). Rows >= `rows`
    (padding up to the GEMM's multiple of 16) get zero codes, as zero rows would."""
    row = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < cols
    x = tl.load(x_ptr + row.to(tl.int64) * x_stride + offsets, mask=inside & (row < rows), other=0.0)
    x = x.to(tl.float32)
    scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=0), E4M3_MAX), 1e-12)
    codes = _round_e4m3(tl.math.div_rn(x, scale))
    tl.store(q_ptr + row.to(tl.int64) * cols + offsets, codes.to(tl.float8e4nv), mask=inside)
    tl.store(s_ptr + row, scale)


@triton.jit
def _int4_to_fp8_kernel(packed_ptr, out_ptr, count, BLOCK: tl.constexpr):
    """Packed signed int4 pairs (low nibble first, stored + 8) -> e4m3 codes, exact (|code| <= 8)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    byte = tl.load(packed_ptr + start + tl.arange(0, BLOCK), mask=start + tl.arange(0, BLOCK) < count, other=0)
    byte = byte.to(tl.int32)
    pair = tl.join(((byte & 15) - 8).to(tl.float32), ((byte >> 4) - 8).to(tl.float32))
    values = tl.reshape(pair, [2 * BLOCK]).to(tl.float8e4nv)
    offsets = 2 * start + tl.arange(0, 2 * BLOCK)
    tl.store(out_ptr + offsets, values, mask=offsets < 2 * count)


@triton.jit
def _dequantize_kernel(packed_ptr, scale_ptr, out_ptr, cols, packed_cols, groups, group_size,
                       PACKED: tl.constexpr, BLOCK: tl.constexpr):
    """out[r, c] = dtype(code[r, c] * dtype(scale[r, c // group_size])), the rounding of
    numerics.dequantize_weight in that dtype (exact products in fp32, one rounding)."""
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = columns < cols
    if PACKED:
        byte = tl.load(packed_ptr + row * packed_cols + columns // 2, mask=inside, other=0).to(tl.int32)
        code = tl.where(columns % 2 == 0, byte & 15, byte >> 4) - 8
    else:
        code = tl.load(packed_ptr + row * cols + columns, mask=inside, other=0).to(tl.int32)
    scale = tl.load(scale_ptr + row * groups + columns // group_size, mask=inside, other=0.0)
    if out_ptr.dtype.element_ty == tl.bfloat16:
        scale = _round_bf16(scale)
    else:
        scale = scale.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * cols + columns, _to_output(code.to(tl.float32) * scale, out_ptr), mask=inside)


@triton.jit
def _load_weight_codes(w_ptr, n_offsets, k0, cols, N, PACKED: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K] int32 weight codes from int8 storage or packed int4 pairs (zero past the edges)."""
    if PACKED:
        half = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        mask = (n_offsets[:, None] < N) & (2 * half[None, :] < cols)
        byte = tl.load(w_ptr + n_offsets[:, None].to(tl.int64) * ((cols + 1) // 2) + half[None, :], mask=mask,
                       other=0x88).to(tl.int32)
        codes = tl.reshape(tl.join((byte & 15) - 8, (byte >> 4) - 8), [BLOCK_N, BLOCK_K])
    else:
        k_offsets = k0 + tl.arange(0, BLOCK_K)
        mask = (n_offsets[:, None] < N) & (k_offsets[None, :] < cols)
        codes = tl.load(w_ptr + n_offsets[:, None].to(tl.int64) * cols + k_offsets[None, :], mask=mask,
                        other=0).to(tl.int32)
    return codes


@triton.jit
def _weight_only_matmul_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, x_stride, out_stride,
                               HAS_BIAS: tl.constexpr, PACKED: tl.constexpr, EXACT_DOT: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out = (x @ codes^T) * scale[n] + bias: W8A16 / W4A16 with per-output-channel scales, the codes widened to
    the activation dtype (exact) inside the loop, so the weight is read once at 1 or 0.5 bytes per value."""
    m_offsets = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n_offsets = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_offsets = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + m_offsets[:, None].to(tl.int64) * x_stride + k_offsets[None, :],
                    mask=(m_offsets[:, None] < M) & (k_offsets[None, :] < K), other=0.0)
        codes = _load_weight_codes(w_ptr, n_offsets, k0, K, N, PACKED, BLOCK_N, BLOCK_K).to(tl.float32)
        if EXACT_DOT:
            acc += tl.dot(a.to(tl.float32), tl.trans(codes), input_precision="ieee")
        else:
            acc += tl.dot(a, tl.trans(codes.to(a.dtype)))
    acc = acc * tl.load(scale_ptr + n_offsets, mask=n_offsets < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n_offsets, mask=n_offsets < N, other=0.0).to(tl.float32)[None, :]
    mask = (m_offsets[:, None] < M) & (n_offsets[None, :] < N)
    tl.store(out_ptr + m_offsets[:, None].to(tl.int64) * out_stride + n_offsets[None, :], _to_output(acc, out_ptr),
             mask=mask)


@triton.jit
def _w4a8_matmul_kernel(x8_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, out_stride,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """W4A8 in one kernel: FP8 activation codes x packed int4 weights widened to e4m3 in registers (exact),
    FP8 tensor-core dot, row and column scales and bias in the epilogue."""
    pid = tl.program_id(0)
    blocks_m, blocks_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * blocks_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * blocks_n)) % size_m
    pid_n = (pid % (GROUP_M * blocks_n)) // size_m
    m_offsets = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_offsets = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_offsets = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x8_ptr + m_offsets[:, None].to(tl.int64) * K + k_offsets[None, :],
                    mask=(m_offsets[:, None] < M) & (k_offsets[None, :] < K), other=0.0)
        codes = _load_weight_codes(w_ptr, n_offsets, k0, K, N, True, BLOCK_N, BLOCK_K)
        acc += tl.dot(a, tl.trans(codes.to(tl.float32).to(tl.float8e4nv)))
    acc = acc * tl.load(xs_ptr + m_offsets, mask=m_offsets < M, other=0.0)[:, None]
    acc = acc * tl.load(ws_ptr + n_offsets, mask=n_offsets < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n_offsets, mask=n_offsets < N, other=0.0).to(tl.float32)[None, :]
    mask = (m_offsets[:, None] < M) & (n_offsets[None, :] < N)
    tl.store(out_ptr + m_offsets[:, None].to(tl.int64) * out_stride + n_offsets[None, :], _to_output(acc, out_ptr),
             mask=mask)


def _interpreted():
    import os
    return os.environ.get("TRITON_INTERPRET") == "1"


def _row_warps(block):
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def quantize_rows_fp8(rows, padded_rows):
    """(codes [padded_rows, K] e4m3, scales [padded_rows, 1] fp32) of a contiguous 2-D activation."""
    count, cols = rows.shape
    block = triton.next_power_of_2(cols)
    codes = torch.empty((padded_rows, cols), device=rows.device, dtype=torch.float8_e4m3fn)
    scales = torch.empty((padded_rows, 1), device=rows.device, dtype=torch.float32)
    _quantize_rows_fp8_kernel[(padded_rows,)](rows, codes, scales, count, cols, rows.stride(0), BLOCK=block,
                                              num_warps=_row_warps(block))
    return codes, scales


def int4_to_fp8(packed, rows, cols):
    """e4m3 [rows, cols] from packed int4 codes [rows, cols / 2] (even cols)."""
    out = torch.empty((rows, cols), device=packed.device, dtype=torch.float8_e4m3fn)
    count = packed.numel()
    block = 2048
    _int4_to_fp8_kernel[(triton.cdiv(count, block),)](packed, out, count, BLOCK=block, num_warps=8)
    return out


def dequantize(packed, scale, rows, cols, dtype, is_int4):
    """[rows, cols] weight in `dtype` from int8 codes or packed int4, per-channel or per-group fp32 scales."""
    out = torch.empty((rows, cols), device=packed.device, dtype=dtype)
    groups = scale.shape[1]
    block = min(1024, triton.next_power_of_2(cols))
    _dequantize_kernel[(rows, triton.cdiv(cols, block))](packed, scale, out, cols, (cols + 1) // 2, groups,
                                                          cols // groups, PACKED=is_int4, BLOCK=block, num_warps=4)
    return out


def _matmul_blocks(rows):
    if rows <= 16:
        return 16, 64, 256, 4, 4
    if rows <= 64:
        return 64, 64, 128, 4, 4
    return 128, 128, 64, 8, 3


def weight_only_linear(x2d, codes, scale, bias, is_int4, out_features, blocks=None):
    """x2d [M, K] (16-bit, contiguous rows) @ dequantized weight^T + bias, per-output-channel scales [N, 1]."""
    rows, cols = x2d.shape
    out = torch.empty((rows, out_features), device=x2d.device, dtype=x2d.dtype)
    block_m, block_n, block_k, warps, stages = blocks or _matmul_blocks(rows)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(out_features, block_n))
    _weight_only_matmul_kernel[grid](
        x2d, codes, scale, bias if bias is not None else out, out, rows, out_features, cols, x2d.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, PACKED=is_int4, EXACT_DOT=_interpreted(), BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def w4a8_linear(x8, x_scale, packed, w_scale, bias, rows, out_features, out_dtype, blocks=(128, 128, 128, 8, 3)):
    """FP8 codes [>= rows, K] x packed int4 weight [N, K / 2] -> [rows, N] in one kernel."""
    cols = x8.shape[1]
    out = torch.empty((rows, out_features), device=x8.device, dtype=out_dtype)
    block_m, block_n, block_k, warps, stages = blocks
    grid = (triton.cdiv(rows, block_m) * triton.cdiv(out_features, block_n),)
    _w4a8_matmul_kernel[grid](x8, x_scale, packed, w_scale, bias if bias is not None else out, out, rows,
                              out_features, cols, out.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m,
                              BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, num_warps=warps, num_stages=stages)
    return out
