"""The samplers' plain-torch noise (below k_qsched.py and batch.py, which both draw with it)."""
import torch


def default_noise_sampler(x, seed=None):
    """The plain-torch noise sampler, used when no other is given: one generator seeded once with `seed`, a randn
    of x's shape per call (the draws of a diffusers scheduler stepping with that seeded generator). Inside
    ComfyUI the nodes pass ComfyUI's own `default_noise_sampler` as `make_noise_sampler` instead, so identity
    schedules draw exactly what the host's native samplers draw (its seeding differs between versions)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device,
                                                 generator=generator)
