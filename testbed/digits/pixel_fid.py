"""A second, independent FID for the testbed: Frechet distance on raw 8x8 pixels (64-d), no learned features.

Generated 16x16 samples and the 1,797 real digits at the 16x16 the model was trained on (data.py: the 8x8 scans
upsampled bilinearly) are both brought to 8x8 by 2x2 average pooling, so real digits score 0 against themselves.
(Against the scans' native 8x8 values the resampling alone would cost 2.3: pooling does not undo the bilinear
upsampling.) It shares nothing with the classifier-feature FID except the Frechet formula
(scoring.frechet_distance), so a row that games the classifier's features cannot also game this one.
"""
import torch.nn.functional as F

from .data import load_digits_tensors
from .scoring import frechet_distance, gaussian_stats


def to_pixels(x):
    """[-1, 1] NCHW 16x16 images -> [N, 64] at 8x8 (2x2 average pooling)."""
    return F.avg_pool2d(x.float().clamp(-1, 1), kernel_size=x.shape[-1] // 8).reshape(x.shape[0], -1)


def real_pixels():
    """The 1,797 real digits as [N, 64], pooled from the training resolution like generated samples."""
    return to_pixels(load_digits_tensors()[0])


class PixelFID:
    """FID against the real digits on raw 8x8 pixels."""

    def __init__(self):
        real = real_pixels()
        self.real_count = real.shape[0]
        self.real_stats = gaussian_stats(real)

    def __call__(self, x):
        return frechet_distance(gaussian_stats(to_pixels(x)), self.real_stats)
