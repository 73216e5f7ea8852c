"""Loaders that quantize the diffusion backbone at load time and return a normal ComfyUI MODEL.

The user's BF16/FP16 file is read as usual; Linear/Conv layers of the backbone are then quantized in place
(quant/), their classes extended with packed-weight behaviour on top of ComfyUI's own ops classes, plus
ComfyUI's weight patching protocol (quant_ops.py), so the ModelPatcher still sees comfy.ops layers: offloading /
--lowvram move the packed weights, and a LoRA is applied on the dequantized weight and requantized onto the
layer's existing scales (at load in normal mode, per call in low-VRAM mode); unpatching restores the codes.
Text encoders and VAE are untouched."""
import logging
import os

import comfy.model_management
import comfy.sd
import folder_paths

from ..quant import BACKENDS, LayerPolicy, QuantSpec, quantize_module
from ..quant.backends import DEFAULT_BACKEND
from ..quant.cache import quantize_cached
from ..quant.fp8 import fp8_supported
from ..quant.source import check_source
from .quant_ops import with_comfy_patching

CACHE_FOLDER = "qsched_quant_cache"
SPECS = ["W8A8", "W4A8", "W4A8-g128", "W6A8", "W4A6", "W4A5", "W4A4", "W8A16", "W4A16", "W4A16-g128"]
CATEGORY = "loaders/qsched"

if CACHE_FOLDER not in folder_paths.folder_names_and_paths:
    folder_paths.add_model_folder_path(CACHE_FOLDER, os.path.join(folder_paths.models_dir, CACHE_FOLDER))


def quant_inputs():
    return {
        "quantization": (SPECS, {"default": "W4A8", "tooltip": "W<weight bits>A<activation bits>; -g128: weight "
                                 "scales per group of 128 inputs; A16: weight-only."}),
        "backend": (list(BACKENDS), {"default": DEFAULT_BACKEND, "tooltip": "auto: the fastest path this device "
                                     "has per layer (FP8 GEMMs where 8-bit compute pays on Ada/Hopper, 8/4-bit storage "
                                     "with 16-bit compute elsewhere, simulate on the CPU). simulate: packed weights, "
                                     "exact quantize-dequantize numerics, any width. fp8: W8A8/W4A8 through FP8 "
                                     "matmuls everywhere (Ada/Hopper). comfy_kitchen: W8A8 through ComfyUI's int8 "
                                     "kernels (0.33+). bitsandbytes / torchao: if installed."}),
        "layer_policy": ("STRING", {"default": "", "multiline": True, "tooltip": "Extra rules, e.g. "
                                    "'double_blocks.0.*=keep, *.qkv=W8A8, first_last=off'. Sensitive layers "
                                    "(embeddings, first/last, norms) stay in high precision by default."}),
        "cache": (["off", "on"], {"default": "off", "tooltip": f"on: keep the quantized weights in "
                                  f"models/{CACHE_FOLDER} (keyed by the file's content hash) for fast reloads."}),
    }


def quantize_patcher(patcher, source_path, quantization, backend, layer_policy, cache):
    """Quantize the ModelPatcher's backbone in place; returns the report's summary line."""
    name = os.path.basename(source_path)
    spec = QuantSpec.parse(quantization)
    policy = LayerPolicy.parse(layer_policy)
    device = comfy.model_management.get_torch_device()
    if backend == "fp8" and not fp8_supported(device):
        raise ValueError(f"{name}: backend 'fp8' needs a GPU with FP8 matmuls (compute capability 8.9+), "
                         f"this device is {comfy.model_management.get_torch_device_name(device)}")
    backbone = patcher.model.diffusion_model
    if cache == "on":
        report, status = quantize_cached(backbone, spec, source_path, folder_paths.get_folder_paths(CACHE_FOLDER)[0],
                                         policy, backend, device, compute_device=device)
    else:
        report, status = quantize_module(backbone, spec, policy, backend, device, compute_device=device), "off"
    if report.quantized == 0:
        raise ValueError(f"{name}: no Linear/Conv layer of this backbone was quantized "
                         f"({type(backbone).__name__}, {report.kept} kept by the layer policy)")
    with_comfy_patching(backbone)
    patcher.size = 0
    patcher.model_size()  # ComfyUI's memory planning must see the packed size
    summary = f"Q-Sched quantized {name}: {report.summary()}; cache {status}"
    logging.info(summary)
    print(summary)
    return summary


def _load_error(name, error):
    return ValueError(f"{name}: not a diffusion backbone ComfyUI can load ({error})")


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
        check_source(path)
        try:
            patcher = comfy.sd.load_diffusion_model(path)
        except RuntimeError as error:
            raise _load_error(unet_name, error) from error
        return (patcher, quantize_patcher(patcher, path, quantization, backend, layer_policy, cache))


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
        check_source(path)
        try:
            patcher, clip, vae = comfy.sd.load_checkpoint_guess_config(
                path, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
        except RuntimeError as error:
            raise _load_error(ckpt_name, error) from error
        if patcher is None:
            raise _load_error(ckpt_name, "no diffusion model in the file")
        summary = quantize_patcher(patcher, path, quantization, backend, layer_policy, cache)
        return (patcher, clip, vae, summary)


NODE_CLASS_MAPPINGS = {
    "QSchedQuantizedDiffusionModelLoader": QSchedQuantizedDiffusionModelLoader,
    "QSchedQuantizedCheckpointLoader": QSchedQuantizedCheckpointLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "QSchedQuantizedDiffusionModelLoader": "Load Quantized Diffusion Model (Q-Sched)",
    "QSchedQuantizedCheckpointLoader": "Load Quantized Checkpoint (Q-Sched)",
}
