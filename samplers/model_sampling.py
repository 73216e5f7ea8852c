"""Plain-torch stand-ins for ComfyUI's model_sampling objects, for use outside ComfyUI.

A sampler needs three things from a model's sampling object: the 1000-entry sigma table (TCD, few-step
schedules), `noise_scaling(sigma, noise, latent)` (LCM/TCD re-noising, RF ancestral) and whether the model is a
flow (rectified-flow, ComfyUI's CONST) model. Inside ComfyUI the model's own object is used.
"""
import torch

TRAIN_STEPS = 1000


def _reshape_sigma(sigma, ndim):
    return sigma.view(()) if sigma.nelement() == 1 else sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


def discrete_sigma_table(beta_start=0.00085, beta_end=0.012, train_steps=TRAIN_STEPS):
    """SD1.5/SDXL 'scaled_linear' betas -> sigma = sqrt((1 - abar) / abar), as ComfyUI's ModelSamplingDiscrete."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, train_steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


def flow_sigma_table(shift=1.0, train_steps=TRAIN_STEPS):
    """Rectified-flow sigmas t = (i + 1) / train_steps after the SD3/FLUX time shift, as ModelSamplingDiscreteFlow."""
    t = torch.arange(1, train_steps + 1, 1) / train_steps
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def is_flow(model_sampling):
    """True for rectified-flow models: an explicit `is_flow` flag, or ComfyUI's CONST class in the MRO."""
    if model_sampling is None:
        return False
    flag = getattr(model_sampling, "is_flow", None)
    if flag is not None:
        return bool(flag)
    return any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__)


class EPSSampling:
    """Variance-exploding latent x = x0 + sigma * noise (ComfyUI's EPS convention)."""
    is_flow = False

    def __init__(self, sigmas=None):
        self.sigmas = discrete_sigma_table() if sigmas is None else sigmas

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = _reshape_sigma(sigma, noise.ndim)
        noise = noise * (torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else sigma)
        noise += latent_image
        return noise


class FlowSampling:
    """Rectified-flow latent x = (1 - sigma) * x0 + sigma * noise (ComfyUI's CONST convention)."""
    is_flow = True

    def __init__(self, shift=1.0):
        self.sigmas = flow_sigma_table(shift)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = _reshape_sigma(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent_image
