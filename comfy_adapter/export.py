"""Export through ComfyUI: a diffusion model loaded by ComfyUI's loader, its backbone quantized W8A8 (quant/) and
written in ComfyUI's own int8 format (quant/export.py), for the export node."""
import logging
import os

import comfy.model_management
import comfy.sd

from ..quant import quantize_module
from ..quant.export import save_comfy_int8
from ..quant.source import check_source
from ..tensor_files import warn_non_finite_weights


def comfy_reads_int8():
    """Whether the running ComfyUI decodes int8_tensorwise layers (0.33+)."""
    try:
        import comfy.quant_ops
    except ImportError:
        return False
    return "int8_tensorwise" in getattr(comfy.quant_ops, "QUANT_ALGOS", {})


def export_comfy_int8(source, path, policy):
    """Load the diffusion model file `source`, quantize its backbone W8A8 by `policy` and write it to `path`;
    returns (layers written, quant.QuantReport)."""
    check_source(source)
    patcher = comfy.sd.load_diffusion_model(source)
    backbone = patcher.model.diffusion_model
    warn_non_finite_weights(backbone, os.path.basename(source), logging)
    dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
    report = quantize_module(backbone, "W8A8", policy, backend="simulate",
                             compute_device=comfy.model_management.get_torch_device())
    return save_comfy_int8(backbone, path, dtype=dtype), report
