"""The testbed's networks: a small class-conditional UNet (EPS prediction) and the small CNN used by the
classifier (TC, FID features) and the quality critic (IQ). Plain Conv2d/Linear layers, so the pack's
quantizer sees the same layer kinds as in a real UNet."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import NUM_CLASSES


def timestep_embedding(t, dim):
    """Sinusoidal embedding of (fractional) timesteps in [0, 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim, groups=8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """eps(x_vp, t, label): three resolutions (16, 8, 4), one ResBlock each way; label NUM_CLASSES = unconditional."""

    def __init__(self, channels=(32, 48, 64), emb_dim=128, num_classes=NUM_CLASSES):
        super().__init__()
        c0, c1, c2 = channels
        self.config = {"channels": list(channels), "emb_dim": emb_dim, "num_classes": num_classes}
        self.time_embed = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(1, c0, 3, padding=1)
        self.down1 = ResBlock(c0, c0, emb_dim)
        self.pool1 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down2 = ResBlock(c0, c1, emb_dim)
        self.pool2 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down3 = ResBlock(c1, c2, emb_dim)
        self.mid = ResBlock(c2, c2, emb_dim)
        self.up3 = ResBlock(c2 + c2, c1, emb_dim)
        self.up2 = ResBlock(c1 + c1, c0, emb_dim)
        self.up1 = ResBlock(c0 + c0, c0, emb_dim)
        self.norm_out = nn.GroupNorm(8, c0)
        self.conv_out = nn.Conv2d(c0, 1, 3, padding=1)

    def forward(self, x, t, labels):
        emb = self.time_embed(timestep_embedding(t, self.conv_in.out_channels)) + self.label_embed(labels)
        h1 = self.down1(self.conv_in(x), emb)
        h2 = self.down2(self.pool1(h1), emb)
        h3 = self.down3(self.pool2(h2), emb)
        h = self.mid(h3, emb)
        h = self.up3(torch.cat([h, h3], 1), emb)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h2], 1), emb)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class DigitsCNN(nn.Module):
    """16x16 grey image in [-1, 1] -> `outputs` logits; `features()` is the 128-d penultimate layer (FID)."""

    def __init__(self, outputs=NUM_CLASSES, width=32, feature_dim=128):
        super().__init__()
        self.config = {"outputs": outputs, "width": width, "feature_dim": feature_dim}
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * w * 16, feature_dim), nn.SiLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, outputs)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.dropout(self.body(x)))
