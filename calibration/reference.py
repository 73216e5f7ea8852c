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
JAQ (reference-free, the paper's form) stays the default objective of the calibration.
"""
import math

import torch

from ..samplers import NonFiniteLatentError

REFERENCE_OBJECTIVES = ("reference_latent", "reference_image", "reference_clip", "jaq_reference")
NEEDS_SCORER = ("reference_clip", "jaq_reference")
NEEDS_IMAGES = ("reference_image", "reference_clip", "jaq_reference")
DEFAULT_REFERENCE_WEIGHT = 1.0
_TINY = 1e-12


class ReferenceError(ValueError):
    """A reference calibration that cannot run as asked; the message names the problem."""


def is_reference_objective(objective):
    return objective in REFERENCE_OBJECTIVES


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


def check_objective(objective, scorer=None, reference_available=False, weight=DEFAULT_REFERENCE_WEIGHT):
    """Refuse a reference objective without an FP model, a scorer-based one without a scorer, or a bad weight."""
    if not is_reference_objective(objective):
        return
    if not reference_available:
        raise ReferenceError(f"objective {objective!r} compares with the full-precision model: connect it as "
                             "'reference_model' (or choose 'jaq', which needs no reference)")
    if objective in NEEDS_SCORER and scorer is None:
        raise ReferenceError(f"objective {objective!r} needs a scorer (JAQ or CLIP image features): connect one")
    if not math.isfinite(float(weight)) or float(weight) < 0:
        raise ReferenceError(f"reference weight must be a finite number >= 0, got {weight!r}")


class ReferenceOutputs:
    """FP outputs per calibration prompt, computed on first use and kept: latent, decoded image, CLIP features.

    `sample(index) -> latent` runs the FP model with the identity schedule (same sampler, seed and prompt as the
    candidates); `decode(latent) -> IMAGE`; `embed(images) -> [B, D]` image features."""

    def __init__(self, sample, decode=None, embed=None):
        self._sample, self._decode, self._embed = sample, decode, embed
        self.latents, self.images, self.features = {}, {}, {}

    def latent(self, index):
        if index not in self.latents:
            latent = self._sample(index)
            if not torch.isfinite(latent).all():
                raise ReferenceError(f"the full-precision reference produced NaN/inf for calibration prompt {index}; "
                                     "check the reference model")
            self.latents[index] = latent
        return self.latents[index]

    def image(self, index):
        if index not in self.images:
            self.images[index] = self._decode(self.latent(index))
        return self.images[index]

    def feature(self, index):
        if index not in self.features:
            self.features[index] = self._embed(self.image(index))
        return self.features[index]


def make_reference_evaluate(generate_latent, decode, reference, objective, scorer=None, prompts=None,
                            weight=DEFAULT_REFERENCE_WEIGHT, failures=None, image_failure=None):
    """`evaluate(schedule, prompt_indices) -> list[float]` for run_search with a reference objective.

    generate_latent(schedule, index) -> the quantized model's final latent [1, ...]; decode(latent) -> IMAGE;
    reference: a ReferenceOutputs. A candidate whose sampling fails (NaN latent) or whose image cannot be scored
    (`image_failure(image)` returns a reason) scores NaN, which the search treats as worst; each failure is
    appended to `failures` as a dict naming the schedule, prompt and reason."""
    if not is_reference_objective(objective):
        raise ReferenceError(f"unknown reference objective {objective!r}; choose one of "
                             f"{', '.join(REFERENCE_OBJECTIVES)}")
    failures = [] if failures is None else failures

    def evaluate(schedule, prompt_indices):
        scores = [math.nan] * len(prompt_indices)
        for slot, index in enumerate(prompt_indices):
            try:
                latent = generate_latent(schedule, index)
                reason = None if torch.isfinite(latent).all() else "non-finite latent"
            except NonFiniteLatentError as error:
                reason = str(error)
            image = None
            if reason is None and objective in NEEDS_IMAGES:
                image = decode(latent)
                reason = image_failure(image) if image_failure is not None else None
            if reason:
                failures.append({"schedule": schedule.label, "prompt": index, "reason": reason})
                continue
            with torch.no_grad():
                value = _score_one(objective, latent, image, index, reference, scorer, prompts, weight)
            scores[slot] = float(value.detach())
        return scores

    return evaluate


def _score_one(objective, latent, image, index, reference, scorer, prompts, weight):
    """One calibration prompt's score (a mean if its latent holds several samples)."""
    if objective == "reference_latent":
        return -latent_distance(latent, reference.latent(index)).mean()
    if objective == "reference_image":
        return -image_distance(image, reference.image(index)).mean()
    if objective == "reference_clip":
        return -feature_distance(scorer.image_features(image), reference.feature(index)).mean()
    jaq = scorer.score(image, [prompts[index]]).jaq
    return jaq_with_reference(jaq, latent, reference.latent(index), weight).mean()
