"""VP schedule and denoiser wrappers in ComfyUI's EPS convention.

The schedule is Stable Diffusion's (ComfyUI's default ModelSamplingDiscrete: "linear" betas from 0.00085 to 0.012
in sqrt space, 1000 steps), sigma = sqrt((1 - abar) / abar). Latents are VE-scaled (x = x0 + sigma * eps) and the
network sees x / sqrt(sigma^2 + 1), exactly as ComfyUI's EPS.calculate_input. The wrappers return the denoised
D(x, sigma), so the pack's samplers run on them unchanged: `model(x, sigma_batch, labels=...)`.
"""
import torch
import torch.nn as nn

NUM_TIMESTEPS = 1000
LCM_SKIP = 20  # LCM's 50 original timesteps: 19, 39, ..., 999 (ComfyUI's ModelSamplingDiscreteDistilled)


def vp_sigmas(num_timesteps=NUM_TIMESTEPS, linear_start=0.00085, linear_end=0.012):
    """The 1000-entry sigma table (float32, increasing with t)."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


def lcm_timesteps():
    return torch.arange(LCM_SKIP - 1, NUM_TIMESTEPS, LCM_SKIP)


class EpsDenoiser(nn.Module):
    """D(x, sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)), with optional classifier-free guidance."""

    def __init__(self, unet, guidance=1.0, null_label=10):
        super().__init__()
        self.unet = unet
        self.guidance = float(guidance)
        self.null_label = null_label
        self.register_buffer("sigmas", vp_sigmas(), persistent=False)

    def timestep(self, sigma):
        """Fractional timestep by linear interpolation of log sigma (exact on the table's entries)."""
        log_sigmas = self.sigmas.log()
        log_sigma = sigma.float().clamp(self.sigmas[0], self.sigmas[-1]).log()
        high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        low = high - 1
        w = (log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
        return low.float() + w.clamp(0, 1)

    def eps(self, x, sigma, labels):
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        x_in = x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
        t = self.timestep(sigma)
        if self.guidance == 1.0:
            return self.unet(x_in, t, labels)
        null = torch.full_like(labels, self.null_label)
        eps_cond, eps_uncond = self.unet(torch.cat([x_in, x_in]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return eps_uncond + self.guidance * (eps_cond - eps_uncond)

    def forward(self, x, sigma, labels=None, **_ignored):
        if labels is None:
            raise ValueError("digits denoiser needs class labels: pass extra_args={'labels': LongTensor[B]}")
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        return x - sigma[:, None, None, None] * self.eps(x, sigma, labels)


class LCMDenoiser(EpsDenoiser):
    """The few-step student: ComfyUI's LCM boundary condition on top of EPS,
    D = c_skip(t) x + c_out(t) (x - sigma eps), sigma_data 0.5, timestep scaling 10."""

    def forward(self, x, sigma, labels=None, **_ignored):
        if labels is None:
            raise ValueError("digits denoiser needs class labels: pass extra_args={'labels': LongTensor[B]}")
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        x0 = x - sigma[:, None, None, None] * self.eps(x, sigma, labels)
        scaled_t = (self.timestep(sigma) * 10.0)[:, None, None, None]
        c_skip = 0.25 / (scaled_t ** 2 + 0.25)
        c_out = scaled_t / (scaled_t ** 2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x
