"""Fast eager kernels for quantized layers: Triton on CUDA tensors, nothing elsewhere.

`runs_triton(x)` says whether a layer may call them for input `x`: a CUDA tensor, Triton importable, and not
inside torch.compile (there the layers' plain torch code is traced and inductor fuses it itself)."""
import torch

try:
    from . import triton_kernels
except Exception:  # no Triton (CPU-only builds of torch, other platforms): the torch code paths run
    triton_kernels = None
try:
    from . import gemm_kernels
except Exception:  # as above: quant/qgemm.py's torch definition runs
    gemm_kernels = None
try:
    from . import attention_kernels
except Exception:  # as above: quant.attention.reference runs
    attention_kernels = None


def triton_available():
    return triton_kernels is not None


def attention_available():
    return attention_kernels is not None


def runs_triton(x):
    return triton_kernels is not None and x.is_cuda and not torch.compiler.is_compiling()
