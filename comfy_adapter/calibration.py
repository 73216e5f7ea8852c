"""The calibration's ComfyUI side, shared by the Q-Sched Calibrate node and `python -m qsched calibrate`: the
model's content hash and family, the preset and run-log folders, the batched generator, and
calibrate(config, model, clip, vae, scorer), which runs calibration.run.run with them.

The generator: `generate([(schedule, prompt_index), ...])` returns one decoded IMAGE per item, sampling as many
items per model call as the batch limit and ComfyUI's free memory allow. Prompt i always gets seed + i, for its
starting noise and for every noise the sampler draws later (ComfyUI's own noise sampler, per sample), so a batched
image equals what Q-Sched KSampler gives for that prompt and seed alone, up to float rounding."""
import math
import os

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

from ..calibration.pipeline import model_fingerprint
from ..calibration.prompts import prompt_seed
from ..calibration.reference import ReferenceSampling
from ..calibration.run import ConfigError, run
from ..folders import PRESETS, RUNS
from ..samplers import SAMPLERS
from ..samplers.batch import one_schedule, seeded_noise_sampler
from .comfy_compat import make_noise_sampler
from .conditioning import TextConditioning, quiet_step_progress
from .loading import quantizer_of
from .ptqd import closed_form_trajectory
from .reference import check_reference_model
from .sampling import HOST_MATH, SCHEDULERS, check_sampler_fits_model, resolve_schedule, scheduler_sigmas

PRESET_FOLDER_NAME = PRESETS
RUNS_FOLDER_NAME = RUNS
# calc_cond_batch runs a batch when memory_required * 1.5 fits in free memory: the same margin here.
MEMORY_MARGIN = 1.5


def user_preset_folder():
    """Where calibrations are saved: <ComfyUI user dir>/qsched_presets (outside the pack, survives updates)."""
    return os.path.join(folder_paths.get_user_directory(), PRESET_FOLDER_NAME)


def run_folder():
    """Where the run logs are: <ComfyUI user dir>/qsched_runs."""
    return os.path.join(folder_paths.get_user_directory(), RUNS_FOLDER_NAME)


def model_hash(model):
    """Content fingerprint of a ComfyUI MODEL's diffusion weights as loaded (quantized storage included).

    Only `diffusion_model.*` counts, and weights that ComfyUI has patched in place (LoRA) are read from the
    patcher's backups, so the hash does not depend on which patches happen to be applied at the moment
    (ModelSamplingDiscrete swaps `model_sampling` buffers in place, for one)."""
    weights = {}
    for name, tensor in model.model.state_dict().items():
        if name.startswith("diffusion_model."):
            backup = model.backup.get(name)
            weights[name] = tensor if backup is None else backup.weight
    return model_fingerprint(weights)


def describe_model(model):
    config = getattr(model.model, "model_config", None)
    return type(config).__name__ if config is not None else type(model.model).__name__


