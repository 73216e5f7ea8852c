"""The reference objectives inside ComfyUI: the calibrated model's candidates are compared with the full-precision
model (`reference_model`) sampled from the same noise, prompt, sampler and sigmas with the identity schedule.
The math is in calibration/reference.py and comfy_adapter.calibration builds the sampling for it; this module checks
that the FP model fits."""
from ..calibration.reference import ReferenceError
from ..samplers import is_flow


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

