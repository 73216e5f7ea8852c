"""What differs between the ComfyUI versions the pack runs on (tested: 0.3.64 and 0.33.0), in one place.

Each difference is read off the running ComfyUI (its own functions, classes and fields), not off a version
number, so releases in between get whichever behaviour they have:
- Noise: the Q-Sched samplers draw with ComfyUI's own `default_noise_sampler` (0.33 seeds it with seed + 1 on the
  CPU, 0.3.64 with the seed), so an identity schedule equals the native sampler bit for bit on any version.
- Per-call weight functions (LoRA on an offloaded layer in low-VRAM mode): ComfyUI 0.3.x hands them the layer's
  stored weight value-cast to float, and its LowVramPatch converts through the layer's convert_weight /
  set_weight itself; 0.33 hands them the dequantized float weight and expects a float weight back (with dynamic
  VRAM the LoRA sits in `weight_lowvram_function`, ahead of `weight_function`).
- LoRA arithmetic dtype: 0.33 patches weights in `lora_compute_dtype(device)` (float16 on GPUs that run fp16 well,
  float32 on the CPU), for a LoRA merged at load and for its own layers' per-call patches alike; 0.3.64 in float32.
- Custom sampling: ComfyUI's SamplerCustom node (comfy_extras) is a V1 class in 0.3.64 and a V3 node in 0.33;
  the Q-Sched KSampler samples through it, so what the host reads off a latent and drops from it (0.33:
  `downscale_ratio_*`) flows through without the pack knowing.
- Flux's constructor: 0.33 also takes `txt_ids_dims` (none for FLUX.1, as its model detection sets).
- The V3 progress API (v3_api.py, execution.set_progress): 0.33's synchronous ComfyAPISync has it; in
  0.3.64 ComfyAPISync has no `execution` (its sync stub generator could not read the string annotations), so
  there the same asynchronous method is driven to completion in place (it awaits nothing).
"""
import dataclasses
import functools

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.model_patcher
import torch

make_noise_sampler = comfy.k_diffusion.sampling.default_noise_sampler


def sample_custom_latent(model, noise_seed, cfg, positive, negative, sampler, sigmas, latent):
    """The output LATENT of ComfyUI's own SamplerCustom (noise added) with a SAMPLER and SIGMAS."""
    from comfy_extras.nodes_custom_sampler import SamplerCustom
    arguments = (model, True, noise_seed, cfg, positive, negative, sampler, sigmas, latent)
    if hasattr(SamplerCustom, "define_schema"):   # a V3 node (0.33)
        return SamplerCustom.execute(*arguments)[0]
    return SamplerCustom().sample(*arguments)[0]


def _low_vram_patch_converts_the_stored_weight():
    """True where ComfyUI's LowVramPatch calls the layer's convert function itself (the stored-weight protocol)."""
    converted = []

    def convert(weight, **_):
        converted.append(True)
        return weight

    patch = comfy.model_patcher.LowVramPatch("probe.weight", {"probe.weight": []}, convert, lambda weight, **_: weight)
    patch(torch.zeros(1))
    return bool(converted)


WEIGHT_FUNCTIONS_TAKE_STORED_WEIGHT = _low_vram_patch_converts_the_stored_weight()


def weight_functions(layer, name="weight"):
    """The patches ComfyUI attached to `layer.<name>` for this call, as (functions on the stored weight, functions
    on the float weight), each list in the order ComfyUI applies them."""
    attached = list(getattr(layer, f"{name}_function", ()))
    if WEIGHT_FUNCTIONS_TAKE_STORED_WEIGHT:
        return attached, []
    low_vram = getattr(layer, f"{name}_lowvram_function", None)
    return [], ([] if low_vram is None else [low_vram]) + attached


def lora_compute_dtype(device):
    """The dtype the running ComfyUI does LoRA arithmetic in on `device`; a per-call patch must use it too, or
    requantizing its result rounds differently from the same LoRA merged at load."""
    host = getattr(comfy.model_management, "lora_compute_dtype", None)
    return torch.float32 if host is None else host(device)


def flux_model(dtype=None, device=None, operations=None, **config):
    """ComfyUI's Flux DiT (comfy.ldm.flux.model.Flux) from a FLUX.1 config, with the fields this version needs."""
    from comfy.ldm.flux.model import Flux, FluxParams
    if "txt_ids_dims" in {field.name for field in dataclasses.fields(FluxParams)}:
        config.setdefault("txt_ids_dims", [])
    return Flux(dtype=dtype, device=device, operations=operations, **config)


@functools.cache
def _set_progress_function():
    """ComfyUI's V3 set_progress(value=, max_value=, node_id=), callable from a synchronous node."""
    from .v3_api import ComfyAPI, ComfyAPISync
    execution = getattr(ComfyAPISync(), "execution", None)
    if execution is not None:
        return execution.set_progress
    update = ComfyAPI.Execution().set_progress

    def set_progress(**arguments):
        coroutine = update(**arguments)
        try:
            coroutine.send(None)
        except StopIteration:
            return
        coroutine.close()
        raise RuntimeError("ComfyUI's set_progress waited on something: it cannot run from a synchronous node here")
    return set_progress


def report_progress(value, max_value, node_id):
    """Show `value` of `max_value` on node `node_id`'s progress bar (the V3 API: a progress_state message)."""
    if node_id is not None:
        _set_progress_function()(value=value, max_value=max_value, node_id=str(node_id))
