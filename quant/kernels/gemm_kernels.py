"""One Triton GEMM for the 8-bit-activation linears: int8 or e4m3 activation codes with a float32 scale per row,
times int8, e4m3 or packed int4 weight codes (unpacked in registers: no separate pass over the weight), with one
scale per output channel or per group of input columns, an optional bias and an optional low-rank up-projection
(lr [M, r] @ up[N, r]^T) added in float32 before the single rounding to the output dtype.

Math (quant/qgemm.py holds the torch definition):
  per channel   int8: acc = sum_k a b (int32, exact); out = (float(acc) * sa[m]) * sb[n]  (int8_codes.scale_int32's
                order: bit for bit).  e4m3: the same with a float32 accumulator.
  per group     for each group g (BLOCK_K = G, one dot per group): p_g = the group's dot (int32, exact for int8);
                acc = acc + float(p_g) * sb[n, g] in group order (no fused multiply-add: bit for bit);
                out = acc * sa[m]. DEQUANT: the weight tile in float16 (fp16(code * scale)), one float16 MMA per step.
  then out + bias, then + lr @ up^T (float32), rounded once.
Packed int4 in the halves layout (halves_layout(): in each step of BLOCK_K columns, byte j holds column j in its low
nibble and column BLOCK_K / 2 + j in its high nibble) is not interleaved back into column order: the low nibbles dot
the step's first half of the activation columns and the high nibbles its second half, two contiguous loads and two
dots per step (a group's columns stay in the group; integer sums do not depend on the order). The interleave
(tl.join + tl.reshape) of the standard layout made the int4 GEMM 4x slower than the int8 one on an H100.
Group scales may be float32 or float16 (loaded and widened to float32). Self-contained apart from the helpers of
triton_kernels.py (torch + triton only) so that tests can run it under TRITON_INTERPRET=1."""
import torch

from ..qgemm import GROUP_SIZES
from .triton_kernels import Launcher, _interpreted, _to_output, rank_block, tl, triton


