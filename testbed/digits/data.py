"""The real data: scikit-learn's bundled handwritten digits (1,797 8x8 scans), upsampled to 16x16 in [-1, 1]."""
import torch
import torch.nn.functional as F

SIZE = 16
NUM_CLASSES = 10


def load_digits_tensors(size=SIZE):
    """Return (images [N,1,size,size] in [-1, 1], labels [N] int64), in sklearn's fixed order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images * 2 - 1, torch.tensor(digits.target, dtype=torch.int64)


def train_test_split(n, test_fraction=0.2, seed=0):
    """Fixed seeded index split (the classifier's held-out accuracy is measured on the test part)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return order[n_test:], order[:n_test]


def to_comfy_image(x):
    """[-1, 1] NCHW (1 channel) -> ComfyUI IMAGE [B,H,W,3] in [0, 1]."""
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).repeat(1, 1, 1, 3)


def from_comfy_image(images):
    """ComfyUI IMAGE [B,H,W,C] in [0, 1] -> [-1, 1] NCHW grey at the testbed's size."""
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE tensor [B,H,W,C], got shape {tuple(images.shape)}")
    x = images.float().mean(dim=3, keepdim=True).permute(0, 3, 1, 2)
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1) * 2 - 1


def class_prompt(label):
    return f"digit {int(label)}"


def parse_class_prompt(prompt):
    """'digit 3', '3' or 'a handwritten 3' -> 3; a clear error otherwise."""
    found = [c for c in str(prompt) if c.isdigit()]
    if len(found) != 1:
        raise ValueError(f"digits prompt must name exactly one digit 0-9, got {prompt!r}")
    return int(found[0])
