"""The component scores, each a small object: which towers and preprocessing it needs, and a per-image score.

- CLIPScore, convention "torchmetrics" (default): 100 * max(cos(E_I, E_T), 0) per image, prompt as given.
  (torchmetrics clamps the batch *mean* instead; both agree whenever every cosine is positive, as with real CLIPs.)
  Convention "hessel" (Hessel et al. 2021): 2.5 * max(cos, 0), prompt prefixed with "A photo depicts ".
- CLIP-IQA (Wang et al. 2023): for each antonym pair, softmax(logit_scale * [cos(I, pos), cos(I, neg)])[pos];
  the score is the mean over the selected pairs (one pair, 'quality', by default). logit_scale "model" is the
  checkpoint's exp(logit_scale) as in the original code (100 for OpenAI CLIPs; torchmetrics/piq hard-code 100).
  RN CLIPs see the full-size image through the attention pool without positional embedding (the original);
  ViT CLIPs see the transformers-processor crop (torchmetrics' HF path).
- HPSv2 (Wu et al. 2023): cos(E_I, E_T) of the HPS-fine-tuned ViT-H-14, HPS preprocessing (longest side, zero pad).
"""
import torch

CLIP_IQA_PAIRS = {  # the pairs of the CLIP-IQA paper, names as in torchmetrics
    "quality": ("Good photo.", "Bad photo."),
    "brightness": ("Bright photo.", "Dark photo."),
    "noisiness": ("Clean photo.", "Noisy photo."),
    "colorfullness": ("Colorful photo.", "Dull photo."),
    "sharpness": ("Sharp photo.", "Blurry photo."),
    "contrast": ("High contrast photo.", "Low contrast photo."),
    "complexity": ("Complex photo.", "Simple photo."),
    "natural": ("Natural photo.", "Synthetic photo."),
    "happy": ("Happy photo.", "Sad photo."),
    "scary": ("Scary photo.", "Peaceful photo."),
    "new": ("New photo.", "Old photo."),
    "warm": ("Warm photo.", "Cold photo."),
    "real": ("Real photo.", "Abstract photo."),
    "beautiful": ("Beautiful photo.", "Ugly photo."),
    "lonely": ("Lonely photo.", "Sociable photo."),
    "relaxing": ("Relaxing photo.", "Stressful photo."),
}
CLIP_SCORE_CONVENTIONS = {"torchmetrics": (100.0, ""), "hessel": (2.5, "A photo depicts ")}


def _normalize(features):
    return features / features.norm(dim=-1, keepdim=True)


class TextFeatureCache:
    """Normalised text embeddings per prompt string; calibration scores the same prompts many times."""

    def __init__(self, towers, limit=4096):
        self.towers, self.limit, self.cache = towers, limit, {}

    @torch.no_grad()
    def __call__(self, prompts):
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            if len(self.cache) + len(missing) > self.limit:
                self.cache.clear()
            tokens = self.towers.tokenize(missing).to(self.towers.device)
            features = _normalize(self.towers.encode_text(tokens).float())
            self.cache.update(zip(missing, features))
        device = self.towers.device  # the towers may have moved since a prompt was cached (ComfyUI offloading)
        return torch.stack([self.cache[p].to(device) for p in prompts])


class CLIPScore:
    name = "clip_score"
    uses_prompts = True

    def __init__(self, towers, convention="torchmetrics"):
        if convention not in CLIP_SCORE_CONVENTIONS:
            raise ValueError(f"CLIPScore convention must be one of {sorted(CLIP_SCORE_CONVENTIONS)}, got {convention!r}")
        self.towers, self.convention = towers, convention
        self.weight, self.prefix = CLIP_SCORE_CONVENTIONS[convention]
        self.image_mode = "crop"
        self.text = TextFeatureCache(towers)

    def __call__(self, image_features, prompts):
        text = self.text([self.prefix + p for p in prompts])
        return self.weight * (_normalize(image_features) * text).sum(-1).clamp(min=0)


class CLIPIQA:
    name = "clip_iqa"
    uses_prompts = False

    def __init__(self, towers, pairs=("quality",), logit_scale="model"):
        self.towers = towers
        self.pairs = [_resolve_pair(p) for p in pairs]
        if not self.pairs:
            raise ValueError("CLIP-IQA needs at least one prompt pair.")
        self.logit_scale = towers.logit_scale if logit_scale == "model" else float(logit_scale)
        self.image_mode = "native" if towers.is_resnet else "crop"
        self.positional_embedding = not towers.is_resnet
        anchors = TextFeatureCache(towers)([text for pair in self.pairs for text in pair])
        self.anchors = anchors  # [2P, D]: positive, negative, positive, ...

    def per_pair(self, image_features):
        logits = self.logit_scale * _normalize(image_features) @ self.anchors.to(image_features.device).t()
        return logits.view(logits.shape[0], -1, 2).softmax(-1)[..., 0]  # [B, P]

    def __call__(self, image_features, prompts=None):
        return self.per_pair(image_features).mean(-1)


def _resolve_pair(pair):
    if isinstance(pair, str):
        if pair not in CLIP_IQA_PAIRS:
            raise ValueError(f"Unknown CLIP-IQA prompt pair {pair!r}; one of {sorted(CLIP_IQA_PAIRS)} or a "
                             "(positive, negative) tuple.")
        return CLIP_IQA_PAIRS[pair]
    if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
        raise ValueError(f"A custom CLIP-IQA pair is (positive text, negative text), got {pair!r}.")
    return tuple(pair)


class HPSv2:
    name = "hpsv2"
    uses_prompts = True

    def __init__(self, towers):
        self.towers = towers
        self.image_mode = "pad"
        self.text = TextFeatureCache(towers)

    def __call__(self, image_features, prompts):
        return (_normalize(image_features) * self.text(prompts)).sum(-1)
