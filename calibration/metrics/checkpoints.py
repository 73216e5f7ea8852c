"""Read scorer weights from local files only and say which layout they are in.

Layouts, detected from the keys rather than the file name:
- "open_clip": a full CLIP state dict with both towers (`visual.*`, `transformer.*`, `token_embedding.weight`,
  `text_projection`, ...), as in LAION/open_clip checkpoints (.safetensors or .bin/.pt), OpenAI's .pt files
  and the HPS v2/v2.1 files (`{"state_dict": ...}`, possibly with a `module.` prefix).
- "hf_clip": a transformers CLIPModel folder (config.json + model.safetensors), e.g. openai/clip-vit-large-patch14.

OpenAI's own .pt files are TorchScript archives: they are read with `torch.jit.load` (TorchScript's own restricted
format, no Python pickle) and only their tensors are kept. Every other .pt/.bin goes through
`torch.load(weights_only=True)`. Nothing is ever downloaded.
"""
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field

import torch

WHERE_TO_PUT = (
    "Put a CLIP checkpoint with both towers into ComfyUI/models/qsched_scorers/: an open_clip file "
    "(e.g. open_clip_model.safetensors of laion/CLIP-ViT-L-14-laion2B-s32B-b82K), an OpenAI file (ViT-L-14.pt, RN50.pt), "
    "a transformers CLIPModel folder (openai/clip-vit-large-patch14 with config.json), or for the preference variant "
    "HPS_v2.1_compressed.pt (xswu/HPSv2 on Hugging Face)."
)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight")


class ScorerError(ValueError):
    """A scorer cannot be built or used; the message names the file or input at fault."""


@dataclass
class ScorerWeights:
    path: str
    layout: str  # "open_clip" or "hf_clip"
    state_dict: dict = field(default_factory=dict, repr=False)  # open_clip layout only
    from_openai_archive: bool = False
    config: dict | None = None  # open_clip model config from a sidecar JSON, if one exists


def read_scorer_weights(path):
    """Load `path` (file or HF folder) and return ScorerWeights, or raise ScorerError saying what is wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ScorerError(f"Scorer weights not found: {path}. {WHERE_TO_PUT}")
    folder = os.path.dirname(path)
    if os.path.isdir(path) or (os.path.basename(path) in HF_WEIGHT_FILES
                               and os.path.isfile(os.path.join(folder, "config.json"))):
        return _read_folder(path if os.path.isdir(path) else folder)  # a transformers folder, picked by its file
    state_dict, from_archive = _read_tensors(path)
    state_dict = _unwrap(state_dict, path)
    _check_open_clip_layout(state_dict, path)
    return ScorerWeights(path, "open_clip", state_dict, from_archive, _sidecar_config(path))


def _read_folder(path):
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("model_type") != "clip":
            raise ScorerError(
                f"{path} is a transformers folder of model_type {config.get('model_type')!r}, not a CLIPModel "
                f"(model_type 'clip', both towers). {WHERE_TO_PUT}")
        return ScorerWeights(path, "hf_clip")
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return read_scorer_weights(os.path.join(path, name))
    raise ScorerError(f"{path} is a folder without config.json or open_clip_model.safetensors. {WHERE_TO_PUT}")


def _read_tensors(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu"), False
        except Exception as error:
            raise ScorerError(f"Cannot read {path} as safetensors ({error}); the file may be truncated.") from error
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's files use it
            return dict(torch.jit.load(path, map_location="cpu").state_dict()), True
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as error:
        raise ScorerError(
            f"Cannot read {path} as a weights-only torch file ({type(error).__name__}: {str(error)[:200]}). "
            "Only tensors are loaded (no pickled code): use a .safetensors file or a plain state dict.") from error


def _is_torchscript_archive(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _unwrap(state_dict, path):
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]  # HPS v2 files and training checkpoints
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ScorerError(f"{path} does not hold a state dict of tensors. {WHERE_TO_PUT}")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _check_open_clip_layout(state_dict, path):
    keys = state_dict.keys()
    if all(k in keys for k in OPEN_CLIP_KEYS) and any(k.startswith("visual.") for k in keys):
        return
    if any(k.startswith("vision_model.") for k in keys) and not any(k.startswith("text_model.") for k in keys):
        raise ScorerError(
            f"{path} holds only a CLIP vision tower (a ComfyUI clip_vision file); CLIPScore needs the text tower too. "
            + WHERE_TO_PUT)
    if any(k.startswith("text_model.") for k in keys):
        raise ScorerError(
            f"{path} is a transformers CLIPModel weight file: point the scorer at its folder (with config.json) instead.")
    sample = ", ".join(sorted(keys)[:5])
    raise ScorerError(f"{path} is not a CLIP checkpoint with both towers (first keys: {sample}). {WHERE_TO_PUT}")


def _sidecar_config(path):
    """An open_clip model config next to the weights: `<file stem>.json` or HF hub's `open_clip_config.json`."""
    candidates = (os.path.splitext(path)[0] + ".json", os.path.join(os.path.dirname(path), "open_clip_config.json"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as f:
                config = json.load(f)
            return config.get("model_cfg", config)
    return None
