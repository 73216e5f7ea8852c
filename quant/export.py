"""Export a W8A8 backbone as ComfyUI's native int8 checkpoint: per layer `comfy_quant` {"format":
"int8_tensorwise"}, int8 weight and fp32 per-output-channel `weight_scale`, which ComfyUI 0.33+ loads with a plain
UNETLoader (comfy-kitchen's int8_linear then quantizes activations per token, as this pack's W8A8 does).

What ComfyUI's format carries: int8 linears with per-channel scales whose activations are quantized per token.
Weight-only (A16) layers, e.g. adaLN modulation, and convolutions are written dequantized in 16 bit: same weights,
same numerics (ComfyUI 0.33's `full_precision_matrix_mult` flag does not stop its int8 path when the weight's
nominal dtype equals the input's, so an int8 A16 layer would come back with quantized activations).
Layers stored in other formats (e4m3, int4, groups) are refused: export from backend simulate or comfy_kitchen.
A low-rank branch (-r<N>) has no place in ComfyUI's format, so it is folded: a W8A8 linear's float weight (codes plus
branch) is quantized again to int8 with fresh per-channel scales, dequantized layers include it. A smoothed layer's
input divisor (quant/smoothing.py) has no place there either, and folding it into int8 codes would lose what it is
for, so a smoothed int8 linear is refused; a dequantized layer writes its weight with the divisor folded in (W)."""
import json
import os
import re
from collections import Counter

import torch
from torch import nn

from . import numerics, smoothing
from .layers import PackedWeightMixin

FORMAT = "int8_tensorwise"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")


class ExportError(ValueError):
    pass


def file_stem(filename):
    """The export's file name without .safetensors; a name with a folder, a space, a control character (a final
    newline too: fullmatch, not '$') or any other character is refused."""
    stem = filename[:-len(".safetensors")] if isinstance(filename, str) and filename.endswith(".safetensors") \
        else filename
    if not isinstance(stem, str) or not _NAME.fullmatch(stem):
        raise ExportError(f"file name {filename!r}: use letters, digits, '.', '_' and '-' only (1-151, the first a "
                          "letter or digit; no folders, spaces or control characters)")
    return stem


def layer_config():
    return torch.tensor(list(json.dumps({"format": FORMAT}).encode("utf-8")), dtype=torch.uint8)


def comfy_int8_state_dict(module, dtype=torch.bfloat16):
    """(state dict, Counter of what each quantized layer became) for `module` quantized with int8 codes;
    unquantized tensors are written as they are, dequantized weights in `dtype`."""
    state = {key: value.detach() for key, value in module.state_dict().items()}
    counts = Counter()
    for name, layer in module.named_modules():
        if not isinstance(layer, PackedWeightMixin) or layer.quant_spec is None:
            continue
        spec, prefix = layer.quant_spec, f"{name}." if name else ""
        for tensor in ("weight_scale", "lowrank_down", "lowrank_up", "input_divisor"):
            state.pop(f"{prefix}{tensor}", None)
        if not isinstance(layer, nn.Linear) or spec.weight_only:
            state[f"{prefix}weight"] = layer.float_weight(dtype=dtype)
            counts["weight-only linear, dequantized" if spec.weight_only else "convolution, dequantized"] += 1
            continue
        if layer.weight.dtype != torch.int8 or spec.base.name != "W8A8":
            raise ExportError(f"layer {name!r} is {spec} stored as {layer.weight.dtype}: ComfyUI's int8 format takes "
                              "W8A8 / W8A16 linears with int8 codes and per-channel scales; quantize with backend "
                              "'simulate' or 'comfy_kitchen' to export")
        if layer.smoothing_divisor is not None:
            raise ExportError(f"layer {name!r} is smoothed ({smoothing.NAME}): ComfyUI's int8 format has no input "
                              "divisor; load with smoothing 'off' to export")
        codes, scale = layer.weight.detach().to(torch.int8), layer.weight_scale.detach().float()
        if spec.rank:
            codes, scale = numerics.quantize_weight(layer.float_weight(dtype=torch.float32), 8)
        state[f"{prefix}weight"] = codes.contiguous()
        state[f"{prefix}weight_scale"] = scale.reshape(-1).contiguous()
        state[f"{prefix}comfy_quant"] = layer_config()
        counts["int8 W8A8 linear" + (" (low-rank branch folded in)" if spec.rank else "")] += 1
    if not counts:
        raise ExportError("the model has no quantized layer to export")
    return {key: value.contiguous() for key, value in state.items()}, counts


def save_comfy_int8(module, path, dtype=torch.bfloat16):
    """Write the export atomically; returns a one-line summary."""
    from safetensors.torch import save_file

    from ..atomic_files import write_atomic
    from ..tensor_files import check_safetensors, name_list, non_finite_names
    state, counts = comfy_int8_state_dict(module, dtype)
    state = {key: value.cpu() for key, value in state.items()}
    bad = non_finite_names(state)
    if bad:
        raise ExportError(f"{os.path.basename(path)} not written: NaN or infinite values in {name_list(bad)} (is the "
                          "source model damaged?)")

    def write(temporary):
        save_file(state, temporary)
        check_safetensors(temporary, "exported file")   # what a loader will read: header and sizes as written

    write_atomic(path, write)
    return ", ".join(f"{count} {what}" for what, count in sorted(counts.items()))
