"""Read scorer weights from local files only and say which layout they are in.

Layouts, detected from the keys rather than the file name:
- "open_clip": a full CLIP state dict with both towers (`visual.*`, `transformer.*`, `token_embedding.weight`,
  `text_projection`, ...), as in LAION/open_clip checkpoints (.safetensors or .bin/.pt), OpenAI's .pt files
  and the HPS v2/v2.1 files (`{"state_dict": ...}`, possibly with a `module.` prefix).
- "hf_clip": a transformers CLIPModel folder (config.json + model.safetensors), e.g. openai/clip-vit-large-patch14.

No code from a file ever runs. OpenAI's own .pt files are TorchScript archives: their tensors are read from
data.pkl by a restricted unpickler (torchscript.py), never through torch.jit.load, which would run the file's
code. Every other .pt/.bin goes through `torch.load(weights_only=True)`, transformers folders included (their
weights are read here, not by transformers). Only regular files are read, and JSON next to the weights must be
small and well-formed. Nothing is ever downloaded.
"""
import hashlib
import os
import stat
from dataclasses import dataclass, field

import torch

from ..folders import SCORERS
from ..safe_files import JSONDocumentError, UnsafeFileError, kind_of, read_json_file
from .torchscript import CONVERT_ONCE, TorchScriptError, is_torchscript_archive, read_torchscript_tensors

WHERE_TO_PUT = (
    f"Put a CLIP checkpoint with both towers into ComfyUI/models/{SCORERS}/: an open_clip file "
    "(e.g. open_clip_model.safetensors of laion/CLIP-ViT-L-14-laion2B-s32B-b82K), an OpenAI file (ViT-L-14.pt, RN50.pt), "
    "a transformers CLIPModel folder (openai/clip-vit-large-patch14 with config.json), or for the preference variant "
    "HPS_v2.1_compressed.pt (xswu/HPSv2 on Hugging Face)."
)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MAX_CONFIG_BYTES = 4 << 20
OPEN_CLIP_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight")


class ScorerError(ValueError):
    """A scorer cannot be built or used; the message names the file or input at fault."""


@dataclass
class ScorerWeights:
    path: str
    layout: str  # "open_clip" or "hf_clip"
    state_dict: dict = field(default_factory=dict, repr=False)
    from_openai_archive: bool = False
    config: dict | None = None  # open_clip: model config from a sidecar JSON, if any; hf_clip: config.json
    sha256: str = ""  # of the content of every file read (weights and config), not of their names


class _Digest:
    """SHA-256 over the content of the files a scorer is built from, in the order they are read."""

    def __init__(self):
        self.hash = hashlib.sha256()

    def add(self, path):
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                self.hash.update(chunk)
        self.hash.update(b"\x00file\x00")

    def hexdigest(self):
        return self.hash.hexdigest()


def _check_regular_file(path, what="Scorer weights"):
    """A FIFO or a link to /dev/zero would block or never end the read: only regular files are read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise ScorerError(f"{what} {path} cannot be read ({error}). {WHERE_TO_PUT}") from error
    if not stat.S_ISREG(mode):
        raise ScorerError(f"{what} {path} is {kind_of(mode)}, not a regular file. {WHERE_TO_PUT}")


def read_scorer_weights(path):
    """Load `path` (file or HF folder) and return ScorerWeights, or raise ScorerError saying what is wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ScorerError(f"Scorer weights not found: {path}. {WHERE_TO_PUT}")
    folder = os.path.dirname(path)
    if os.path.isdir(path) or (os.path.basename(path) in HF_WEIGHT_FILES
                               and os.path.isfile(os.path.join(folder, "config.json"))):
        return _read_folder(path if os.path.isdir(path) else folder)  # a transformers folder, picked by its file
    _check_regular_file(path)
    digest = _Digest()
    digest.add(path)
    state_dict, from_archive = _read_tensors(path)
    state_dict = _unwrap(state_dict, path)
    _check_open_clip_layout(state_dict, path)
    config = _sidecar_config(path, digest)
    return ScorerWeights(path, "open_clip", state_dict, from_archive, config, digest.hexdigest())