@triton.jit
def _weight_tile(b_ptr, n, k0, N, K, b_stride, PACKED: tl.constexpr, E4M3: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K] weight codes in the dot's operand type (int8 or e4m3), zero past the edges; packed int4
    (offset-8 nibbles, even column in the low nibble) is unpacked in registers, exact in int8 and in e4m3."""
    if PACKED:
        half = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        byte = tl.load(b_ptr + n[:, None].to(tl.int64) * b_stride + half[None, :],
                       mask=(n[:, None] < N) & (2 * half[None, :] < K), other=0x88)
        low = (byte & 15).to(tl.int8) - 8
        high = (byte >> 4).to(tl.int8) - 8
        codes = tl.reshape(tl.join(low, high), [BLOCK_N, BLOCK_K])
        if E4M3:
            codes = codes.to(tl.float16).to(tl.float8e4nv)
    else:
        k = k0 + tl.arange(0, BLOCK_K)
        codes = tl.load(b_ptr + n[:, None].to(tl.int64) * b_stride + k[None, :],
                        mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)
    return codes


@triton.jit
def _halves(b_ptr, a_rows, m, n, k0, M, N, K, b_stride, E4M3: tl.constexpr, BLOCK_N: tl.constexpr,
            HALF_K: tl.constexpr):
    """(activation columns k0.. k0 + HALF_K, the low nibbles [BLOCK_N, HALF_K], columns k0 + HALF_K.., the high
    nibbles) of the step at column k0 in the halves layout; zero past the edges."""
    j = tl.arange(0, HALF_K)
    byte = tl.load(b_ptr + n[:, None].to(tl.int64) * b_stride + (k0 // 2 + j)[None, :],
                   mask=(n[:, None] < N) & (k0 + j[None, :] < K), other=0x88)
    low = (byte & 15).to(tl.int8) - 8
    high = (byte >> 4).to(tl.int8) - 8
    if E4M3:
        low = low.to(tl.float16).to(tl.float8e4nv)
        high = high.to(tl.float16).to(tl.float8e4nv)
    row_ok = m[:, None] < M
    first = tl.load(a_rows + (k0 + j)[None, :], mask=row_ok & (k0 + j[None, :] < K), other=0.0)
    second = tl.load(a_rows + (k0 + HALF_K + j)[None, :], mask=row_ok & (k0 + HALF_K + j[None, :] < K), other=0.0)
    return first, low, second, high


@triton.jit
def _partial(a, b, INT8: tl.constexpr, EXACT_DOT: tl.constexpr, HALF_DOT: tl.constexpr):
    """a [BM, BK] @ b [BN, BK]^T: int32 for int8 codes (exact), float32 for e4m3. EXACT_DOT (the interpreter, which
    has no 8-bit dot): float32 operands, exact for integer codes while |sums| < 2**24. HALF_DOT (K = 16, below the
    8-bit MMA's K): float16 operands, which hold int8 and e4m3 codes exactly, float32 accumulation, exact for int8
    codes (|sum| <= 16 * 127 * 127 < 2**24)."""
    if EXACT_DOT:
        p = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
        if INT8:
            p = p.to(tl.int32)
    elif HALF_DOT:
        p = tl.dot(a.to(tl.float16), tl.trans(b.to(tl.float16)))
        if INT8:
            p = p.to(tl.int32)
    else:
        p = tl.dot(a, tl.trans(b), out_dtype=tl.int32 if INT8 else tl.float32)
    return p


@triton.jit
def _qgemm_kernel(a_ptr, sa_ptr, b_ptr, sb_ptr, bias_ptr, lr_ptr, up_ptr, out_ptr, M, N, K, rank, a_stride, b_stride,
                  sb_stride, lr_stride, up_stride, out_stride,
                  INT8: tl.constexpr, PACKED: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BRANCH: tl.constexpr, EXACT_DOT: tl.constexpr, HALF_DOT: tl.constexpr, DEQUANT: tl.constexpr,
                  RANK_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  SWIZZLE: tl.constexpr, HALVES: tl.constexpr):
    """out[M, N] = the quantized product (see the module doc); GROUP 0: per-channel scales sb[n * sb_stride], else
    sb[n * sb_stride + k // GROUP] with BLOCK_K == GROUP, or with DEQUANT any BLOCK_K: the weight tile dequantized to
    float16 in registers (fp16(code * scale)) times the codes in float16 (exact), one float16 MMA per step.
    HALVES: packed int4 in the halves layout, two dots per step (_halves). Programs walk SWIZZLE row tiles per
    column tile (L2 reuse)."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = SWIZZLE * grid_n
    first_m = (pid // width) * SWIZZLE
    size_m = tl.minimum(grid_m - first_m, SWIZZLE)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    a_rows = a_ptr + m[:, None].to(tl.int64) * a_stride
    if GROUP == 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT8 else tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if HALVES:
                first, low, second, high = _halves(b_ptr, a_rows, m, n, k0, M, N, K, b_stride, not INT8, BLOCK_N,
                                                   BLOCK_K // 2)
                if EXACT_DOT or HALF_DOT:
                    acc += _partial(first, low, INT8, EXACT_DOT, HALF_DOT)
                    acc += _partial(second, high, INT8, EXACT_DOT, HALF_DOT)
                else:
                    acc = tl.dot(first, tl.trans(low), acc, out_dtype=tl.int32 if INT8 else tl.float32)
                    acc = tl.dot(second, tl.trans(high), acc, out_dtype=tl.int32 if INT8 else tl.float32)
            else:
                k = k0 + tl.arange(0, BLOCK_K)
                a = tl.load(a_rows + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)
                b = _weight_tile(b_ptr, n, k0, N, K, b_stride, PACKED, not INT8, BLOCK_N, BLOCK_K)
                if EXACT_DOT or HALF_DOT:
                    acc += _partial(a, b, INT8, EXACT_DOT, HALF_DOT)
                else:
                    acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32 if INT8 else tl.float32)
        out = acc.to(tl.float32) * tl.load(sa_ptr + m, mask=m < M, other=0.0)[:, None]
        out = out * tl.load(sb_ptr + n * sb_stride, mask=n < N, other=0.0).to(tl.float32)[None, :]
    elif DEQUANT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_rows + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)
            codes = _weight_tile(b_ptr, n, k0, N, K, b_stride, PACKED, False, BLOCK_N, BLOCK_K)
            scale = tl.load(sb_ptr + n[:, None] * sb_stride + k[None, :] // GROUP,
                            mask=(n[:, None] < N) & (k[None, :] < K), other=0.0).to(tl.float32)
            w = (codes.to(tl.float32) * scale).to(tl.float16)
            if EXACT_DOT:
                acc += tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
            else:
                acc = tl.dot(a.to(tl.float16), tl.trans(w), acc)
        out = acc * tl.load(sa_ptr + m, mask=m < M, other=0.0)[:, None]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if HALVES:
                first, low, second, high = _halves(b_ptr, a_rows, m, n, k0, M, N, K, b_stride, not INT8, BLOCK_N,
                                                   BLOCK_K // 2)
                p = _partial(first, low, INT8, EXACT_DOT, HALF_DOT) + _partial(second, high, INT8, EXACT_DOT, HALF_DOT)
            else:
                k = k0 + tl.arange(0, BLOCK_K)
                a = tl.load(a_rows + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)
                b = _weight_tile(b_ptr, n, k0, N, K, b_stride, PACKED, not INT8, BLOCK_N, BLOCK_K)
                p = _partial(a, b, INT8, EXACT_DOT, HALF_DOT)
            scale = tl.load(sb_ptr + n * sb_stride + k0 // GROUP, mask=n < N, other=0.0).to(tl.float32)
            acc = acc + p.to(tl.float32) * scale[None, :]
        out = acc * tl.load(sa_ptr + m, mask=m < M, other=0.0)[:, None]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
    if BRANCH:
        r = tl.arange(0, RANK_BLOCK)
        lr = tl.load(lr_ptr + m[:, None].to(tl.int64) * lr_stride + r[None, :],
                     mask=(m[:, None] < M) & (r[None, :] < rank), other=0.0)
        up = tl.load(up_ptr + n[:, None].to(tl.int64) * up_stride + r[None, :],
                     mask=(n[:, None] < N) & (r[None, :] < rank), other=0.0)
        if EXACT_DOT:
            out += tl.dot(lr.to(tl.float32), tl.trans(up.to(tl.float32)), input_precision="ieee")
        else:
            out = tl.dot(lr, tl.trans(up), out)
    tl.store(out_ptr + m[:, None].to(tl.int64) * out_stride + n[None, :], _to_output(out, out_ptr),
             mask=(m[:, None] < M) & (n[None, :] < N))


_qgemm = Launcher(_qgemm_kernel)


# Tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for Hopper-class GPUs, one definition each, to be set from
# bench/gpu_gemm.py's tile sweep: 128 x 128 tiles, K = 128 codes per step per channel, K = G per group (BLOCK_K 0:
# the group size, one dot per group); 64-row tiles up to SHORT_ROWS rows. For int8 codes the result does not depend
# on them (exact int32 partial sums, fixed group order).
MIN_DOT_K = 16  # tl.dot's smallest K: the halves layout's smallest half
CHANNEL_TILES = (128, 128, 128, 8, 4)
GROUP_TILES = (128, 128, 0, 8, 4)
SHORT_ROWS, SHORT_TILES = 256, (64, 128, 128, 4, 4)  # 256: the text stream; more row tiles to fill the SMs
DEQUANT_TILES = (128, 128, 64, 8, 4)


def config(rows, group, dequant=False):
    """The tiles for `rows` rows and group size `group` (0: per channel), or for the float16-dequantizing form."""
    if dequant:
        return DEQUANT_TILES if rows > SHORT_ROWS else (64, *DEQUANT_TILES[1:3], 4, DEQUANT_TILES[4])
    block_m, block_n, block_k, warps, stages = SHORT_TILES if rows <= SHORT_ROWS else (
        GROUP_TILES if group else CHANNEL_TILES)
    if group:
        block_k, stages = group, stages + (group < 64)  # small groups: short steps, one more stage in flight
    return block_m, block_n, block_k, warps, stages


def group_size_of(scale, cols):
    """0 for per-channel scales ([N], [N, 1]), else the group size of [N, cols / G] scales."""
    groups = 1 if scale.dim() == 1 else scale.shape[1]
    return 0 if groups == 1 else cols // groups


def halves_step(rows, group):
    """BLOCK_K / 2 of the tiles config() gives: the halves layout's half for these rows and group size."""
    return config(rows, group)[2] // 2


def halves_layout(packed, cols, half):
    """Packed int4 [N, cols / 2] (even column in the low nibble) -> the halves layout of `half` (in each step of
    2 * half columns, byte j holds column j low and column half + j high); cols a multiple of 2 * half."""
    if half < MIN_DOT_K or cols % (2 * half):
        raise ValueError(f"the halves layout of {half} needs a multiple of {2 * half} columns and half >= {MIN_DOT_K}, "
                         f"not {cols} columns")
    low, high = packed & 15, packed >> 4
    codes = torch.stack((low, high), dim=-1).reshape(packed.shape[0], cols // (2 * half), 2, half)
    return (codes[:, :, 0] | (codes[:, :, 1] << 4)).reshape(packed.shape[0], cols // 2)


def qgemm(a, a_scale, b, b_scale, bias, count, out_features, int8, int4, out_dtype, lr=None, up=None, tiles=None,
          dequant=False, halves=0):
    """[count, out_features] in out_dtype = the quantized product of activation codes a [>= count, K] (int8 or e4m3,
    unit column stride) with float32 row scales a_scale [>= count(, 1)] and weight codes b [N, K] (int8 / e4m3) or
    packed int4 [N, K / 2] with scales b_scale [N(, 1)] or [N, K / G] (float32 or float16), plus bias [N], plus
    lr [count, r] @ up [N, r]^T (16-bit) when given. tiles: a config() tuple to override the default. dequant (group
    scales only): the float16-dequantizing form instead of the exact per-group one (qgemm.dequant_reference).
    halves: b is packed int4 in halves_layout(b, K, halves), with BLOCK_K = 2 * halves."""
    cols = a.shape[1]
    group = group_size_of(b_scale, cols)
    if group and group not in GROUP_SIZES:
        raise ValueError(f"the quantized GEMM takes weight groups of {', '.join(map(str, GROUP_SIZES))} columns, "
                         f"not {group}")
    if int4 and cols % 2:
        raise ValueError(f"packed int4 weights need an even number of input columns, not {cols}")
    if any(t is not None and t.stride(-1) != 1 for t in (a, b, lr, up)):
        raise ValueError("the quantized GEMM needs codes and low-rank factors with unit column stride")
    dequant = bool(dequant and group)
    block_m, block_n, block_k, warps, stages = tiles or config(count, group, dequant)
    if group and not dequant and block_k != group:
        raise ValueError(f"the exact group-wise GEMM takes one group per step: BLOCK_K {block_k} != group {group}")
    out = torch.empty((count, out_features), device=a.device, dtype=out_dtype)
    if count == 0:
        return out
    branch = lr is not None
    rank = lr.shape[1] if branch else 0
    if halves and (not int4 or dequant or block_k != 2 * halves):
        raise ValueError(f"weights in the halves layout of {halves} need packed int4, the exact form and BLOCK_K "
                         f"{2 * halves}, not {block_k}")
    half_dot = (block_k // 2 if halves else block_k) < 32 and not _interpreted() and not dequant  # 8-bit MMA: K >= 32
    grid = (triton.cdiv(count, block_m) * triton.cdiv(out_features, block_n), 1, 1)
    sb_stride = b_scale.stride(0) if b_scale.dim() == 2 else 1
    _qgemm(grid, (a, a_scale, b, b_scale, bias if bias is not None else out, lr if branch else out,
                  up if branch else out, out, count, out_features, cols, rank, a.stride(0), b.stride(0), sb_stride,
                  lr.stride(0) if branch else 0, up.stride(0) if branch else 0, out.stride(0)),
           {"INT8": int8, "PACKED": int4, "GROUP": group, "HAS_BIAS": bias is not None, "BRANCH": branch,
            "EXACT_DOT": _interpreted(), "HALF_DOT": half_dot, "DEQUANT": dequant,
            "RANK_BLOCK": rank_block(rank) if branch else 16, "BLOCK_M": block_m, "BLOCK_N": block_n,
            "BLOCK_K": block_k, "SWIZZLE": 8, "HALVES": bool(halves)},
           (out,), num_warps=warps, num_stages=stages,
           enable_fp_fusion=False)  # separate roundings of the scaling, as the torch definition does them
    return out
