"""Export node: your 16-bit diffusion model as a W8A8 file in ComfyUI's own int8 format (comfy_quant
int8_tensorwise), which a plain UNETLoader of ComfyUI 0.33+ loads without this pack (quant/export.py)."""
import os
import re

import comfy.model_management
import comfy.sd
import folder_paths

from ..quant import LayerPolicy, quantize_module
from ..quant.export import save_comfy_int8
from ..quant.source import check_source

CATEGORY = "loaders/qsched"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")


def comfy_reads_int8():
    """Whether the running ComfyUI decodes int8_tensorwise layers (0.33+)."""
    try:
        import comfy.quant_ops
    except ImportError:
        return False
    return "int8_tensorwise" in getattr(comfy.quant_ops, "QUANT_ALGOS", {})


def output_path(filename):
    """models/diffusion_models/<filename>.safetensors; a name with a folder or an existing file is refused."""
    stem = filename[:-len(".safetensors")] if filename.endswith(".safetensors") else filename
    if not _NAME.match(stem):
        raise ValueError(f"file name {filename!r}: use letters, digits, '.', '_' and '-' only (no folders)")
    path = os.path.join(folder_paths.get_folder_paths("diffusion_models")[0], stem + ".safetensors")
    if os.path.exists(path):
        raise ValueError(f"{stem}.safetensors already exists in models/diffusion_models; choose another name")
    return path


class QSchedExportComfyInt8:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (folder_paths.get_filename_list("diffusion_models"), {"tooltip": "Your FP16/BF16 diffusion "
                                                                                     "model file; it is not changed."}),
            "layer_policy": ("STRING", {"default": "", "multiline": True, "tooltip": "Extra rules as in the Q-Sched "
                                        "loaders, e.g. 'double_blocks.0.*=keep'."}),
            "filename": ("STRING", {"default": "qsched_w8a8_int8", "tooltip": "Written to models/diffusion_models/"
                                    "<filename>.safetensors; an existing file is never overwritten."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    FUNCTION = "export"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = ("Quantizes the diffusion model to W8A8 and saves it in ComfyUI's native int8 format: load it with "
                   "the plain Load Diffusion Model node (ComfyUI 0.33+), no Q-Sched needed.")

    def export(self, unet_name, layer_policy, filename):
        policy = LayerPolicy.parse(layer_policy)
        path = output_path(filename)
        source = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        check_source(source)
        patcher = comfy.sd.load_diffusion_model(source)
        backbone = patcher.model.diffusion_model
        dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
        report = quantize_module(backbone, "W8A8", policy, backend="simulate",
                                 compute_device=comfy.model_management.get_torch_device())
        layers = save_comfy_int8(backbone, path, dtype=dtype)
        summary = f"Q-Sched exported {unet_name} as {os.path.basename(path)}: {layers}; " \
                  f"{report.bytes_before / 2 ** 20:.1f} MiB of weights before quantization"
        if not comfy_reads_int8():
            summary += "; this ComfyUI cannot load int8_tensorwise files (ComfyUI 0.33+ can)"
        print(summary)
        return (summary,)


NODE_CLASS_MAPPINGS = {"QSchedExportComfyInt8": QSchedExportComfyInt8}
NODE_DISPLAY_NAME_MAPPINGS = {"QSchedExportComfyInt8": "Export ComfyUI int8 Model (Q-Sched)"}
