"""Sampling the digits models through the pack's own samplers (samplers.SAMPLERS, few-step sigma schedules).

Noise is fixed by (seed, sample index): every configuration compared at one seed sees the same initial noise and
the same fresh noise at each step, so differences between rows come from the model and the schedule alone.
"""
import torch

from ...samplers import SAMPLERS
from ...samplers.model_sampling import EPSSampling
from ...samplers.sigmas import few_step_sigmas
from .data import SIZE
from .diffusion import vp_sigmas

SUPPORTED_STEPS = (1, 2, 3, 4, 5, 6, 7, 8)


def check_steps(steps):
    if steps not in SUPPORTED_STEPS:
        raise ValueError(f"the digits few-step model was distilled for 1-8 LCM steps; got steps={steps!r}")
    return steps


def sampling_sigmas(steps, kind="lcm"):
    return few_step_sigmas(kind, vp_sigmas(), steps)


class FixedNoise:
    """Initial and per-step noise for N samples, drawn once from `seed`; `sampler_for(rows)` serves a batch."""

    def __init__(self, count, steps, seed, device="cpu"):
        g = torch.Generator().manual_seed(int(seed))
        self.initial = torch.randn(count, 1, SIZE, SIZE, generator=g).to(device)
        self.fresh = torch.randn(max(steps - 1, 1), count, 1, SIZE, SIZE, generator=g).to(device)

    def subset(self, rows):
        """The noise of these sample rows only (calibration evaluates a few pairs at a time)."""
        part = object.__new__(FixedNoise)
        part.initial, part.fresh = self.initial[rows], self.fresh[:, rows]
        return part

    def sampler_for(self, rows, scale=None):
        """A noise_sampler(sigma, sigma_next) returning this batch's step noise in call order, times `scale`."""
        calls = iter(range(self.fresh.shape[0]))

        def noise_sampler(sigma, sigma_next):
            z = self.fresh[next(calls)][rows]
            return z if scale is None else z * scale(sigma, sigma_next)
        return noise_sampler


@torch.no_grad()
def generate(denoiser, labels, steps, seed, schedule=None, sampler="lcm", batch_size=500, noise=None,
             noise_scale=None, sigma_kind="lcm"):
    """Images in [-1, 1] NCHW for `labels` (LongTensor [N]) with `steps` sampler steps; same seed, same noise."""
    sigmas = sampling_sigmas(check_steps(steps) if sampler == "lcm" else steps, sigma_kind)
    device = next(denoiser.parameters()).device
    noise = FixedNoise(len(labels), steps, seed, device) if noise is None else noise
    model_sampling = EPSSampling(vp_sigmas())
    function = SAMPLERS[sampler].function
    out = []
    for start in range(0, len(labels), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(labels)), device=device)
        x = noise.initial[rows] * (1 + sigmas[0] ** 2) ** 0.5  # ComfyUI's max_denoise noise scaling
        out.append(function(denoiser, x, sigmas.to(device), extra_args={"labels": labels[rows.cpu()].to(device)},
                            disable=True, schedule=schedule, noise_sampler=noise.sampler_for(rows, noise_scale),
                            model_sampling=model_sampling))
    return torch.cat(out).cpu()
