"""ComfyUI's weight patching protocol for the pack's packed quantized layers (quant/layers.py).

`with_comfy_patching(backbone)` puts `ComfyPackedWeight` in front of the class of every packed layer that
quant.quantize_module made; their base classes are still comfy.ops classes, so the ModelPatcher sees ordinary
comfy ops: offloading and --lowvram move the packed weight, LoRA keys stay `<layer>.weight`.
- convert_weight / set_weight: the ModelPatcher hands over the stored weight value-cast to float (exact for int8
  codes, packed int4 bytes and e4m3), gets the dequantized weight, patches it (LoRA) and stores it again through
  set_weight, which requantizes onto the layer's existing scales, so restoring the backup restores the codes.
- forward_comfy_cast_weights: the packed weight moves to the input's device, and the per-call weight functions
  (LoRA in low-VRAM mode) apply in the running ComfyUI's protocol (comfy_compat.weight_functions) and its LoRA
  arithmetic dtype; a float result is requantized onto the layer's scales like a LoRA merged at load. ComfyUI's own cast would value-cast
  the codes without their scales.
- A low-rank branch (lowrank_down / lowrank_up buffers) stays as it is: the patches see the whole float weight
  (codes plus branch, so weight-dependent patches such as DoRA see the real weight) and their result minus the
  branch goes back into the residual codes; the buffers move with the layer like its other tensors.
- A smoothed layer (input_divisor) hands the patches W, not W diag(s): float_weight divides by s, requantize_float
  multiplies the patched weight by s again, so a LoRA made for the original weight applies as made.
"""
import torch
from torch import nn

from ..quant.layers import PackedWeightMixin, quantized_class
from . import comfy_compat

MATH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ComfyPackedWeight:
    """In front of a quantized PackedWeightMixin layer whose base is a comfy.ops class."""

    def forward(self, x, *args, **kwargs):
        return self.forward_comfy_cast_weights(x, *args, **kwargs)

    def forward_comfy_cast_weights(self, x, *args, **kwargs):
        packed = self.weight.to(x.device, non_blocking=True)
        on_stored, on_float = comfy_compat.weight_functions(self, "weight")
        for function in on_stored:
            packed = function(packed)
        if on_float:
            weight = self.float_weight(packed, dtype=comfy_compat.lora_compute_dtype(x.device))
            for function in on_float:
                weight = function(weight)
            packed = self.requantize_float(weight).to(packed.dtype)
        bias = None if self.bias is None else self.bias.to(x.device, x.dtype, non_blocking=True)
        for functions in comfy_compat.weight_functions(self, "bias"):  # the bias is stored as a float either way
            for function in functions:
                bias = function(bias)
        return self.smoothed_forward(x, packed, bias)

    def convert_weight(self, weight, inplace=False, **kwargs):
        # Some paths hand over the codes in their stored dtype (dynamic VRAM force-loading a small layer).
        dtype = weight.dtype if weight.dtype in MATH_DTYPES else torch.float32
        return self.float_weight(weight.to(self.weight.dtype), dtype=dtype)

    def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
        packed = self.requantize_float(weight).to(self.weight.dtype)
        if return_weight:
            return packed
        if inplace_update:
            self.weight.data.copy_(packed)
        else:
            self.weight = nn.Parameter(packed.to(self.weight.device), requires_grad=False)


def with_comfy_patching(module):
    """Give every quantized packed layer in `module` ComfyUI's patching protocol; returns `module`."""
    for layer in module.modules():
        if isinstance(layer, PackedWeightMixin) and layer.quant_spec is not None \
                and not isinstance(layer, ComfyPackedWeight):
            layer.__class__ = quantized_class(ComfyPackedWeight, type(layer))
    return module
