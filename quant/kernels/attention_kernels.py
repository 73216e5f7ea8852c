"""Triton kernels of the 8-bit attention (quant/attention.py is their torch reference).

Self-contained (torch + triton only) so that tests can load this file under TRITON_INTERPRET=1 on a CPU.
`_quantize_blocks_kernel` writes the int8 codes and per-block scales that quant.attention.quantize_blocks defines,
bit for bit; `_attention_kernel` is a flash-attention loop over key blocks: int8 Q.K^T (int32 accumulation) times
the two block scales, an online softmax in float32 (exp2, log2(e) folded into the query scale), P cast to V's
dtype and P.V accumulated in float32. `int8_attention` is also registered as the op `qsched::int8_attention`, so
torch.compile keeps the launches whole instead of tracing into Triton.

Under the interpreter (`EXACT_DOT`) the products run on float32 tiles (it cannot dot int8 or bf16 tiles); int8
products over D <= 256 entries are exact in float32, so only P's rounding to V's dtype differs in kind."""
import importlib
import os

import torch

triton = importlib.import_module("triton")
tl = importlib.import_module("triton.language")

BLOCK_Q = 128   # must equal quant.attention.BLOCK_Q / BLOCK_K (the scales' blocks are the kernel's tiles)
BLOCK_K = 64
LOG2E = tl.constexpr(1.4426950408889634)  # a kernel reads only constexpr globals
INV_INT8_MAX = tl.constexpr(1.0 / 127.0)  # rounded to float32 where used, as torch rounds the Python float
# (num_warps, num_stages) per head dim, from the H100 sweep of bench/gpu_attention.py
LAUNCH = {64: (4, 3), 128: (8, 3)}
DEFAULT_LAUNCH = (4, 2)


def _interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _round_half_even(x):
    """|x| < 2**22: the nearest integer, ties to even, as torch.round (float32 adds round to nearest even)."""
    return (x + 12582912.0) - 12582912.0


@triton.jit
def _round_e4m3(q):
    """fp32 (|q| <= 448) -> the nearest float8 e4m3fn value, ties to even, as torch's cast does (the interpreter
    cannot cast to fp8)."""
    bits = q.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
    magnitude = (tl.abs(q) + 24576.0) - 24576.0  # multiples of 2**-9 below 2**-6
    subnormal = (magnitude.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)
    return tl.where(tl.abs(q) < 0.015625, subnormal, normal)


@triton.jit
def _quantize_blocks_kernel(x_ptr, mean_ptr, codes_ptr, scale_ptr, tokens, heads, blocks, x_sb, x_sh, x_sn,
                            multiplier, BLOCK: tl.constexpr, D: tl.constexpr, HAS_MEAN: tl.constexpr):
    """One block of BLOCK tokens of one (batch, head) per program: codes [B, H, N, D] and scales [B, H, blocks]
    of (x * multiplier - mean)."""
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // heads
    h = bh % heads
    rows = block * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    live = rows[:, None] < tokens
    x = tl.load(x_ptr + b * x_sb + h * x_sh + rows[:, None].to(tl.int64) * x_sn + cols[None, :], mask=live,
                other=0.0).to(tl.float32) * multiplier
    if HAS_MEAN:
        mean = tl.load(mean_ptr + bh * D + cols)
        x = tl.where(live, x - mean[None, :], 0.0)
    amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-12)
    inverse = tl.math.div_rn(1.0, amax) * 127.0
    codes = tl.minimum(tl.maximum(_round_half_even(x * inverse), -127.0), 127.0)
    tl.store(codes_ptr + (bh * tokens + rows[:, None]) * D + cols[None, :], codes.to(tl.int8), mask=live)
    tl.store(scale_ptr + bh * blocks + block, amax * INV_INT8_MAX)


