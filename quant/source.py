"""Checks on the user's model file before quantizing it: Q-Sched quantizes from 16/32-bit weights only."""
import os

from safetensors import safe_open

from ..tensor_files import check_regular, check_safetensors

FLOAT_WEIGHTS = ("F16", "BF16", "F32")


def check_source(path):
    """Raise ValueError naming the file if it is already quantized (ComfyUI's per-layer `comfy_quant` metadata,
    scaled fp8, int8/fp8 weights): requantizing stored 8-bit codes would round twice. A file that is not regular or
whose safetensors header is corrupt gives tensor_files.TensorFileError naming it."""
    name = os.path.basename(path)
    check_regular(path, "model file")   # a FIFO would hang the hash and ComfyUI's loader
    if not path.endswith(".safetensors"):
        return
    check_safetensors(path, "model file")
    with safe_open(path, framework="pt") as handle:
        for key in handle.keys():
            if key.endswith((".comfy_quant", ".scale_weight", ".weight_scale")):
                raise ValueError(f"{name} is already quantized ({key!r}): load it with ComfyUI's own loader, or "
                                 "give Q-Sched the 16-bit file")
            if key.endswith(".weight"):
                dtype = handle.get_slice(key).get_dtype()
                if dtype not in FLOAT_WEIGHTS:
                    raise ValueError(f"{name} stores {key!r} as {dtype}: Q-Sched quantizes from FP16/BF16/FP32 "
                                     "weights, give it the 16-bit file")
