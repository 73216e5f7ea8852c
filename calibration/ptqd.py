"""PTQD-style correction (He et al. 2023, "PTQD: Accurate Post-Training Quantization for Diffusion Models") as a
Q-Sched schedule with offsets, so any Q-Sched sampler can apply it and users can compare it with Q-Sched.

PTQD models the quantized noise prediction at each sampler step as eps_Q = (1 + k) eps_FP + delta: k from a
least-squares fit of eps_Q on eps_FP, delta's mean from the residual, both measured on the same inputs through the
quantized and the full-precision model along the quantized trajectory. The correction
eps = (eps_Q - mean) / (1 + k) is exactly the extended Eq. 4 with c_x = 1, c_eps = 1 / (1 + k) and offset
b = mean / (1 + k). The mean is one number per step (as in PTQD) or one per latent channel (our extension).
PTQD's second part, removing the residual's variance from the noise a stochastic sampler re-injects, is not
applied by the samplers: the fitted variance is reported with each step.
"""
import torch

from ..samplers.k_qsched import to_d
from ..samplers.schedule import QSchedSchedule


def fit_step(eps_fp, eps_q, per_channel=False):
    """(k, mean, residual variance) of eps_q = (1 + k) eps_fp + delta over a batch [B, C, ...] of one step.

    k is one least-squares gain; the mean is a float, or a tuple with one value per channel (dim 1)."""
    if eps_fp.shape != eps_q.shape:
        raise ValueError(f"eps shapes differ: FP {tuple(eps_fp.shape)} vs quantized {tuple(eps_q.shape)}")
    fp, q = eps_fp.double(), eps_q.double()
    flat_fp, flat_q = fp.flatten(), q.flatten()
    k = (flat_fp * flat_q).sum() / (flat_fp * flat_fp).sum() - 1
    residual = q - (1 + k) * fp
    if per_channel:
        channels = residual.transpose(0, 1).reshape(residual.shape[1], -1)
        mean = tuple(channels.mean(dim=1).tolist())
    else:
        mean = residual.flatten().mean().item()
    return {"k": k.item(), "mean": mean, "var": residual.flatten().var().item()}


def ptqd_schedule(fits, sampler=None, label="PTQD-style correction"):
    """The extended Q-Sched schedule applying per-step fits: c_x = 1, c_eps = 1/(1+k), offset = mean/(1+k)."""
    c_eps = [1.0 / (1.0 + fit["k"]) for fit in fits]
    offset = []
    for fit, gain in zip(fits, c_eps):
        mean = fit["mean"]
        offset.append([m * gain for m in mean] if isinstance(mean, (tuple, list)) else [mean * gain])
    return QSchedSchedule.from_lists([1.0] * len(fits), c_eps, sampler=sampler, label=label, offset=offset)


def eps_from_denoised(x, sigma, denoised):
    """(x - D) / sigma (the samplers' to_d), the noise prediction (or velocity) a denoiser's output implies at noise
    level sigma: one number, or one per sample."""
    return to_d(x, torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1), denoised)