def calibrate(config, model, clip, vae, scorer, *, reference_model=None, preset_folder=None, runs_folder=None,
              model_name="", scorer_name=None, scorer_k=None, progress=None, should_stop=None, on_candidate=None):
    """Calibrate `model` (a ComfyUI MODEL) with `config` (calibration.run.CalibrationConfig) against
    `reference_model`, the full-precision model, when given: a reference objective compares with its outputs, a
    reference-free one runs the FP control on it; objective auto is the closed form with it, jaq without. Returns
    calibration.run.CalibrationRun."""
    config = config.resolved(reference_model is not None)
    if config.scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler is {config.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    config.check_before_run(reference=reference_model is not None, scorer=scorer is not None)
    if reference_model is not None:
        check_reference_model(model, reference_model)
    # One encoding per prompt, shared by every generator (the FP model uses the same text encoder).
    generation = dict(sampler_name=config.sampler_name, scheduler=config.scheduler, steps=config.steps,
                      cfg=config.cfg, seed=config.seed, width=config.width, height=config.height,
                      prompts=config.prompt_list(), max_batch=config.batch_size, encode=TextConditioning(clip))
    generate = make_generator(model, clip, vae, **generation)
    fp_control = reference = reference_hash = None
    if config.needs_reference:
        reference = ReferenceSampling(sample=make_generator(model, clip, None, **generation),
                                      sample_reference=make_generator(reference_model, clip, None, **generation),
                                      decode=lambda latents: decode_images(vae, latents),
                                      trajectory=closed_form_trajectory(model, reference_model, clip, config,
                                                                        generation["encode"]))
        reference_hash = model_hash(reference_model)
    elif reference_model is not None:
        fp_control = make_generator(reference_model, clip, vae, **generation)
    return run(config, generate, scorer, model_hash=model_hash(model), family=describe_model(model),
               preset_folder=preset_folder or user_preset_folder(), runs_folder=runs_folder or run_folder(),
               generate_reference=fp_control, reference=reference, reference_hash=reference_hash,
               latent_channels=model.get_model_object("latent_format").latent_channels, model_name=model_name,
               scorer_name=scorer_name, scorer_k=scorer_k, progress=progress, should_stop=should_stop,
               on_candidate=on_candidate, quantizer=quantizer_of(model))


def _extra_signature(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape[1:]), value.dtype) if value.shape[:1] == (1,) else ("object", id(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return ("value", value)
    return ("object", id(value))


def conditioning_signature(conditioning):
    """Conditionings with equal signatures can share a batch: same entries, same tensor shapes (a long prompt's
    extra 77-token chunks make another shape), equal non-tensor options."""
    return tuple((tuple(tensor.shape[1:]), tensor.dtype,
                  tuple(sorted((key, _extra_signature(value)) for key, value in extras.items())))
                 for tensor, extras in conditioning)


def stack_conditioning(conditionings):
    """One conditioning for a batch whose sample b is conditioned on conditionings[b] (equal signatures)."""
    stacked = []
    for entry, (tensor, extras) in enumerate(conditionings[0]):
        merged = {}
        for key, value in extras.items():
            if isinstance(value, torch.Tensor) and value.shape[:1] == (1,):
                value = torch.cat([c[entry][1][key] for c in conditionings])
            merged[key] = value
        stacked.append([torch.cat([c[entry][0] for c in conditionings]), merged])
    return stacked


def free_memory(device):
    """The memory the calibration's batches may fill on `device`: on a GPU what ComfyUI reports free (memory it
    manages); on the CPU (and MPS, which shares it) the system's total, because its available memory moves with
    every other process on the machine, and batch sizes that follow it would make the scores' float rounding, and
    with it the search's pick, depend on the machine's load."""
    mm = comfy.model_management
    if getattr(device, "type", device) in ("cpu", "mps"):
        return mm.get_total_memory(device)
    return mm.get_free_memory(device)


def memory_batch_limit(model, latent_shape, cfg):
    """Most samples one model call can take in the memory ComfyUI reports free, after the weights still to
    load and its minimum inference reserve (cond and uncond both run when cfg != 1)."""
    mm = comfy.model_management
    calls = 1 if math.isclose(cfg, 1.0) else 2
    per_sample = model.model.memory_required([calls, *latent_shape]) * MEMORY_MARGIN
    free = free_memory(model.load_device) - (model.model_size() - model.loaded_size())
    free -= mm.minimum_inference_memory()
    return max(1, int(free // max(per_sample, 1)))


def decode_images(vae, latents):
    """IMAGE [N, H, W, C] of sampled latents [N, ...]."""
    images = vae.decode(latents)
    return images.reshape(-1, *images.shape[-3:]).float()


def make_generator(model, clip, vae, *, sampler_name, scheduler, steps, cfg, seed, width, height, prompts,
                   negative_prompt="", max_batch=1, sampler_options=None, encode=None):
    """generate(items) -> IMAGE [N, H, W, C] for items [(schedule, prompt_index)], at most `max_batch` samples
    (and what free memory allows) per model call. Raises NonFiniteLatentError if a latent of a batch fails.
    With vae=None it returns the sampled LATENTs [N, C, h, w] instead (the reference objectives compare them);
    `encode` shares one prompt-encoding cache between generators."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    check_sampler_fits_model(sampler_name, model)
    encode = encode or TextConditioning(clip)
    channels = model.get_model_object("latent_format").latent_channels
    latent_shape = (channels, height // 8, width // 8)
    sigmas = scheduler_sigmas(model, scheduler, steps)

    def sample(schedules, seeds, positive):
        latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros([len(seeds), *latent_shape]))
        noise = torch.cat([comfy.sample.prepare_noise(latent[:1], s) for s in seeds])
        schedule = one_schedule(resolve_schedule(s, steps, sampler_name) for s in schedules)
        sampler = comfy.samplers.KSAMPLER(_with_seeds(SAMPLERS[sampler_name].function, seeds, make_noise_sampler),
                                          extra_options={"schedule": schedule, **HOST_MATH, **(sampler_options or {})})
        samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, encode(negative_prompt),
                                             latent, callback=_interrupt_check, disable_pbar=True, seed=seeds[0])
        return samples if vae is None else decode_images(vae, samples)

    def generate(items):
        items = list(items)
        conditioning = [encode(prompts[index]) for _, index in items]
        groups = {}
        for slot, cond in enumerate(conditioning):
            groups.setdefault(conditioning_signature(cond), []).append(slot)
        limit = min(max_batch, memory_batch_limit(model, latent_shape, cfg))
        images = [None] * len(items)
        with quiet_step_progress():
            for slots in groups.values():
                for start in range(0, len(slots), limit):
                    chunk = slots[start:start + limit]
                    out = sample([items[s][0] for s in chunk], [prompt_seed(seed, items[s][1]) for s in chunk],
                                 stack_conditioning([conditioning[s] for s in chunk]))
                    for slot, image in zip(chunk, out):
                        images[slot] = image
        return torch.stack(images)

    return generate


def _with_seeds(function, seeds, make_noise_sampler):
    """The sampler function with sample b's fresh noise drawn from its own seed, by ComfyUI's noise sampler (what
    the sampler draws for it at batch 1)."""
    def sample(model, x, sigmas, **options):
        return function(model, x, sigmas, noise_sampler=seeded_noise_sampler(x, seeds, make_noise_sampler), **options)
    return sample


def _interrupt_check(step, denoised, x, total_steps):
    comfy.model_management.throw_exception_if_processing_interrupted()
