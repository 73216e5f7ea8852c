"""comfy_kitchen backend: W8A8 linears through comfy-kitchen's `int8_linear` (ComfyUI's own kernel library, shipped
with ComfyUI 0.33+): int8 weights with per-output-channel scales, activations quantized per token inside the
call (fused CUDA kernels on NVIDIA GPUs, an eager torch implementation on the CPU). The stored codes and scales
are the simulate backend's int8 ones, so caches, LoRA and the ComfyUI int8 export work the same; the numerics
equal simulate's W8A8 up to float rounding (int32 accumulation instead of a float GEMM). Imported only when
chosen: this module imports no ComfyUI, only the `comfy_kitchen` package."""
import importlib

import torch

from .layers import PackedWeightMixin


def load():
    """The comfy_kitchen module, or ImportError naming what is missing."""
    return importlib.import_module("comfy_kitchen")


def available():
    try:
        load()
    except ImportError:
        return False
    return True


def supports(layer, spec):
    """int8_linear takes W8A8 linears with per-channel weights, per-token activations and 16-aligned sizes (a low-rank
    branch is added beside it by the shared forward)."""
    return (isinstance(layer, torch.nn.Linear) and spec.base.name == "W8A8" and layer.in_features % 16 == 0
            and layer.out_features % 16 == 0)


class KitchenInt8Linear(PackedWeightMixin):
    def quantized_forward(self, x, packed, bias):
        if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise TypeError(f"comfy_kitchen int8_linear takes 16/32-bit float inputs, not {x.dtype}")
        return _kitchen().int8_linear(x, packed, self.weight_scale.to(x.device).reshape(-1), bias, out_dtype=x.dtype)


_MODULE = []


def _kitchen():
    if not _MODULE:
        _MODULE.append(load())
    return _MODULE[0]
