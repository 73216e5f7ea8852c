"""PTQD-style correction (He et al. 2023) adapted to the LCM sampler, the paper's second baseline.

PTQD models the quantized noise prediction as eps_Q = (1 + k) eps_FP + delta. Per sampler step, k comes from a
least-squares fit of eps_Q on eps_FP and delta's mean and variance from the residual, measured on a full-precision
calibration set (the same inputs through both models, along the quantized trajectory). Sampling then uses
eps = (eps_Q - mean) / (1 + k) and removes the residual's variance, sigma^2 var / (1 + k)^2, from the noise the
LCM step re-injects (Gaussian assumption), where it can.
"""
import torch

from .diffusion import LCMDenoiser
from .generate import FixedNoise, sampling_sigmas

CALIBRATION_SAMPLES = 256
CALIBRATION_SEED = 777


class PTQDDenoiser(LCMDenoiser):
    """The quantized student with per-step PTQD correction of its eps (steps matched by sigma)."""

    def __init__(self, unet, sigmas, gain, bias, residual_var):
        super().__init__(unet)
        self.step_sigmas, self.gain, self.bias, self.residual_var = sigmas[:-1], gain, bias, residual_var

    def _step(self, sigma):
        return (self.step_sigmas[None, :] - sigma.reshape(-1, 1).float()).abs().argmin(dim=1)

    def eps(self, x, sigma, labels):
        i = self._step(sigma.reshape(-1).expand(x.shape[0]))
        return (super().eps(x, sigma, labels) - self.bias[i, None, None, None]) / (1 + self.gain[i, None, None, None])

    def noise_scale(self, sigma, sigma_next):
        """Factor on the LCM step's fresh noise so its variance drops by the residual's share."""
        i = self._step(sigma.reshape(1))[0]
        removed = sigma ** 2 * self.residual_var[i] / (1 + self.gain[i]) ** 2
        return ((sigma_next ** 2 - removed).clamp(min=0) / sigma_next ** 2) ** 0.5


@torch.no_grad()
def calibrate_ptqd(fp_denoiser, quantized_denoiser, steps, count=CALIBRATION_SAMPLES, seed=CALIBRATION_SEED):
    """Fit (k, mean, var) per step on `count` samples of the quantized LCM trajectory; return a PTQDDenoiser."""
    sigmas = sampling_sigmas(steps)
    labels = torch.arange(count) % 10
    noise = FixedNoise(count, steps, seed)
    x = noise.initial * (1 + sigmas[0] ** 2) ** 0.5
    gain, bias, var = [], [], []
    for i in range(steps):
        sigma = sigmas[i].expand(count)
        eps_fp = fp_denoiser.eps(x, sigma, labels).flatten()
        eps_q = quantized_denoiser.eps(x, sigma, labels).flatten()
        k = (eps_fp * eps_q).sum() / (eps_fp * eps_fp).sum() - 1
        residual = eps_q - (1 + k) * eps_fp
        gain.append(k)
        bias.append(residual.mean())
        var.append(residual.var())
        x = quantized_denoiser(x, sigma, labels=labels)
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise.fresh[i]
    return PTQDDenoiser(quantized_denoiser.unet, sigmas, torch.stack(gain), torch.stack(bias), torch.stack(var)).eval()
