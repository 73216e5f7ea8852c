"""Glue between a generator, a scorer and the search: the `evaluate` run_search calls, failure detection,
the settings that key the run log, and a cheap model fingerprint. No ComfyUI import: the generator is a callable
`generate(schedule, prompt_index) -> IMAGE [1, H, W, C]` supplied by the node or the headless command."""
import hashlib
import math

import torch

from ..samplers import NonFiniteLatentError

BLACK_LEVEL = 1.0 / 255.0
OBJECTIVES = ("jaq", "tc", "iq")


def image_failure(image):
    """Why an IMAGE cannot be scored (NaN/inf pixels, all black), or None if it can."""
    if not torch.isfinite(image).all():
        return "non-finite pixels"
    if image.abs().max() < BLACK_LEVEL:
        return "all-black image"
    return None


def make_evaluate(generate, scorer, prompts, objective="jaq", failures=None):
    """`evaluate(schedule, prompt_indices) -> list[float]` for run_search: one image per prompt, scored with the
    user's objective (an attribute of the scorer's result: 'jaq' by default, never a component by accident).
    Failed images (NaN latent, NaN or black pixels) score NaN, which the search treats as worst; each failure
    is appended to `failures` as a dict naming the schedule, prompt and reason."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    failures = [] if failures is None else failures

    def evaluate(schedule, prompt_indices):
        scores = [math.nan] * len(prompt_indices)
        good, images = [], []
        for slot, index in enumerate(prompt_indices):
            try:
                image = generate(schedule, index)
                reason = image_failure(image)
            except NonFiniteLatentError as error:
                reason = str(error)
            if reason:
                failures.append({"schedule": schedule.label, "prompt": index, "reason": reason})
                continue
            good.append(slot)
            images.append(image)
        if images:
            result = scorer.score(torch.cat(images), [prompts[prompt_indices[slot]] for slot in good])
            values = getattr(result, objective).detach().float().cpu().tolist()
            for slot, value in zip(good, values):
                scores[slot] = value
        return scores

    return evaluate


def calibration_settings(*, model_hash, sampler, scheduler, steps, cfg, width, height, seed, prompts_hash,
                         scorer, objective, quant=None):
    """Everything that decides what a score means; keys the run log (search strategy and budget do not, so a
    rerun with another strategy or a larger budget reuses every image already scored)."""
    return {"model_hash": model_hash, "sampler": sampler, "scheduler": scheduler, "steps": steps, "cfg": cfg,
            "width": width, "height": height, "seed": seed, "prompts_hash": prompts_hash, "scorer": scorer,
            "objective": objective, "quant": quant}


def model_fingerprint(state_dict, samples_per_tensor=256):
    """Cheap content hash of a model: names, shapes, dtypes and a strided sample of every tensor's values.
    Changes when weights or quantization change; costs milliseconds, not a full pass over gigabytes."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            stride = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::stride][:samples_per_tensor].cpu()
            if sample.dtype.is_floating_point or sample.is_complex():
                sample = sample.float()
            digest.update(sample.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
