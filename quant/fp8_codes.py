"""FP8 (e4m3) per-token activation codes: the torch definition the Triton quantizer reproduces bit for bit, shared by
the fp8 layers (fp8.py) and their per-call ops (linear_ops.py, branch_ops.py)."""
import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
INV_E4M3_MAX = 1.0 / E4M3_MAX
# cuBLAS' fast FP8 accumulation on the GPU (as ComfyUI's fp8_fast): 5% faster FLUX GEMMs; its error against exact
# accumulation of the same codes is 0.0020 vs 0.0017 (K 3072) and 0.0034 vs 0.0017 (K 15360) on an H200, far below
# the quantization error itself (bench/results/peers_h200.md).
FAST_ACCUMULATION = True


def quantize_rows(rows, padded_rows):
    """Per-token FP8 codes and scales, the torch definition the Triton kernel reproduces bit for bit: scale =
    max(amax * (1/448), 1e-12), codes = e4m3(x * (1 / scale)); zero rows pad the count to `padded_rows`."""
    if padded_rows != rows.shape[0]:
        rows = torch.nn.functional.pad(rows, (0, 0, 0, padded_rows - rows.shape[0]))
    scale = (rows.abs().amax(dim=1, keepdim=True).float() * INV_E4M3_MAX).clamp(min=1e-12)
    return (rows.float() * (1.0 / scale)).to(E4M3), scale
