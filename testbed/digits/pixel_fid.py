"""A second, independent FID for the testbed: Frechet distance on raw 8x8 pixels (64-d), no learned features.

The real digits are scikit-learn's 8x8 scans as stored (0..16 -> [-1, 1]); generated 16x16 samples are brought to
8x8 by 2x2 average pooling (the testbed upsampled the real scans bilinearly to 16x16, so pooling is the natural way
back). It shares nothing with the classifier-feature FID except the Frechet formula (scoring.frechet_distance), so
a row that games the classifier's features cannot also game this one.
"""
import torch
import torch.nn.functional as F

from .scoring import frechet_distance, gaussian_stats


def real_pixels():
    """The 1,797 real digits as [N, 64] in [-1, 1] at their native 8x8."""
    from sklearn.datasets import load_digits
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0
    return (images * 2 - 1).reshape(images.shape[0], -1)


def to_pixels(x):
    """Generated [-1, 1] NCHW 16x16 samples -> [N, 64] at 8x8 (2x2 average pooling)."""
    return F.avg_pool2d(x.float().clamp(-1, 1), kernel_size=x.shape[-1] // 8).reshape(x.shape[0], -1)


class PixelFID:
    """FID against the real digits on raw 8x8 pixels."""

    def __init__(self):
        real = real_pixels()
        self.real_count = real.shape[0]
        self.real_stats = gaussian_stats(real)

    def __call__(self, x):
        return frechet_distance(gaussian_stats(to_pixels(x)), self.real_stats)
