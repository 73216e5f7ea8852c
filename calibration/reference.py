"""The reference objective: score a candidate schedule by how close the quantized model's outputs are to the
full-precision model's outputs from the same noise and prompt.

A ComfyUI user always has the FP model (the quantized one is made from it at load time), so calibration can use
it instead of a data set. The FP outputs are sampled once per calibration prompt, with the identity schedule, the
same sampler, sigmas, seed (hence the same initial and fresh noise) and conditioning as every candidate. Scores
are "higher is better" like JAQ, so the search code is shared:

- reference_latent: -mean squared difference of the final latents (per prompt); the default reference form.
- reference_image:  -mean squared difference of the decoded images (pixels in [0, 1]).
- reference_clip:   -(1 - cosine similarity) of the scorer's CLIP image embeddings.
- jaq_reference:    JAQ - weight * relative latent error, |z_q - z_fp|^2 / |z_fp|^2: the paper's reference-free
                    score with a penalty for drifting from the FP model (weight 0 = plain JAQ).
- reference_closed_form: no search: the closed-form per-step correction (calibration/closed_form.py), least
                    squares of the FP model's prediction on the quantized one along the corrected trajectory; its
                    winner and the identity are scored as reference_latent.
The calibration's default objective, auto, is reference_closed_form with the FP model and JAQ (reference-free, the
paper's form) without it (calibration/run.py).
"""
import math
from dataclasses import dataclass

import torch

from ..samplers import QSchedSchedule
from .pipeline import generate_checked, image_failure, split_per_request
from .search.evaluator import BatchEvaluator

CLOSED_FORM = "reference_closed_form"
REFERENCE_OBJECTIVES = ("reference_latent", "reference_image", "reference_clip", "jaq_reference", CLOSED_FORM)
SCORER_FREE = ("reference_latent", "reference_image", CLOSED_FORM)   # every other objective scores with the scorer
NEEDS_IMAGES = ("reference_image", "reference_clip", "jaq_reference")
DEFAULT_REFERENCE_WEIGHT = 1.0
_TINY = 1e-12


class ReferenceError(ValueError):
    """A reference calibration that cannot run as asked; the message names the problem."""


def is_reference_objective(objective):
    return objective in REFERENCE_OBJECTIVES


def needs_scorer(objective):
    return objective not in SCORER_FREE


@dataclass(frozen=True)
class ReferenceSampling:
    """What the host supplies for a reference objective: sample(items) -> the calibrated (quantized) model's final
    latents [N, ...] for items [(schedule, prompt_index)], prompt i with its own seed; sample_reference(items) -> the
    full-precision model's, from the same noise, prompt, sampler and sigmas; decode(latents) -> IMAGE
    [N, H, W, C]; trajectory(schedule, step, prompt_indices) -> (x, sigma, D_q, D_fp) at that step of the quantized
    model sampled with `schedule`, both models' predictions there (the closed-form fit; None: not offered)."""
    sample: object
    sample_reference: object
    decode: object
    trajectory: object = None


def _per_sample_mean(tensor):
    return tensor.float().reshape(tensor.shape[0], -1).mean(dim=1)


def latent_distance(candidate, reference):
    """Mean squared difference per sample (dim 0 is the batch); shapes must agree."""
    if candidate.shape != reference.shape:
        raise ReferenceError(f"the candidate's output has shape {tuple(candidate.shape)} but the reference's has "
                             f"{tuple(reference.shape)}: the FP model must produce the same latent as the quantized one")
    return _per_sample_mean((candidate.float() - reference.float()) ** 2)


def relative_latent_error(candidate, reference):
    """|z_q - z_fp|^2 / |z_fp|^2 per sample: unitless, so one penalty weight means the same for any model."""
    return latent_distance(candidate, reference) / _per_sample_mean(reference.float() ** 2).clamp(min=_TINY)


def image_distance(candidate, reference):
    """Mean squared pixel difference per image (ComfyUI IMAGE [B, H, W, C] in [0, 1])."""
    return latent_distance(candidate.clamp(0, 1), reference.clamp(0, 1))


def feature_distance(candidate, reference):
    """1 - cosine similarity per row of two [B, D] embedding batches."""
    return 1.0 - torch.nn.functional.cosine_similarity(candidate.float(), reference.float(), dim=1)


def jaq_with_reference(jaq, candidate, reference, weight):
    """The combined objective: JAQ minus `weight` times the relative latent error."""
    return jaq.float().cpu() - float(weight) * relative_latent_error(candidate, reference).cpu()


