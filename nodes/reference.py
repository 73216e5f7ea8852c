"""The reference objective inside ComfyUI: Q-Sched Calibrate's candidates are compared with the full-precision
model (`reference_model`) sampled from the same noise, prompt, sampler and sigmas with the identity schedule.
The math is in calibration/reference.py; this module only builds the ComfyUI generators for it."""
from ..calibration.pipeline import image_failure
from ..calibration.reference import (ReferenceError, ReferenceOutputs, check_objective, is_reference_objective,
                                     make_reference_evaluate)
from ..comfy_adapter.calibration import TextConditioning, make_generator
from ..samplers import QSchedSchedule, is_flow


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


def decode_images(vae, latents):
    """IMAGE [N, H, W, C] of sampled latents [N, ...], decoded as the calibration generator decodes them."""
    images = vae.decode(latents)
    return images.reshape(-1, *images.shape[-3:]).float()


def make_objective_evaluate(model, reference_model, clip, vae, scorer, *, objective, weight, prompts, failures,
                            steps, **generation):
    """`evaluate(schedule, prompt_indices)` (with `.many`) for a reference objective (calibration.reference)."""
    if not is_reference_objective(objective):
        raise ReferenceError(f"{objective!r} is not a reference objective")
    check_objective(objective, scorer, reference_model is not None, weight)
    check_reference_model(model, reference_model)
    encode = TextConditioning(clip)       # one encoding per prompt, shared by both models (same text encoder)
    generate = make_generator(model, clip, None, prompts=prompts, encode=encode, steps=steps, **generation)
    reference_generate = make_generator(reference_model, clip, None, prompts=prompts, encode=encode, steps=steps,
                                        **generation)
    identity = QSchedSchedule.identity(steps)
    decode = lambda latents: decode_images(vae, latents)   # noqa: E731
    outputs = ReferenceOutputs(lambda indices: reference_generate([(identity, i) for i in indices]), decode,
                               getattr(scorer, "image_features", None))
    return make_reference_evaluate(generate, decode, outputs, objective, scorer, prompts, weight, failures,
                                   image_failure)