@triton.jit
def _attention_kernel(qc_ptr, qs_ptr, kc_ptr, ks_ptr, v_ptr, vs_ptr, out_ptr, q_tokens, k_tokens, heads,
                      v_sb, v_sh, v_sn, o_sb, o_sh, o_sn,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXACT_DOT: tl.constexpr,
                      PV_FP8: tl.constexpr):
    """PV_FP8: V holds e4m3 codes with one float32 scale per channel (vs_ptr), P goes to e4m3 as P * 448 (its
    running maximum is 1), and the output is divided back."""
    q_block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // heads
    h = bh % heads
    rows = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D)
    q = tl.load(qc_ptr + (bh * q_tokens + rows[:, None]) * D + cols[None, :], mask=rows[:, None] < q_tokens,
                other=0)
    q_scale = tl.load(qs_ptr + bh * tl.cdiv(q_tokens, BLOCK_M) + q_block) * LOG2E
    k_blocks = tl.cdiv(k_tokens, BLOCK_N)
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    for k_block in range(0, k_blocks):
        keys = k_block * BLOCK_N + tl.arange(0, BLOCK_N)
        key_live = keys < k_tokens
        k_t = tl.load(kc_ptr + (bh * k_tokens + keys[None, :]) * D + cols[:, None], mask=key_live[None, :],
                      other=0)
        if EXACT_DOT:
            s = tl.dot(q.to(tl.float32), k_t.to(tl.float32))
        else:
            s = tl.dot(q, k_t).to(tl.float32)
        s = s * (q_scale * tl.load(ks_ptr + bh * k_blocks + k_block))
        s = tl.where(key_live[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + b * v_sb + h * v_sh + keys[:, None].to(tl.int64) * v_sn + cols[None, :],
                    mask=key_live[:, None], other=0.0)
        acc = acc * alpha[:, None]
        if PV_FP8:
            if EXACT_DOT:
                acc += tl.dot(_round_e4m3(p * 448.0), v.to(tl.float32))
            else:
                acc = tl.dot((p * 448.0).to(v.dtype), v, acc)
        elif EXACT_DOT:
            acc += tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m = m_new
    if PV_FP8:
        acc = acc * (tl.load(vs_ptr + bh * D + cols) * (1.0 / 448.0))[None, :]
    out = acc / l[:, None]
    tl.store(out_ptr + b * o_sb + h * o_sh + rows[:, None].to(tl.int64) * o_sn + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rows[:, None] < q_tokens)


def _float32(value):
    """The float32 value torch multiplies by (a float32 product is exact in float64, where the interpreter
    computes it, so both round the same)."""
    return torch.tensor(value, dtype=torch.float32).item()


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def quantize_blocks(x, block, multiplier=1.0, mean=None):
    """The kernel's codes and scales of quant.attention.quantize_blocks (x: [B, H, N, D], any strides but the
    last; mean: float32 [B, H, 1, D] or None)."""
    x = _last_dim_contiguous(x)
    batch, heads, tokens, d = x.shape
    blocks = triton.cdiv(tokens, block)
    codes = torch.empty((batch, heads, tokens, d), dtype=torch.int8, device=x.device)
    scales = torch.empty((batch, heads, blocks), dtype=torch.float32, device=x.device)
    if mean is not None:
        mean = mean.to(torch.float32).contiguous()
    _quantize_blocks_kernel[(blocks, batch * heads)](
        x, mean if mean is not None else scales, codes, scales, tokens, heads, blocks,
        x.stride(0), x.stride(1), x.stride(2), _float32(multiplier), BLOCK=block, D=d, HAS_MEAN=mean is not None)
    return codes, scales


def fp8_values(v):
    """V as e4m3 codes [B, H, N, D] and float32 scales per channel [B, H, D] (amax over the tokens / 448)."""
    scales = v.abs().amax(dim=2).float().clamp_min(1e-12) * (1.0 / 448.0)
    return (v.float() / scales[:, :, None]).to(torch.float8_e4m3fn), scales.contiguous()


def attention(q, k, v, scale, num_warps=None, num_stages=None, pv_fp8=False):
    """8-bit attention of [B, H, N, D] half-precision inputs (any strides but the last); the output is
    [B, H, Nq, D] laid out as [B, Nq, H, D] (the models' own layout: reshaping it to [B, Nq, H * D] is free).
    pv_fp8: P.V on FP8 tensor cores (Ada/Hopper; measured in bench/gpu_attention.py, not a loader choice)."""
    batch, heads, q_tokens, d = q.shape
    k_tokens = k.shape[2]
    out_dtype = q.dtype
    v_scales = None
    if pv_fp8:
        v, v_scales = fp8_values(v)
        if _interpreted():
            v = v.float()
    v = _last_dim_contiguous(v)
    q_codes, q_scales = quantize_blocks(q, BLOCK_Q, scale)
    k_codes, k_scales = quantize_blocks(k, BLOCK_K, 1.0, torch.mean(k, dim=2, keepdim=True, dtype=torch.float32))
    out = torch.empty((batch, q_tokens, heads, d), dtype=out_dtype, device=q.device).transpose(1, 2)
    warps, stages = LAUNCH.get(d, DEFAULT_LAUNCH)
    options = {} if _interpreted() else {"num_warps": num_warps or warps, "num_stages": num_stages or stages}
    _attention_kernel[(triton.cdiv(q_tokens, BLOCK_Q), batch * heads)](
        q_codes, q_scales, k_codes, k_scales, v, v_scales if pv_fp8 else q_scales, out, q_tokens, k_tokens, heads,
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        D=d, BLOCK_M=BLOCK_Q, BLOCK_N=BLOCK_K, EXACT_DOT=_interpreted(), PV_FP8=pv_fp8, **options)
    return out


@torch.library.custom_op("qsched::int8_attention", mutates_args=())
def int8_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      pv_fp8: bool = False) -> torch.Tensor:
    return attention(q, k, v, scale, pv_fp8=pv_fp8)


@int8_attention_op.register_fake
def _(q, k, v, scale, pv_fp8=False):
    batch, heads, tokens, d = q.shape
    return q.new_empty((batch, tokens, heads, d)).transpose(1, 2)