class ReferenceOutputs:
    """FP outputs per calibration prompt, computed on first use (missing prompts in one batch) and kept: latent,
    decoded image, CLIP features.

    `sample(indices) -> latents [N, ...]` runs the FP model with the identity schedule (same sampler, seed and
    prompt as the candidates); `decode(latents) -> IMAGE [N, H, W, C]`; `embed(images) -> [N, D]` features."""

    def __init__(self, sample, decode=None, embed=None):
        self._sample, self._decode, self._embed = sample, decode, embed
        self.latents, self.images, self.features = {}, {}, {}

    def _fill(self, store, indices, compute):
        missing = list(dict.fromkeys(i for i in indices if i not in store))
        if missing:
            for index, value in zip(missing, compute(missing)):
                store[index] = value
        return torch.stack([store[i] for i in indices])

    def latent(self, indices):
        def sample(missing):
            latents = self._sample(missing)
            bad = [i for i, latent in zip(missing, latents) if not torch.isfinite(latent).all()]
            if bad:
                raise ReferenceError(f"the full-precision reference produced NaN/inf for calibration prompt(s) "
                                     f"{bad}; check the reference model")
            return latents
        return self._fill(self.latents, indices, sample)

    def image(self, indices):
        return self._fill(self.images, indices, lambda missing: self._decode(self.latent(missing)))

    def feature(self, indices):
        return self._fill(self.features, indices, lambda missing: self._embed(self.image(missing)))


def latent_failure(latent):
    return None if torch.isfinite(latent).all() else "non-finite latent"


def generate_latents(generate, items):
    """generate_checked for a generator of final latents [N, ...], each checked for NaN/inf."""
    return generate_checked(generate, items, latent_failure, "latents")


def make_reference_evaluate(generate, decode, reference, objective, scorer=None, prompts=None,
                            weight=DEFAULT_REFERENCE_WEIGHT, failures=None, image_failure=None):
    """The Evaluator (score / score_many) run_search maximises with a reference objective.

    generate(items) -> the quantized model's final latents [N, ...] for items [(schedule, prompt_index)];
    decode(latents) -> IMAGE [N, H, W, C]; reference: a ReferenceOutputs. A candidate whose sampling fails (NaN
    latent) or whose image cannot be scored (`image_failure(image)` returns a reason) scores NaN, which the search
    treats as worst; each failure is appended to `failures` as a dict naming the schedule, prompt and reason."""
    if not is_reference_objective(objective):
        raise ReferenceError(f"unknown reference objective {objective!r}; choose one of "
                             f"{', '.join(REFERENCE_OBJECTIVES)}")
    failures = [] if failures is None else failures

    def many(requests):
        items = [(schedule, index) for schedule, indices in requests for index in indices]
        generated = generate_latents(generate, items) if items else []
        good = [slot for slot, (latent, _) in enumerate(generated) if latent is not None]
        images = None
        if good and objective in NEEDS_IMAGES:
            images = decode(torch.stack([generated[slot][0] for slot in good]))
            if image_failure is not None:
                reasons = [image_failure(image) for image in images]
                for slot, reason in zip(good, reasons):
                    if reason:
                        generated[slot] = (None, reason)
                images = images[[k for k, reason in enumerate(reasons) if not reason]]
                good = [slot for slot, reason in zip(good, reasons) if not reason]
        for slot, (latent, reason) in enumerate(generated):
            if reason:
                failures.append({"schedule": items[slot][0].label, "prompt": items[slot][1], "reason": reason})
        scores = [math.nan] * len(items)
        if good:
            latents = torch.stack([generated[slot][0] for slot in good])
            with torch.no_grad():
                values = _scores(objective, latents, images, [items[slot][1] for slot in good], reference, scorer,
                                 prompts, weight)
            for slot, value in zip(good, values.detach().float().cpu().tolist()):
                scores[slot] = value
        return split_per_request(scores, requests)

    return BatchEvaluator(many)


def _scores(objective, latents, images, indices, reference, scorer, prompts, weight):
    """One score per sample (dim 0) of a batch of candidates' outputs for calibration prompts `indices`."""
    if objective in ("reference_latent", CLOSED_FORM):
        return -latent_distance(latents, reference.latent(indices))
    if objective == "reference_image":
        return -image_distance(images, reference.image(indices))
    if objective == "reference_clip":
        return -feature_distance(scorer.image_features(images), reference.feature(indices))
    jaq = scorer.score(images, [prompts[i] for i in indices]).jaq
    return jaq_with_reference(jaq, latents, reference.latent(indices), weight)


def make_objective_evaluate(sampling, objective, steps, scorer=None, prompts=None, weight=DEFAULT_REFERENCE_WEIGHT,
                            failures=None):
    """make_reference_evaluate over the host's ReferenceSampling: the FP outputs come from the identity schedule
    (sampled once per prompt, when first needed), the CLIP features from the scorer's image embedding."""
    identity = QSchedSchedule.identity(steps)
    outputs = ReferenceOutputs(lambda indices: sampling.sample_reference([(identity, i) for i in indices]),
                               sampling.decode, getattr(scorer, "image_features", None))
    return make_reference_evaluate(sampling.sample, sampling.decode, outputs, objective, scorer, prompts, weight,
                                   failures, image_failure)
