"""Loaders that quantize the diffusion backbone at load time and return a normal ComfyUI MODEL.

The user's BF16/FP16 file is read as usual; Linear/Conv layers of the backbone are then quantized in place
(quant/), their classes extended with packed-weight behaviour on top of ComfyUI's own ops classes, plus
ComfyUI's weight patching protocol (comfy_adapter/quant_ops.py), so the ModelPatcher still sees comfy.ops layers:
offloading / --lowvram move the packed weights, and a LoRA is applied on the dequantized weight and requantized
onto the layer's existing scales (at load in normal mode, per call in low-VRAM mode); unpatching restores the
codes. Loading and quantizing is comfy_adapter/loading.py, shared with the command line. Text encoders and VAE are
untouched."""
import logging

import folder_paths

from ..comfy_adapter.loading import load_checkpoint, load_diffusion_model, register_cache_folder
from ..comfy_adapter.v3_api import io
from ..quant.options import QUANT_OPTIONS
from ..quant.policy import LayerPolicy
from ..quant.spec import QuantSpecError
from . import categories

log = logging.getLogger("qsched.loaders")

register_cache_folder()


def quant_inputs():
    """The quantization inputs of both loaders, from the options' one definition (shared with the command line)."""
    inputs = []
    for option in QUANT_OPTIONS:
        if option.choices is None:
            inputs.append(io.String.Input(option.name, default=option.default, multiline=True, tooltip=option.help))
        else:
            inputs.append(io.Combo.Input(option.name, options=list(option.choices), default=option.default,
                                         tooltip=option.help, optional=option.optional))
    return inputs


def check_layer_policy(layer_policy):
    """validate_inputs of a layer_policy text: True, or what is wrong with it (linked: checked when it runs)."""
    if layer_policy is None:
        return True
    try:
        LayerPolicy.parse(layer_policy)
    except QuantSpecError as error:
        return f"layer_policy: {error}"
    return True


MODEL_TOOLTIP = "The diffusion model, quantized at load time (the file on disk is unchanged)."
SUMMARY_TOOLTIP = ("The quantization, backend, layers quantized and kept, weight size before and after, cache "
                   "use.")


class QSchedQuantizedDiffusionModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedQuantizedDiffusionModelLoader", display_name="Load Quantized Diffusion Model (Q-Sched)",
            category=categories.MODELS,
            description="UNETLoader that quantizes the diffusion model at load time (one BF16 file, every bit width).",
            inputs=[io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                                   tooltip="Your FP16/BF16 diffusion model file (models/diffusion_models); it stays "
                                           "unchanged on disk."),
                    *quant_inputs()],
            outputs=[io.Model.Output(display_name="model", tooltip=MODEL_TOOLTIP),
                     io.String.Output(display_name="summary", tooltip=SUMMARY_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, layer_policy):
        return check_layer_policy(layer_policy)

    @classmethod
    def execute(cls, unet_name, quantization, backend, layer_policy, cache, attention="sdpa", cuda_graphs="off"):
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        patcher, summary = load_diffusion_model(path, quantization, backend=backend, layer_policy=layer_policy,
                                                cache=cache, attention=attention, cuda_graphs=cuda_graphs)
        log.info(summary)
        return io.NodeOutput(patcher, summary)


class QSchedQuantizedCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedQuantizedCheckpointLoader", display_name="Load Quantized Checkpoint (Q-Sched)",
            category=categories.MODELS,
            description="CheckpointLoaderSimple whose diffusion model is quantized at load time; CLIP and VAE as "
                        "stored.",
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                                   tooltip="Your checkpoint (models/checkpoints); only its diffusion model is "
                                           "quantized."),
                    *quant_inputs()],
            outputs=[io.Model.Output(display_name="model", tooltip=MODEL_TOOLTIP),
                     io.Clip.Output(display_name="clip", tooltip="The checkpoint's text encoder, as stored."),
                     io.Vae.Output(display_name="vae", tooltip="The checkpoint's VAE, as stored."),
                     io.String.Output(display_name="summary", tooltip=SUMMARY_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, layer_policy):
        return check_layer_policy(layer_policy)

    @classmethod
    def execute(cls, ckpt_name, quantization, backend, layer_policy, cache, attention="sdpa", cuda_graphs="off"):
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        patcher, clip, vae, summary = load_checkpoint(path, quantization, backend=backend, layer_policy=layer_policy,
                                                      cache=cache, attention=attention, cuda_graphs=cuda_graphs)
        log.info(summary)
        return io.NodeOutput(patcher, clip, vae, summary)


NODES = [QSchedQuantizedDiffusionModelLoader, QSchedQuantizedCheckpointLoader]
