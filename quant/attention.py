"""8-bit attention, SageAttention-style: Q and K as int8 codes with one scale per block of tokens, K smoothed by
subtracting its mean over the tokens first, the softmax in float32, P.V in the 16-bit dtype of V.

Layout [batch, heads, tokens, head_dim]. `int8_attention` runs the Triton kernel
(quant/kernels/attention_kernels.py) for CUDA half-precision inputs it supports, as one `torch.library` op
(torch.compile keeps it whole), and `reference` elsewhere (the CPU, no Triton, other head sizes); `reference` is
the plain-torch definition the kernel is held to.

Why it works: subtracting the same vector from every key adds one constant per query row to the scores, which the
softmax removes, and it takes out the channel-wise offset that DiT keys carry, so the per-block int8 range is
spent on what differs between tokens."""
import torch
import torch.nn.functional as F

from .kernels import attention_available

BLOCK_Q = 128   # query tokens per scale (one kernel program's rows)
BLOCK_K = 64    # key tokens per scale (one step of the kernel's loop)
INT8_MAX = 127.0
MIN_AMAX = 1e-12
REFERENCE_QUERY_CHUNK = 1024  # query rows per score matrix in `reference` (bounds its memory)


def quantize_blocks(x, block, multiplier=1.0, mean=None):
    """int8 codes [B, H, N, D] and float32 scales [B, H, ceil(N / block)] of (x * multiplier - mean), one scale
    per `block` tokens: scale = amax * (1 / 127), codes = round-half-even(value * ((1 / amax) * 127)) (the
    reciprocal first: what the kernel computes exactly on the GPU and under Triton's interpreter alike)."""
    values = x.float() * multiplier
    if mean is not None:
        values = values - mean
    tokens = values.shape[2]
    padded = F.pad(values, (0, 0, 0, (-tokens) % block)).unflatten(2, (-1, block))  # zero rows leave amax alone
    amax = padded.abs().amax(dim=(-1, -2)).clamp_min(MIN_AMAX)
    inverse = torch.reciprocal(amax) * INT8_MAX
    codes = torch.round(padded * inverse[..., None, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes.flatten(2, 3)[:, :, :tokens], amax * (1.0 / INT8_MAX)


def key_mean(k):
    """The mean key over the tokens (float32 [B, H, 1, D]): the smoothing SageAttention subtracts."""
    return torch.mean(k, dim=2, keepdim=True, dtype=torch.float32)


def _expand(scales, block, tokens):
    return scales.repeat_interleave(block, dim=-1)[..., :tokens]


def fp8_values(v):
    """V as e4m3 values [B, H, N, D] and float32 scales per channel [B, H, 1, D] (amax over the tokens / 448)."""
    scales = v.abs().amax(dim=2, keepdim=True).float().clamp_min(MIN_AMAX) * (1.0 / 448.0)
    return (v.float() / scales).to(torch.float8_e4m3fn), scales


def reference(q, k, v, scale=None, pv_fp8=False):
    """The 8-bit attention in plain torch: [B, H, Nq, D] x [B, H, Nk, D] -> [B, H, Nq, D] in q's dtype.
    pv_fp8: P.V in FP8 too (P * 448 and V per channel as e4m3), the kernel's Hopper variant."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q_codes, q_scales = quantize_blocks(q, BLOCK_Q, scale)
    k_codes, k_scales = quantize_blocks(k, BLOCK_K, mean=key_mean(k))
    q_scales, k_scales = _expand(q_scales, BLOCK_Q, q.shape[2]), _expand(k_scales, BLOCK_K, k.shape[2])
    keys = k_codes.float().transpose(-1, -2)
    if pv_fp8:
        v_codes, v_scales = fp8_values(v)
    out = []
    for start in range(0, q.shape[2], REFERENCE_QUERY_CHUNK):
        rows = slice(start, start + REFERENCE_QUERY_CHUNK)
        # integer products of |codes| <= 127 over D <= 1024 entries are exact in float32
        scores = (q_codes[:, :, rows].float() @ keys) * q_scales[:, :, rows, None] * k_scales[:, :, None, :]
        p = torch.softmax(scores, dim=-1)
        if pv_fp8:
            pv = ((p * 448.0).to(torch.float8_e4m3fn).float() @ v_codes.float()) * (v_scales / 448.0)
        else:
            pv = p.to(v.dtype).float() @ v.float()
        out.append(pv.to(q.dtype))
    return torch.cat(out, dim=2)


def kernel_supports(q, k, v):
    """Whether the Triton kernel takes these inputs (else `int8_attention` runs `reference`)."""
    d = q.shape[-1]
    return (attention_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.dtype == k.dtype == v.dtype and v.shape[-1] == d and 16 <= d <= 256 and d & (d - 1) == 0
            and q.shape[:2] == k.shape[:2] == v.shape[:2] and k.shape[2] == v.shape[2])


def int8_attention(q, k, v, scale=None, pv_fp8=False):
    """8-bit attention of [B, H, N, D] inputs: the kernel where it applies, else `reference`."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if kernel_supports(q, k, v):
        return torch.ops.qsched.int8_attention(q, k, v, scale, pv_fp8)
    return reference(q, k, v, scale, pv_fp8)
