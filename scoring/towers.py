"""CLIP image and text towers behind one small interface, built from ScorerWeights.

`ClipTowers.encode_image(pixels)` takes normalised [B, 3, H, W] pixels; `encode_text(tokens)` takes token ids from
`tokenize(prompts)`; both return unnormalised embeddings. `logit_scale` is exp(checkpoint's logit_scale).
"""
import os

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from .checkpoints import ScorerError, ScorerWeights

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipTowers(torch.nn.Module):
    is_resnet = False
    source = None  # what build_towers made it from (weights' SHA-256, architecture): part of the scorer's identity

    def __init__(self, name, image_size, context_length):
        super().__init__()
        self.name, self.image_size, self.context_length = name, image_size, context_length
        self.mean, self.std = OPENAI_MEAN, OPENAI_STD
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)

    def tokenize(self, prompts):
        return self.tokenizer(list(prompts))  # truncates long prompts keeping EOT last, pads with 0

    @property
    def device(self):
        return next(self.parameters()).device


class OpenClipTowers(ClipTowers):
    def __init__(self, model, name):
        image_size = model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        super().__init__(name, image_size, model.context_length)
        self.model = model.eval().requires_grad_(False)
        self.is_resnet = isinstance(model.visual, open_clip.modified_resnet.ModifiedResNet)

    @property
    def logit_scale(self):
        return float(self.model.logit_scale.detach().exp())

    def encode_image(self, pixels, positional_embedding=True):
        if positional_embedding or not self.is_resnet:
            return self.model.encode_image(pixels)
        visual = self.model.visual
        x = visual.stem(pixels)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        return _attention_pool_without_positions(visual.attnpool, x)

    def encode_text(self, tokens):
        return self.model.encode_text(tokens)


def _attention_pool_without_positions(pool, x):
    """CLIP's attention pool minus the positional embedding, as the original CLIP-IQA runs RN CLIPs (any input size)."""
    x = x.flatten(2).permute(2, 0, 1)  # NCHW -> (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    return x[0]


class HFClipTowers(ClipTowers):
    """A transformers CLIPModel; tokenised with open_clip's BPE (the same vocabulary as CLIPTokenizer)."""

    def __init__(self, model, name):
        super().__init__(name, model.config.vision_config.image_size, model.config.text_config.max_position_embeddings)
        self.model = model.eval().requires_grad_(False)

    @property
    def logit_scale(self):
        return float(self.model.logit_scale.detach().exp())

    def encode_image(self, pixels, positional_embedding=True):
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def encode_text(self, tokens):
        pooled = self.model.text_model(input_ids=tokens).pooler_output  # pooled at the EOT token
        return self.model.text_projection(pooled)


def build_towers(weights: ScorerWeights, architecture="auto", quick_gelu=None):
    """Instantiate the towers for `weights`. architecture: an open_clip model name or "auto" (inferred from shapes).

    quick_gelu=None picks QuickGELU for OpenAI files (TorchScript archives, or 'openai'/'quickgelu' in the file name)
    and GELU otherwise (LAION and HPS checkpoints); a wrong activation loads fine but scores silently wrong.
    """
    if weights.layout == "hf_clip":
        towers = HFClipTowers(_hf_model(weights), os.path.basename(weights.path.rstrip("/")))
        towers.source = {"layout": "hf_clip", "weights_sha256": weights.sha256}
        return towers
    not_weights = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # OpenAI/TorchScript extras
    state_dict = {k: v for k, v in weights.state_dict.items() if k.rsplit(".", 1)[-1] not in not_weights}
    if quick_gelu is None:
        lowered = os.path.basename(weights.path).lower()
        quick_gelu = weights.from_openai_archive or "openai" in lowered or "quickgelu" in lowered
    name, config = _model_config(state_dict, weights, architecture)
    try:
        model = CLIP(**config, quick_gelu=bool(quick_gelu))
    except Exception as error:  # a config JSON with wrong or missing values
        raise ScorerError(f"{weights.path}: the {name} config cannot build a CLIP ({type(error).__name__}: "
                          f"{str(error)[:300]})") from error
    hint = "Pass the right open_clip architecture name or a config JSON."
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ScorerError(f"{weights.path} does not fit the {name} architecture: {str(error)[:300]} {hint}") from error
    if missing or unexpected:
        raise ScorerError(f"{weights.path} does not fit the {name} architecture: missing {sorted(missing)[:4]}, "
                          f"unexpected {sorted(unexpected)[:4]}. {hint}")
    towers = OpenClipTowers(model.float(), name)
    towers.source = {"layout": "open_clip", "weights_sha256": weights.sha256, "architecture": name,
                     "config": config, "quick_gelu": bool(quick_gelu)}
    return towers