def _read_json(path, what):
    _check_regular_file(path, what)
    try:
        return read_json_file(path, MAX_CONFIG_BYTES)
    except (UnsafeFileError, JSONDocumentError, OSError) as error:
        raise ScorerError(f"{what} {path} cannot be used: {error}") from error


def _read_folder(path):
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        config = _read_json(config_file, "transformers config")
        if not isinstance(config, dict) or config.get("model_type") != "clip":
            model_type = config.get("model_type") if isinstance(config, dict) else None
            raise ScorerError(
                f"{path} is a transformers folder of model_type {model_type!r}, not a CLIPModel "
                f"(model_type 'clip', both towers). {WHERE_TO_PUT}")
        digest = _Digest()
        digest.add(config_file)
        state_dict = {}
        for weight_file in _hf_weight_files(path):
            _check_regular_file(weight_file)
            digest.add(weight_file)
            state_dict.update(_read_tensors(weight_file)[0])
        return ScorerWeights(path, "hf_clip", state_dict, config=config, sha256=digest.hexdigest())
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return read_scorer_weights(os.path.join(path, name))
    raise ScorerError(f"{path} is a folder without config.json or open_clip_model.safetensors. {WHERE_TO_PUT}")


def _hf_weight_files(path):
    """model.safetensors (or pytorch_model.bin), or the shards a *.index.json lists: plain names in the folder."""
    for name in HF_WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    for name in HF_INDEX_FILES:
        index_file = os.path.join(path, name)
        if os.path.isfile(index_file):
            index = _read_json(index_file, "weight index")
            shards = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(shards, dict) or not shards or not all(
                    isinstance(shard, str) and shard == os.path.basename(shard) and shard not in (".", "..")
                    for shard in shards.values()):
                raise ScorerError(f"weight index {index_file} does not map weights to file names in its folder")
            return [os.path.join(path, shard) for shard in dict.fromkeys(shards.values())]
    raise ScorerError(f"{path} has config.json but no {' or '.join(HF_WEIGHT_FILES + HF_INDEX_FILES)}. "
                      f"{WHERE_TO_PUT}")


def _read_tensors(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        from ..tensor_files import TensorFileError, check_safetensors
        try:
            check_safetensors(path, "scorer weights")
        except TensorFileError as error:
            raise ScorerError(f"{error}. {WHERE_TO_PUT}") from None
        try:
            return load_file(path, device="cpu"), False
        except Exception as error:
            raise ScorerError(f"Cannot read {path} as safetensors ({error}); the file may be truncated.") from error
    if is_torchscript_archive(path):
        try:
            return read_torchscript_tensors(path), True
        except TorchScriptError as error:
            raise ScorerError(f"{path} is a TorchScript archive that cannot be read as plain tensors: {error} "
                              f"{'' if CONVERT_ONCE in str(error) else CONVERT_ONCE}") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as error:
        raise ScorerError(
            f"Cannot read {path} as a weights-only torch file ({type(error).__name__}: {str(error)[:200]}). "
            "Only tensors are loaded (no pickled code): use a .safetensors file or a plain state dict.") from error


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


def _sidecar_config(path, digest):
    """An open_clip model config next to the weights: `<file stem>.json` or HF hub's `open_clip_config.json`."""
    candidates = (os.path.splitext(path)[0] + ".json", os.path.join(os.path.dirname(path), "open_clip_config.json"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            config = _read_json(candidate, "open_clip config")
            config = config.get("model_cfg", config) if isinstance(config, dict) else config
            if not isinstance(config, dict) or not all(isinstance(config.get(key), dict)
                                                       for key in ("vision_cfg", "text_cfg")):
                raise ScorerError(f"open_clip config {candidate} is not a model config (an object with vision_cfg "
                                  "and text_cfg objects, optionally under model_cfg)")
            digest.add(candidate)
            return config
    return None
