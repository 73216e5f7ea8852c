"""Tiny random CLIPs of the real architectures, saved in the layouts users have, for the metrics tests.

No tests here: helpers imported by tests/test_metrics_*.py. Scores of random CLIPs saturate (softmax(100 * cos) is
0 or 1) unless the towers' outputs are pulled together, so the final norms get small weights and a shared bias.
"""
import json
import os

import open_clip
import torch
from safetensors.torch import save_file

TEXT_CFG = dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)


def _squeeze_outputs(model, seed):
    """Small final-norm weights plus one shared bias direction for both towers: cosines near 1 that still vary."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        bias = torch.randn(model.ln_final.bias.shape, generator=generator)
        model.ln_final.weight.fill_(0.15)
        model.ln_final.bias.copy_(bias)
        if hasattr(model.visual, "ln_post"):
            model.visual.ln_post.weight.fill_(0.15)
            model.visual.ln_post.bias.copy_(bias)
            model.visual.proj.copy_(model.text_projection)
        else:
            model.visual.attnpool.c_proj.weight.mul_(0.1)
            model.visual.attnpool.c_proj.bias.copy_(bias @ model.text_projection)
        model.logit_scale.fill_(torch.log(torch.tensor(100.0)))
    return model.eval()


def tiny_vit_clip(seed=0, quick_gelu=False, image_size=32):
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=quick_gelu, text_cfg=TEXT_CFG,
        vision_cfg=dict(layers=2, width=64, patch_size=8, image_size=image_size, head_width=64))
    return _squeeze_outputs(model, seed)


def tiny_rn_clip(seed=0):
    """An RN50-layout CLIP (bottleneck stages + attention pool), OpenAI's QuickGELU text tower."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True, text_cfg=TEXT_CFG,
        vision_cfg=dict(layers=(1, 1, 1, 1), width=32, image_size=64, head_width=64))
    # Like a trained RN, BatchNorm statistics fitted to images and no zero-initialised residual branches:
    # otherwise the random features hardly depend on the image.
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for module in model.visual.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.momentum = None  # cumulative average over the fitting batches
        model.visual.train()
        for _ in range(2):
            model.visual(torch.randn(4, 3, 64, 64, generator=generator))
        model.visual.eval()
        model = _squeeze_outputs(model, seed)
        for tensor in model.state_dict().values():  # OpenAI's files (and piq's loader) hold fp16 weights
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def save_open_clip(model, path):
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


# --- transformers layout, for torchmetrics ------------------------------------------------------------------

def clip_tokenizer():
    """transformers' CLIPTokenizer built from open_clip's BPE file (shipped in the wheel; no download)."""
    from transformers import CLIPTokenizer
    bpe = open_clip.tokenizer.SimpleTokenizer()
    vocab = {k: v for k, v in bpe.encoder.items() if v < 49406}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    merges = [tuple(m) for m in sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def clip_processor(image_size):
    from transformers import CLIPImageProcessor, CLIPProcessor
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                                "width": image_size})
    return CLIPProcessor(image_processor=images, tokenizer=clip_tokenizer())


def _blocks(prefix_from, prefix_to, state, layers, out):
    for i in range(layers):
        src, dst = f"{prefix_from}{i}.", f"{prefix_to}{i}."
        q, k, v = state[src + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = state[src + "attn.in_proj_bias"].chunk(3)
        out.update({dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
                    dst + "self_attn.v_proj.weight": v, dst + "self_attn.q_proj.bias": qb,
                    dst + "self_attn.k_proj.bias": kb, dst + "self_attn.v_proj.bias": vb})
        for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[dst + b + ".weight"] = state[src + a + ".weight"]
            out[dst + b + ".bias"] = state[src + a + ".bias"]


def save_hf_clip(model, folder, quick_gelu=False):
    """The same weights as a transformers CLIPModel folder (config.json, safetensors, tokenizer, processor)."""
    from transformers import CLIPConfig, CLIPModel
    state = model.state_dict()
    image_size = model.visual.image_size[0]
    act = "quick_gelu" if quick_gelu else "gelu"
    config = CLIPConfig(
        projection_dim=32, logit_scale_init_value=float(state["logit_scale"]),
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=77, hidden_act=act,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                           image_size=image_size, patch_size=8, hidden_act=act))
    out = {
        "logit_scale": state["logit_scale"],
        "text_projection.weight": state["text_projection"].t(), "visual_projection.weight": state["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
    }
    _blocks("transformer.resblocks.", "text_model.encoder.layers.", state, 2, out)
    _blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.", state, 2, out)
    hf = CLIPModel(config).eval()
    missing, unexpected = hf.load_state_dict(out, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    os.makedirs(folder, exist_ok=True)
    hf.save_pretrained(folder)
    clip_processor(image_size).save_pretrained(folder)
    return str(folder)


class FeaturesOnly(torch.nn.Module):
    """torchmetrics 1.9 expects get_*_features to return tensors; transformers 5 returns output objects."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


def torchmetrics_model(folder):
    """A `model_name_or_path` callable for torchmetrics that loads the local folder (offline)."""
    from transformers import CLIPModel, CLIPProcessor

    def load():
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        return FeaturesOnly(model), CLIPProcessor.from_pretrained(folder, local_files_only=True)
    return load


def comfy_images(batch=3, height=48, width=40, seed=0):
    """A ComfyUI IMAGE batch [B, H, W, 3] in [0, 1] with some structure (not pure noise)."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width, 1)
    phase = torch.rand(batch, 1, 1, 3, generator=generator) * 6
    gain = 0.2 + 0.8 * torch.rand(batch, 1, 1, 3, generator=generator)
    smooth = gain * (0.5 + 0.4 * torch.sin(6 * xs + 4 * ys + phase))
    return (smooth + 0.1 * torch.rand(batch, height, width, 3, generator=generator)).clamp(0, 1)


def as_uint8_chw(images):
    """The 8-bit image a user would save and feed to reference tools (as ComfyUI's SaveImage writes it)."""
    return (images * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2)


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
