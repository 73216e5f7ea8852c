"""The 16-bit low-rank branch (SVDQuant's split): W ~= up @ down + dequant(Q(W - up @ down)).

The truncated SVD of the float weight takes the few directions that carry the largest part of it (and its outliers)
into two thin 16-bit factors, down [r, in] and up [out, r]; the quantizer only sees the residual, which is smaller
and flatter. The branch runs on the unquantized input: output = quantized path(x) + (x @ down.T) @ up.T."""
import torch

FACTOR_DTYPES = (torch.bfloat16, torch.float16)


def factor_dtype(weight_dtype):
    """The model's 16-bit compute dtype where the weight says it, else bfloat16 (float32 models: range over bits)."""
    return weight_dtype if weight_dtype in FACTOR_DTYPES else torch.bfloat16


def layer_rank(rank, rows, columns):
    """The rank a [rows, columns] weight can take: at most min(rows, columns)."""
    return min(rank, rows, columns)


def split(weight, rank, dtype=torch.bfloat16):
    """(down [r, in], up [out, r] in `dtype`, residual [out, in] float32) of a 2-D weight: the rank-r truncated SVD
    with sqrt(singular value) on each side (both factors in the same range, which 16-bit keeps best), and the residual
    against the rounded factors, so that residual + up @ down is the weight up to float32 rounding. The SVD runs in
    float64 on the CPU and in float32 on GPUs (float64 is slow on most of them)."""
    if weight.dim() != 2:
        raise ValueError(f"the low-rank split takes a 2-D weight, got shape {tuple(weight.shape)}")
    rank = layer_rank(rank, *weight.shape)
    if rank < 1:
        raise ValueError(f"the low-rank branch needs rank >= 1, got {rank}")
    w = weight.detach().to(torch.float64 if weight.device.type == "cpu" else torch.float32)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    up = (u[:, :rank] * root).to(dtype).contiguous()
    down = (root[:, None] * vh[:rank]).to(dtype).contiguous()
    residual = weight.detach().float() - up.float() @ down.float()
    return down, up, residual


def branch_weight(down, up, dtype=torch.float32, device=None):
    """up @ down: the branch as a dense [out, in] weight (LoRA merges, export, dequantized views)."""
    device = down.device if device is None else device
    return up.to(device, dtype) @ down.to(device, dtype)


def branch_output(x, down, up):
    """(x @ down.T) @ up.T in x's dtype, x [..., in]: the torch reference that fused kernels must match."""
    return torch.nn.functional.linear(torch.nn.functional.linear(x, down.to(x.device, x.dtype)),
                                      up.to(x.device, x.dtype))


def conv_branch_output(layer, x, down, up):
    """The branch of a convolution (groups 1): down as a conv with the layer's kernel, stride, padding and dilation
    into r channels, then up as a 1x1 mixing of the r channels; x [batch, in, *spatial]."""
    kernel = down.to(x.device, x.dtype).reshape(down.shape[0], layer.in_channels, *layer.kernel_size)
    hidden = layer._conv_forward(x, kernel, None)
    return torch.nn.functional.linear(hidden.movedim(1, -1), up.to(x.device, x.dtype)).movedim(-1, 1)
