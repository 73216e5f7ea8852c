"""Export node: your 16-bit diffusion model as a W8A8 file in ComfyUI's own int8 format (comfy_quant
int8_tensorwise), which a plain UNETLoader of ComfyUI 0.33+ loads without this pack (quant/export.py)."""
import logging
import os
import re

import folder_paths
from comfy_api.v0_0_2 import io

from ..comfy_adapter.export import comfy_reads_int8, export_comfy_int8
from ..quant import LayerPolicy
from .loaders import check_layer_policy

CATEGORY = "loaders/qsched"
log = logging.getLogger("qsched.export")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")


def file_stem(filename):
    """The file name without .safetensors; a name with a folder or other characters is refused."""
    stem = filename[:-len(".safetensors")] if filename.endswith(".safetensors") else filename
    if not _NAME.match(stem):
        raise ValueError(f"file name {filename!r}: use letters, digits, '.', '_' and '-' only (no folders)")
    return stem


def output_path(filename):
    """models/diffusion_models/<filename>.safetensors; a name with a folder or an existing file is refused."""
    stem = file_stem(filename)
    path = os.path.join(folder_paths.get_folder_paths("diffusion_models")[0], stem + ".safetensors")
    if os.path.exists(path):
        raise ValueError(f"{stem}.safetensors already exists in models/diffusion_models; choose another name")
    return path


class QSchedExportComfyInt8(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedExportComfyInt8", display_name="Export ComfyUI int8 Model (Q-Sched)", category=CATEGORY,
            description=("Quantizes the diffusion model to W8A8 and saves it in ComfyUI's native int8 format: load it "
                         "with the plain Load Diffusion Model node (ComfyUI 0.33+), no Q-Sched needed."),
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="Your FP16/BF16 diffusion model file; it is not changed."),
                io.String.Input("layer_policy", default="", multiline=True,
                                tooltip="Extra rules as in the Q-Sched loaders, e.g. 'double_blocks.0.*=keep'."),
                io.String.Input("filename", default="qsched_w8a8_int8",
                                tooltip="Written to models/diffusion_models/<filename>.safetensors; an existing file "
                                        "is never overwritten."),
            ],
            outputs=[io.String.Output(display_name="summary")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, layer_policy, filename):
        # the name's form only: whether the file exists is checked when the node runs (a queued rerun of a finished
        # export is served from the cache, not refused)
        if filename is not None:
            try:
                file_stem(filename)
            except ValueError as error:
                return str(error)
        return check_layer_policy(layer_policy)

    @classmethod
    def execute(cls, unet_name, layer_policy, filename):
        policy = LayerPolicy.parse(layer_policy)
        path = output_path(filename)
        source = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        layers, report = export_comfy_int8(source, path, policy)
        summary = f"Q-Sched exported {unet_name} as {os.path.basename(path)}: {layers}; " \
                  f"{report.bytes_before / 2 ** 20:.1f} MiB of weights before quantization"
        if not comfy_reads_int8():
            summary += "; this ComfyUI cannot load int8_tensorwise files (ComfyUI 0.33+ can)"
        log.info(summary)
        return io.NodeOutput(summary)


NODES = [QSchedExportComfyInt8]
