"""The torch definition of the quantized GEMM that quant/kernels/gemm_kernels.py runs on CUDA, and what the int8 and
fp8 layers compute off CUDA for group-wise weights.

int8 activation codes: partial sums are exact integers (float64 products of the codes), so the order below is the
kernel's to the bit. Per channel: (float32(acc) * row scale) * column scale, as int8_codes.scale_int32. Per group:
acc = acc + float32(p_g) * s[:, g] in group order (two roundings each, no fused multiply-add), then acc * row scale.
Then + bias, then + lr @ up^T in float32, rounded once to the output dtype. e4m3 activation codes: the same order;
the GPU's float32 tensor-core partial sums differ from these exact ones by float32 rounding."""
import torch

from .int8_codes import scale_int32

# Weight group sizes the Triton GEMM takes (one dot of K = G per group: tl.dot needs K >= 16, tiles are powers of two).
GROUP_SIZES = (16, 32, 64, 128)
# groups per float64 matmul: bounds the [chunk, M, N] float64 temporary
_CHUNK_ELEMENTS = 2 ** 26


def group_partials(a_codes, b_codes, groups):
    """Yields float32 [M, N] exact-then-rounded partial dot products per group of columns, in group order."""
    rows, cols = a_codes.shape
    size = cols // groups
    a = a_codes.double().reshape(rows, groups, size).transpose(0, 1)
    b = b_codes.double().reshape(b_codes.shape[0], groups, size).permute(1, 2, 0)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, rows * b_codes.shape[0]))
    for start in range(0, groups, chunk):
        for p in torch.bmm(a[start:start + chunk], b[start:start + chunk]):
            yield p.float()


def reference(a_codes, a_scale, b_codes, b_scale, bias, count, out_dtype, lr=None, up=None):
    """[count, N] in out_dtype from activation codes a_codes [>= count, K] (int8 or e4m3) with float32 row scales
    [>= count, 1], weight codes b_codes [N, K] (int8, or e4m3: the unpacked codes, not the packed int4 bytes) with
    scales [N, 1] or [N, K / G] (float32 or float16), bias [N] or None, lr [count, r] and up [N, r] or None."""
    a_codes, a_scale = a_codes[:count], a_scale[:count].reshape(count, 1).float()
    b_scale = b_scale.reshape(b_scale.shape[0], -1).float()
    groups = b_scale.shape[1]
    if groups == 1:
        exact = a_codes.double() @ b_codes.double().t()  # integers below 2**53 for int8 codes: exact
        out = scale_int32(exact, a_scale, b_scale, None, count, torch.float32)
    else:
        out = torch.zeros((count, b_codes.shape[0]), dtype=torch.float32, device=a_codes.device)
        for g, p in enumerate(group_partials(a_codes, b_codes, groups)):
            out = out + p * b_scale[:, g]
        out = out * a_scale
    if bias is not None:
        out = out + bias.float()
    if lr is not None:
        out = out + lr.float() @ up.float().t()
    return out.to(out_dtype)


def dequant_reference(a_codes, a_scale, b_codes, b_scale, bias, count, out_dtype, lr=None, up=None):
    """The float16-dequantizing form of the group-wise GEMM (gemm_kernels.qgemm(dequant=True)): weights fp16(code *
    scale) in float32 arithmetic, activation codes exact in float16, float32 accumulation (the GPU sums in another
    order), times the row scale, + bias, + lr @ up^T, rounded once. Its weights are simulate's dequantized weights in
    float16 (relative rounding 2**-11 each)."""
    a_codes, a_scale = a_codes[:count], a_scale[:count].reshape(count, 1).float()
    groups = b_scale.shape[1]
    weight = (b_codes.float().reshape(b_codes.shape[0], groups, -1) * b_scale.float().unsqueeze(-1)).half()
    out = (a_codes.float() @ weight.reshape(b_codes.shape[0], -1).float().t()) * a_scale
    if bias is not None:
        out = out + bias.float()
    if lr is not None:
        out = out + lr.float() @ up.float().t()
    return out.to(out_dtype)
