"""Export node: your 16-bit diffusion model as a W8A8 file in ComfyUI's own int8 format (comfy_quant
int8_tensorwise), which a plain UNETLoader of ComfyUI 0.33+ loads without this pack (quant/export.py)."""
import logging
import os

import folder_paths

from ..comfy_adapter.export import comfy_reads_int8, export_comfy_int8
from ..comfy_adapter.v3_api import io
from ..quant import LayerPolicy
from ..quant.export import file_stem
from . import categories
from .loaders import check_layer_policy

log = logging.getLogger("qsched.export")


def output_path(filename):
    """<first diffusion_models folder>/<filename>.safetensors (ComfyUI's default folder for the kind). Refused when
    any diffusion_models folder already has the name: the new file would shadow it, or be shadowed."""
    stem = file_stem(filename)
    name = stem + ".safetensors"
    folders = folder_paths.get_folder_paths("diffusion_models")
    for folder in folders:
        if os.path.lexists(os.path.join(folder, name)):
            raise ValueError(f"{name} already exists in {folder}; choose another name")
    return os.path.join(folders[0], name)


class QSchedExportComfyInt8(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedExportComfyInt8", display_name="Export ComfyUI int8 Model (Q-Sched)",
            category=categories.MODELS,
            description=("Quantizes the diffusion model to W8A8 and saves it in ComfyUI's native int8 format: load it "
                         "with the plain Load Diffusion Model node (ComfyUI 0.33+), no Q-Sched needed."),
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="Your FP16/BF16 diffusion model file; it is not changed."),
                io.String.Input("layer_policy", default="", multiline=True,
                                tooltip="Extra rules as in the Q-Sched loaders, e.g. 'double_blocks.0.*=keep'."),
                io.String.Input("filename", default="qsched_w8a8_int8",
                                tooltip="Written as <filename>.safetensors to the first diffusion_models folder "
                                        "(models/unet in a stock ComfyUI); a name any diffusion_models folder holds "
                                        "is refused, never overwritten."),
            ],
            outputs=[io.String.Output(display_name="summary", tooltip="The file written, its layers and the "
                                      "weight size before quantization.")],
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
