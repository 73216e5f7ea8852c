"""Loaders that quantize the diffusion backbone at load time and return a normal ComfyUI MODEL.

The user's BF16/FP16 file is read as usual; Linear/Conv layers of the backbone are then quantized in place
(quant/), their classes extended with packed-weight behaviour on top of ComfyUI's own ops classes, plus
ComfyUI's weight patching protocol (comfy_adapter/quant_ops.py), so the ModelPatcher still sees comfy.ops layers:
offloading / --lowvram move the packed weights, and a LoRA is applied on the dequantized weight and requantized
onto the layer's existing scales (at load in normal mode, per call in low-VRAM mode); unpatching restores the
codes. Loading and quantizing is comfy_adapter/loading.py, shared with the command line. Text encoders and VAE are
untouched."""
import folder_paths

from ..comfy_adapter.loading import load_checkpoint, load_diffusion_model, register_cache_folder
from ..quant.options import QUANT_OPTIONS

CATEGORY = "loaders/qsched"

register_cache_folder()


def quant_inputs():
    """The quantization inputs of both loaders, from the options' one definition (shared with the command line)."""
    inputs = {}
    for option in QUANT_OPTIONS:
        extra = {"multiline": True} if option.choices is None else {}
        kind = "STRING" if option.choices is None else list(option.choices)
        inputs[option.name] = (kind, {"default": option.default, "tooltip": option.help, **extra})
    return inputs


class QSchedQuantizedDiffusionModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list("diffusion_models")
        return {"required": {"unet_name": (files, {"tooltip": "Your FP16/BF16 diffusion model file (models/"
                                                              "diffusion_models); it stays unchanged on disk."}),
                             **quant_inputs()}}

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "summary")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "UNETLoader that quantizes the diffusion model at load time (one BF16 file, every bit width)."

    def load(self, unet_name, quantization, backend, layer_policy, cache):
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        patcher, summary = load_diffusion_model(path, quantization, backend=backend, layer_policy=layer_policy,
                                                cache=cache)
        print(summary)
        return (patcher, summary)


class QSchedQuantizedCheckpointLoader:
    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list("checkpoints")
        return {"required": {"ckpt_name": (files, {"tooltip": "Your checkpoint (models/checkpoints); only its "
                                                              "diffusion model is quantized."}),
                             **quant_inputs()}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "STRING")
    RETURN_NAMES = ("model", "clip", "vae", "summary")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "CheckpointLoaderSimple whose diffusion model is quantized at load time; CLIP and VAE as stored."

    def load(self, ckpt_name, quantization, backend, layer_policy, cache):
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        patcher, clip, vae, summary = load_checkpoint(path, quantization, backend=backend, layer_policy=layer_policy,
                                                      cache=cache)
        print(summary)
        return (patcher, clip, vae, summary)


NODE_CLASS_MAPPINGS = {
    "QSchedQuantizedDiffusionModelLoader": QSchedQuantizedDiffusionModelLoader,
    "QSchedQuantizedCheckpointLoader": QSchedQuantizedCheckpointLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "QSchedQuantizedDiffusionModelLoader": "Load Quantized Diffusion Model (Q-Sched)",
    "QSchedQuantizedCheckpointLoader": "Load Quantized Checkpoint (Q-Sched)",
}
