"""ComfyUI IMAGE batches to CLIP input pixels, the way each reference implementation prepares them.

Images are first turned into the 8-bit levels ComfyUI's SaveImage writes (clip(255 * x), truncated), so a score
equals what the reference tool gives on the saved PNG. Then:
- "crop": resize the shortest side to the model's size (bicubic, antialiased), centre crop, normalise:
  transformers' CLIPImageProcessor as torchmetrics' CLIPScore and CLIP-IQA (HF models) use it.
- "native": no resize, normalise only: the original CLIP-IQA on RN CLIPs (attention pool without positions).
- "pad": resize the longest side, zero-pad to a square (black), normalise: HPSv2's preprocessing.
"""
import torch
import torchvision.transforms.v2.functional as tvF
from torchvision.transforms import InterpolationMode

from .checkpoints import ScorerError

MODES = ("crop", "native", "pad")


def check_images(images):
    """Validate a ComfyUI IMAGE [B, H, W, C] in [0, 1]; 1 channel is grey, a 4th (alpha) channel is dropped."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ScorerError(f"Expected a ComfyUI IMAGE tensor [batch, height, width, channels], got {shape}.")
    batch, height, width, channels = images.shape
    if batch == 0 or height == 0 or width == 0:
        raise ScorerError(f"Empty image batch {tuple(images.shape)}.")
    if channels not in (1, 3, 4):
        raise ScorerError(f"Images need 1, 3 or 4 (RGBA) channels last, got shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ScorerError(f"ComfyUI IMAGE tensors are float in [0, 1], got dtype {images.dtype}.")
    if not torch.isfinite(images).all():
        raise ScorerError("Images contain NaN or inf values.")
    if channels == 1:
        images = images.expand(-1, -1, -1, 3)
    return images[..., :3]  # like PIL's RGBA -> RGB conversion, alpha is dropped, not composited


def to_levels(images, device):
    """[B, H, W, 3] float in [0, 1] -> [B, 3, H, W] uint8, as SaveImage writes it."""
    levels = (images.to(device=device, dtype=torch.float32) * 255.0).clamp(0, 255).to(torch.uint8)
    return levels.permute(0, 3, 1, 2).contiguous()


def prepare(levels, mode, size, mean, std):
    if mode == "crop":
        levels = _center_crop(_resize(levels, size, longest=False), size)
    elif mode == "pad":
        levels = _pad_square(_resize(levels, size, longest=True), size)
    elif mode != "native":
        raise ScorerError(f"Unknown preprocessing mode {mode!r}; one of {MODES}.")
    mean = torch.tensor(mean, device=levels.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(std, device=levels.device).view(1, 3, 1, 1) * 255.0
    return (levels.to(torch.float32) - mean) / std


def _resize(levels, size, longest):
    height, width = levels.shape[-2:]
    scale = size / (max(height, width) if longest else min(height, width))
    if longest:
        new_size = [max(1, round(height * scale)), max(1, round(width * scale))]
    else:  # transformers' shortest-edge rule: the short side becomes `size`, the long one is truncated
        new_size = [size, int(size * width / height)] if height <= width else [int(size * height / width), size]
    if new_size == [height, width]:
        return levels
    return tvF.resize(levels, new_size, interpolation=InterpolationMode.BICUBIC, antialias=True)


def _center_crop(levels, size):
    height, width = levels.shape[-2:]
    if height < size or width < size:  # transformers pads small images before cropping
        pad = [(size - width) // 2 if width < size else 0, (size - height) // 2 if height < size else 0,
               (size - width + 1) // 2 if width < size else 0, (size - height + 1) // 2 if height < size else 0]
        levels = tvF.pad(levels, pad, fill=0)
        height, width = levels.shape[-2:]
    top, left = int((height - size) / 2.0), int((width - size) / 2.0)
    return levels[..., top:top + size, left:left + size]


def _pad_square(levels, size):
    height, width = levels.shape[-2:]
    pad_h, pad_w = size - height, size - width
    return tvF.pad(levels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
