"""int8 per-token activation codes, row padding and the int32 rescale: the torch definitions the Triton kernels
reproduce bit for bit, shared by the int8 layers (int8.py) and their per-call ops (linear_ops.py, branch_ops.py)."""
import torch

INT8_MAX = 127
INV_INT8_MAX = 1.0 / INT8_MAX


def padded_rows(count, device_type):
    """Rows the int8 GEMM runs on: CUDA's _int_mm needs more than 16; multiples of 16 keep its tiles whole."""
    return max(32, -(-count // 16) * 16) if device_type == "cuda" else count


def quantize_rows(rows, padded):
    """Per-token int8 codes and scales, the torch definition the Triton kernel reproduces bit for bit: scale =
    max(amax * (1/127), 1e-12), codes = round(x * (1 / scale)) clamped to +-127; zero rows pad the count."""
    if padded != rows.shape[0]:
        rows = torch.nn.functional.pad(rows, (0, 0, 0, padded - rows.shape[0]))
    scale = (rows.abs().amax(dim=1, keepdim=True).float() * INV_INT8_MAX).clamp(min=1e-12)
    codes = torch.round(rows.float() * (1.0 / scale)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def scale_int32(acc, row_scale, column_scale, bias, count, dtype):
    """(float(acc) * row scale) * column scale (+ bias), float32, rounded once to `dtype`; the first `count` rows."""
    out = acc[:count].float() * row_scale[:count] * column_scale.view(1, -1)
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype)
