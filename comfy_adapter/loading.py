"""Loading a checkpoint or diffusion model and quantizing its backbone at load time, shared by the quantized
loader nodes and `python -m qsched calibrate`: the source check, ComfyUI's loaders, quant/ on the backbone and
ComfyUI's weight patching protocol (quant_ops.py) on top, so the result is a normal ComfyUI MODEL. The options
(quantization, backend, layer policy, cache, attention, cuda_graphs) are defined once, in quant/options.py."""
import logging
import os

import comfy.model_management
import comfy.sd
import folder_paths

from ..quant import LayerPolicy, QuantSpec, quantize_module
from ..quant.registry import DEFAULT_BACKEND
from ..quant.cache import quantize_cached
from ..quant.apply import GPTQ_MARK
from ..quant.calibrated import GPTQ_ROUNDING, quantize_calibrated
from ..quant.fp8 import fp8_supported
from ..quant.layers import PackedWeightMixin
from ..quant.smoothing import NAME as SMOOTHING_NAME
from ..quant.options import ATTENTION_CHOICES, CACHE_CHOICES, CACHE_FOLDER, CUDA_GRAPHS_CHOICES
from ..quant.source import check_source
from ..tensor_files import warn_non_finite_weights
from .attention import set_attention
from .cuda_graphs import set_cuda_graphs
from .quant_ops import with_comfy_patching


def register_cache_folder():
    if CACHE_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(CACHE_FOLDER, os.path.join(folder_paths.models_dir, CACHE_FOLDER))


QUANTIZER_ATTRIBUTE = "qsched_quantizer"


def quantizer_of(model):
    """{"spec", "backend"[, "rounding": "GPTQ"[, "smoothing": quant.smoothing.NAME]]} the quantized loaders built a
    ComfyUI MODEL's backbone with (rounding: present for calibrated rounding, absent for round-to-nearest;
    smoothing: present for a smoothed calibrated load), None for any other model."""
    backbone = getattr(getattr(model, "model", None), "diffusion_model", None)
    return getattr(backbone, QUANTIZER_ATTRIBUTE, None)


def quantize_patcher(patcher, source_path, quantization, backend=DEFAULT_BACKEND, layer_policy="", cache="off",
                     attention="sdpa", cuda_graphs="off", calibration=None):
    """Quantize the ModelPatcher's backbone in place and install the attention and CUDA-graph choices; returns the
    summary line. calibration: for calibrated (GPTQ) rounding, calibration(patcher, spec) -> (settings, round_layers)
    (comfy_adapter/calibrated_loading.py); the settings key the cache, round_layers runs on a cache miss only."""
    name = os.path.basename(source_path)
    spec = QuantSpec.parse(quantization)
    policy = LayerPolicy.parse(layer_policy)
    device = comfy.model_management.get_torch_device()
    if backend == "fp8" and not fp8_supported(device):
        raise ValueError(f"{name}: backend 'fp8' needs a GPU with FP8 matmuls (compute capability 8.9+), "
                         f"this device is {comfy.model_management.get_torch_device_name(device)}")
    if cache not in CACHE_CHOICES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_CHOICES)}, got {cache!r}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {attention!r}")
    if cuda_graphs not in CUDA_GRAPHS_CHOICES:
        raise ValueError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS_CHOICES)}, got {cuda_graphs!r}")
    backbone = patcher.model.diffusion_model
    warn_non_finite_weights(backbone, name, logging)
    calibrated = calibration(patcher, spec) if calibration is not None else None
    if cache == "on":
        register_cache_folder()
        report, status = quantize_cached(backbone, spec, source_path, folder_paths.get_folder_paths(CACHE_FOLDER)[0],
                                         policy, backend, device, compute_device=device, calibration=calibrated)
    elif calibrated is not None:
        report, status = quantize_calibrated(backbone, spec, policy, backend, device, calibrated[1],
                                             compute_device=device), "off"
    else:
        report, status = quantize_module(backbone, spec, policy, backend, device, compute_device=device), "off"
    if report.quantized == 0:
        raise ValueError(f"{name}: no Linear/Conv layer of this backbone was quantized "
                         f"({type(backbone).__name__}, {report.kept} kept by the layer policy)")
    with_comfy_patching(backbone)
    quantizer = {"spec": spec.name, "backend": backend}
    if calibrated is not None:
        quantizer["rounding"] = GPTQ_ROUNDING
        if calibrated[0].get("smoothing"):
            quantizer["smoothing"] = calibrated[0]["smoothing"]
    setattr(backbone, QUANTIZER_ATTRIBUTE, quantizer)  # presets record it
    set_attention(patcher, attention)
    set_cuda_graphs(patcher, cuda_graphs)
    patcher.size = 0
    patcher.model_size()  # ComfyUI's memory planning must see the packed size
    rounded = sum(bool(layer.backend) and layer.backend.endswith(GPTQ_MARK) for layer in report.layers)
    smoothed = sum(isinstance(layer, PackedWeightMixin) and layer.smoothing_divisor is not None
                   for layer in backbone.modules())
    summary = f"Q-Sched quantized {name}: {report.summary()}; cache {status}" + (
        f"; GPTQ rounding on {rounded} of {report.quantized} quantized layers" if calibrated is not None else "") + (
        f"; {SMOOTHING_NAME} smoothing on {smoothed} layers" if smoothed else
        "; smoothing off" if calibrated is not None else "") + (
        f"; attention {attention}" if attention != "sdpa" else "") + (
        "; CUDA graphs on" if cuda_graphs == "on" else "")
    logging.info(summary)
    return summary


def _load_error(name, error):
    return ValueError(f"{name}: not a diffusion backbone ComfyUI can load ({error})")


def load_diffusion_model(path, quantization=None, **options):
    """(MODEL, summary) from a diffusion-model file, its backbone quantized unless quantization is None."""
    check_source(path)
    try:
        patcher = comfy.sd.load_diffusion_model(path)
    except RuntimeError as error:
        raise _load_error(os.path.basename(path), error) from error
    summary = quantize_patcher(patcher, path, quantization, **options) if quantization else ""
    return patcher, summary


def load_checkpoint(path, quantization=None, **options):
    """(MODEL, CLIP, VAE, summary) from a checkpoint, its diffusion backbone quantized unless quantization is None;
    text encoders and VAE as stored."""
    check_source(path)
    name = os.path.basename(path)
    try:
        patcher, clip, vae = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=True, output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
    except RuntimeError as error:
        raise _load_error(name, error) from error
    if patcher is None:
        raise _load_error(name, "no diffusion model in the file")
    summary = quantize_patcher(patcher, path, quantization, **options) if quantization else ""
    return patcher, clip, vae, summary
