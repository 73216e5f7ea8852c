"""Glue between a generator, a scorer and the search: the Evaluator run_search maximises (`make_evaluate`), the
detection of failed images, and a cheap model fingerprint. No ComfyUI import: the generator is a callable
`generate([(schedule, prompt_index), ...]) -> IMAGE [N, H, W, C]` supplied by the node or the headless command."""
import hashlib
import math

import torch

from ..samplers import NonFiniteLatentError
from .search.evaluator import BatchEvaluator

BLACK_LEVEL = 1.0 / 255.0
OBJECTIVES = ("jaq", "tc", "iq")


def image_failure(image):
    """Why an IMAGE cannot be scored (NaN/inf pixels, all black), or None if it can."""
    if not torch.isfinite(image).all():
        return "non-finite pixels"
    if image.abs().max() < BLACK_LEVEL:
        return "all-black image"
    return None


def generate_checked(generate, items, failure, what="images"):
    """[(output, None) or (None, failure reason)] for items [(schedule, prompt_index)], from the batch generator
    `generate(items) -> [N, ...]`, each output checked by `failure(output) -> reason or None`. A NaN/inf latent
    stops its whole batch (the sampler raises NonFiniteLatentError), so a failed batch is halved until the failing
    samples stand alone: a bad candidate costs its batch mates a rerun, never their scores."""
    try:
        outputs = generate(items)
    except NonFiniteLatentError as error:
        if len(items) == 1:
            return [(None, str(error))]
        half = len(items) // 2
        return (generate_checked(generate, items[:half], failure, what)
                + generate_checked(generate, items[half:], failure, what))
    if len(outputs) != len(items):
        raise ValueError(f"the generator returned {len(outputs)} {what} for {len(items)} requests")
    results = []
    for output in outputs:
        reason = failure(output)
        results.append((None, reason) if reason else (output, None))
    return results


def generate_images(generate, items):
    """generate_checked for a generator of IMAGEs [N, H, W, C], each checked by image_failure."""
    return generate_checked(generate, items, image_failure)


def make_evaluate(generate, scorer, prompts, objective="jaq", failures=None):
    """The Evaluator run_search maximises: `score(schedule, prompt_indices) -> list[float]`, and `score_many(requests)`
    scoring several (schedule, prompt_indices) requests from one generator call. `generate(items) -> IMAGE [N, H, W, C]`
    makes one image per (schedule, prompt_index) item (prompt i always with its own noise), batching as it can.
    Images are scored with the user's objective (an attribute of the scorer's result: 'jaq' by default, never a
    component by accident). Failed images (NaN latent, NaN or black pixels) score NaN, which the search treats as
    worst; each failure is appended to `failures` as a dict naming the schedule, prompt and reason."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    failures = [] if failures is None else failures

    def many(requests):
        items = [(schedule, index) for schedule, indices in requests for index in indices]
        generated = generate_images(generate, items) if items else []
        scores = [math.nan] * len(items)
        good = []
        for slot, ((schedule, index), (image, reason)) in enumerate(zip(items, generated)):
            if reason:
                failures.append({"schedule": schedule.label, "prompt": index, "reason": reason})
            else:
                good.append(slot)
        if good:
            result = scorer.score(torch.stack([generated[slot][0] for slot in good]),
                                  [prompts[items[slot][1]] for slot in good])
            values = getattr(result, objective).detach().float().cpu().tolist()
            for slot, value in zip(good, values):
                scores[slot] = value
        return split_per_request(scores, requests)

    return BatchEvaluator(many)


def split_per_request(scores, requests):
    """The flat per-image scores of requests [(schedule, prompt_indices)] as one list per request."""
    per_request, start = [], 0
    for _, indices in requests:
        per_request.append(scores[start:start + len(indices)])
        start += len(indices)
    return per_request


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
