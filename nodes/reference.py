"""The reference objective inside ComfyUI: Q-Sched Calibrate's candidates are compared with the full-precision
model (`reference_model`) sampled from the same noise, prompt, sampler and sigmas with the identity schedule.
The math is in calibration/reference.py; this module only builds the ComfyUI generators for it."""
from ..calibration.pipeline import image_failure
from ..calibration.reference import (ReferenceError, ReferenceOutputs, check_objective, is_reference_objective,
                                     make_reference_evaluate)
from ..samplers import is_flow
from .calibrate import TextConditioning, decode_image, make_latent_generator


def check_reference_model(model, reference_model):
    """The FP model must sample the same latent space as the quantized one (channels, EPS vs flow)."""
    channels = [m.get_model_object("latent_format").latent_channels for m in (model, reference_model)]
    if channels[0] != channels[1]:
        raise ReferenceError(f"reference_model has {channels[1]}-channel latents but the model has {channels[0]}: "
                             "connect the full-precision version of the same model")
    flows = [is_flow(m.get_model_object("model_sampling")) for m in (model, reference_model)]
    if flows[0] != flows[1]:
        kinds = ["flow" if flow else "EPS" for flow in flows]
        raise ReferenceError(f"reference_model is a {kinds[1]} model but the model is a {kinds[0]} model: connect "
                             "the full-precision version of the same model")


def make_objective_evaluate(model, reference_model, clip, vae, scorer, *, objective, weight, prompts, failures,
                            **generation):
    """`evaluate(schedule, prompt_indices)` for a reference objective (see calibration.reference)."""
    if not is_reference_objective(objective):
        raise ReferenceError(f"{objective!r} is not a reference objective")
    check_objective(objective, scorer, reference_model is not None, weight)
    check_reference_model(model, reference_model)
    encode = TextConditioning(clip)       # one encoding per prompt, shared by both models (same text encoder)
    generate = make_latent_generator(model, clip, prompts=prompts, encode=encode, **generation)
    reference_generate = make_latent_generator(reference_model, clip, prompts=prompts, encode=encode, **generation)
    decode = lambda latent: decode_image(vae, latent)   # noqa: E731
    outputs = ReferenceOutputs(lambda index: reference_generate(None, index), decode,
                               getattr(scorer, "image_features", None))
    return make_reference_evaluate(generate, decode, outputs, objective, scorer, prompts, weight, failures,
                                   image_failure)
