"""Synthetic degradations of real digits, each at a severity s in [0, 1]; the quality critic learns 1 - s."""
import torch
import torch.nn.functional as F


def _blur(x, s):
    sigma = 0.3 + 1.7 * s  # per-image std in pixels
    offsets = torch.arange(-3, 4, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, 7]
    b, _, h, w = x.shape
    rows = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate").reshape(1, b, h, w + 6), kernel[:, None, None, :], groups=b)
    out = F.conv2d(F.pad(rows, (0, 0, 3, 3), mode="replicate"), kernel[:, None, :, None], groups=b)
    return out.reshape(b, 1, h, w)


def _speckle(x, s, g):
    mask = torch.rand(x.shape, generator=g, device=x.device) < 0.25 * s[:, None, None, None]
    values = torch.rand(x.shape, generator=g, device=x.device) * 2 - 1
    return torch.where(mask, values, x)


def _blotches(x, s, g):
    low = torch.randn(x.shape[0], 1, 4, 4, generator=g, device=x.device)
    return x + s[:, None, None, None] * 1.2 * F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)


KINDS = ("noise", "blur", "washout", "ghost", "speckle", "blotches", "saturate")


def degrade(x, severity, kinds, generator):
    """x [-1, 1] NCHW; severity [B] in [0, 1]; kinds [B] indices into KINDS. Returns degraded images in [-1, 1]."""
    s = severity.to(x.dtype)
    s4 = s[:, None, None, None]
    other = x[torch.randperm(x.shape[0], generator=generator, device=x.device)]
    candidates = {
        "noise": x + s4 * 0.8 * torch.randn(x.shape, generator=generator, device=x.device),
        "blur": _blur(x, s),
        "washout": x * (1 - 0.8 * s4) + 0.8 * s4 * x.mean(dim=(2, 3), keepdim=True),
        "ghost": x * (1 - 0.5 * s4) + 0.5 * s4 * other,
        "speckle": _speckle(x, s, generator),
        "blotches": _blotches(x, s, generator),
        "saturate": torch.tanh(x * (1 + 6 * s4) + s4 * 0.8),
    }
    stacked = torch.stack([candidates[k] for k in KINDS])  # [K, B, 1, H, W]
    return stacked[kinds, torch.arange(x.shape[0], device=x.device)].clamp(-1, 1)
