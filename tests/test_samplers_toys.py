"""Deterministic toy denoisers shared by the sampler tests (plain torch; no tests of its own).

An EPS toy is a fixed noise predictor eps_hat(u, sigma) on the VP input u = x / sqrt(1 + sigma^2), wrapped the
way ComfyUI wraps a model: it returns D = x - sigma * eps_hat. A flow toy predicts a velocity v and returns
D = x - sigma * v. Both carry `inner_model.inner_model.model_sampling` like ComfyUI's KSamplerX0Inpaint, and
`inner_model.model_patcher.get_model_object("model_sampling")`, where ComfyUI 0.33's samplers read it.
"""
from types import SimpleNamespace

import torch

SHAPE = (2, 4, 6, 6)


def _weights(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 4, generator=g) / 2, torch.randn(4, generator=g) / 4


class ToyModel:
    """Callable like ComfyUI's wrapped model: model(x, sigma_batch, **extra_args) -> denoised. Counts calls."""

    def __init__(self, model_sampling, flow=False, seed=0):
        self.weight, self.bias = _weights(seed)
        self.flow = flow
        self.calls = 0
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=model_sampling),
                                           model_patcher=SimpleNamespace(get_model_object={
                                               "model_sampling": model_sampling}.__getitem__))

    def prediction(self, u, sigma):
        """eps (EPS) or v (flow) predicted from the network input u at noise level sigma (a float)."""
        mixed = torch.einsum("oc,bchw->bohw", self.weight, u) + self.bias[:, None, None]
        return torch.tanh(mixed * (1.0 + 0.05 * torch.log(torch.tensor(sigma)))) + 0.1 * u

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        s = float(sigma[0])
        if self.flow:
            return x - s * self.prediction(x, s)
        return x - s * self.prediction(x / (1.0 + s ** 2) ** 0.5, s)


def initial_noise(seed=123, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class Recorder:
    """Callback that keeps every callback dict."""

    def __init__(self):
        self.steps = []

    def __call__(self, info):
        self.steps.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in info.items()})