def _hf_model(weights):
    """A transformers CLIPModel from the config and tensors read by checkpoints.py: transformers reads no file
    itself (so no torch.load without weights_only, whatever its version)."""
    from transformers import CLIPConfig, CLIPModel
    try:
        config = CLIPConfig.from_dict(weights.config)
        return CLIPModel.from_pretrained(None, config=config, state_dict=weights.state_dict, torch_dtype=torch.float32)
    except Exception as error:  # transformers raises many kinds for a config or tensors that do not fit
        raise ScorerError(f"{weights.path} cannot be built as a transformers CLIPModel "
                          f"({type(error).__name__}: {str(error)[:300]})") from error


def _model_config(state_dict, weights, architecture):
    if architecture and architecture != "auto":
        config = open_clip.get_model_config(architecture)
        if config is None:
            raise ScorerError(f"Unknown open_clip architecture {architecture!r}; see open_clip.list_models().")
        return architecture, _plain_config(config)
    if weights.config is not None:
        config = _plain_config(weights.config)
        _check_config_fits(config, infer_config(state_dict), weights.path)   # before any tensor is allocated
        return "config from JSON", config
    inferred = infer_config(state_dict)
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name)
        if config and not name.endswith("-quickgelu") and _same_shapes(config, inferred):
            return name, _plain_config(config)  # a named config also knows head widths, which shapes cannot tell
    return "inferred", inferred


def _check_config_fits(config, inferred, path):
    """A config JSON must describe these weights: a typo in a width would otherwise allocate a model of any size
    before load_state_dict could say it does not fit."""
    checks = [("embed_dim", config.get("embed_dim"), inferred["embed_dim"])]
    for tower in ("vision_cfg", "text_cfg"):
        for key in ("width", "layers", "mlp_ratio", "image_size", "patch_size", "context_length", "vocab_size"):
            if key in config[tower] and key in inferred[tower]:
                want = inferred[tower][key]
                have = config[tower][key]
                have = tuple(have) if isinstance(have, list) else have
                checks.append((f"{tower}.{key}", have, want))
    wrong = [f"{name} {have!r} (the weights have {want!r})" for name, have, want in checks if have != want]
    if wrong:
        raise ScorerError(f"the config JSON next to {path} does not describe its weights: {', '.join(wrong)}")


def _plain_config(config):
    config = {k: v for k, v in config.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}
    if "hf_model_name" in config.get("text_cfg", {}) or "timm_model_name" in config.get("vision_cfg", {}):
        raise ScorerError("Only standard CLIP towers are supported (no timm/HF custom towers).")
    return config


def _same_shapes(config, inferred):
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if "hf_model_name" in text or "timm_model_name" in vision or config.get("embed_dim") != inferred["embed_dim"]:
        return False
    want_vision, want_text = inferred["vision_cfg"], inferred["text_cfg"]
    layers = vision.get("layers")
    layers = tuple(layers) if isinstance(layers, list) else layers
    return (layers == want_vision["layers"] and vision.get("width") == want_vision["width"]
            and vision.get("image_size", 224) == want_vision["image_size"]
            and vision.get("patch_size") == want_vision.get("patch_size")
            and text.get("width", 512) == want_text["width"] and text.get("layers", 12) == want_text["layers"]
            and text.get("context_length", 77) == want_text["context_length"]
            and text.get("vocab_size", 49408) == want_text["vocab_size"])


def infer_config(state_dict):
    """open_clip config from tensor shapes (OpenAI's rule: 64-wide attention heads)."""
    try:
        if "visual.proj" in state_dict:
            width = state_dict["visual.conv1.weight"].shape[0]
            patch = state_dict["visual.conv1.weight"].shape[-1]
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = dict(layers=_count(state_dict, "visual.transformer.resblocks."), width=width, patch_size=patch,
                          image_size=patch * grid,
                          mlp_ratio=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width)
        else:
            layers = tuple(_count(state_dict, f"visual.layer{b}.") for b in (1, 2, 3, 4))
            grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = dict(layers=layers, width=state_dict["visual.layer1.0.conv1.weight"].shape[0],
                          image_size=grid * 32, patch_size=None)
        text_width = state_dict["ln_final.weight"].shape[0]
        text = dict(context_length=state_dict["positional_embedding"].shape[0],
                    vocab_size=state_dict["token_embedding.weight"].shape[0], width=text_width,
                    heads=max(1, text_width // 64), layers=_count(state_dict, "transformer.resblocks."),
                    mlp_ratio=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width)
        return dict(embed_dim=state_dict["text_projection"].shape[1], vision_cfg=vision, text_cfg=text)
    except KeyError as error:
        raise ScorerError(f"Checkpoint lacks {error} for a standard CLIP architecture.") from error


def _count(state_dict, prefix):
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})
