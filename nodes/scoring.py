"""JAQ scoring nodes: a scorer loader (weights from models/qsched_scorers only, cached) and JAQ Score."""
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import comfy.model_management
import folder_paths

from ..comfy_adapter.scoring import ManagedScorer
from ..comfy_adapter.v3_api import io
from ..folders import SCORERS
from ..scoring import SCORER_OPTIONS, ScorerError, load_scorer
from ..scoring.checkpoints import WHERE_TO_PUT
from . import categories
from .io_types import Scorer

SCORER_FOLDER = SCORERS
SCORER_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin"}

folder_paths.add_model_folder_path(SCORER_FOLDER, os.path.join(folder_paths.models_dir, SCORER_FOLDER))
folder_paths.folder_names_and_paths[SCORER_FOLDER][1].update(SCORER_EXTENSIONS)

_CACHE = {}  # settings + file stamp -> scorer; one entry, so switching scorers frees the previous one
QUICK_GELU = {"auto": None, "quickgelu": True, "gelu": False}
DEVICES = ("auto", "cpu")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def _scorer_files():
    return folder_paths.get_filename_list(SCORER_FOLDER)


def _resolve(name):
    path = folder_paths.get_full_path(SCORER_FOLDER, name) if name else None
    if path is None:
        raise ScorerError(f"Scorer file {name!r} is not in models/{SCORER_FOLDER}. {WHERE_TO_PUT}")
    return path


def _choice(name, value, choices):
    """`value` if it is one of `choices`, else ScorerError naming the input (ComfyUI 0.3.64 does not check a V3
    node's combo values when the prompt is queued)."""
    if value not in choices:
        raise ScorerError(f"{name} is {value!r}: choose one of {', '.join(choices)}")
    return value


def _option_input(option):
    """The node input of a scorer option (scoring/options.py)."""
    if option.number():
        return io.Float.Input(option.name, default=option.default, min=option.minimum, max=option.maximum,
                              step=option.step, tooltip=option.help)
    return io.Combo.Input(option.name, options=list(option.choices), default=option.default, tooltip=option.help)


def _stamp(path):
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


class QSchedScorerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = _scorer_files()
        return io.Schema(
            node_id="QSchedScorerLoader", display_name="Load JAQ Scorer (Q-Sched)", category=categories.SCORING,
            description=("Loads a JAQ scorer (CLIPScore + k * CLIP-IQA, or CLIPScore + k * HPSv2) from files in "
                         f"models/{SCORER_FOLDER}; nothing is downloaded. The model stays loaded across runs until an "
                         "input or the file changes."),
            inputs=[
                io.Combo.Input("checkpoint", options=files, tooltip="CLIP checkpoint (variant clip) or HPS v2/v2.1 "
                               f"file (variant preference), from models/{SCORER_FOLDER}."),
                *(_option_input(option) for option in SCORER_OPTIONS),
                io.Combo.Input("alignment_checkpoint", options=["none"] + files, optional=True,
                               tooltip="CLIP checkpoint for TC in the preference variant."),
                io.Combo.Input("quick_gelu", options=list(QUICK_GELU), optional=True,
                               tooltip="Activation of open_clip-layout files. auto: QuickGELU for OpenAI files "
                                       "(TorchScript .pt or 'openai' in the name), else GELU."),
                io.Combo.Input("device", options=list(DEVICES), optional=True,
                               tooltip="auto: ComfyUI's device (GPU when present), loaded and offloaded by ComfyUI's "
                                       "memory manager like its other models; cpu: stays on the CPU."),
                io.Combo.Input("precision", options=list(PRECISIONS), optional=True,
                               tooltip="fp16 is ~2-5x faster on GPU (ViT-L/14: 0.7 vs 3.7 ms per image on an H100); "
                                       "fp32 is what the parity tests check."),
            ],
            outputs=[Scorer.Output(display_name="scorer", tooltip="The JAQ scorer, for JAQ Score and Q-Sched "
                                   "Calibrate.")],
        )

    @classmethod
    def fingerprint_inputs(cls, checkpoint, alignment_checkpoint="none", **settings):
        # the files' stamps: a checkpoint replaced under the same name is loaded again
        stamps = [_stamp(_resolve(name)) for name in (checkpoint, alignment_checkpoint) if name and name != "none"]
        return str(stamps)

    @classmethod
    def execute(cls, checkpoint, variant, k, tc_transform, k_weights, clip_score_convention, iqa_prompt_pair,
                alignment_checkpoint="none", quick_gelu="auto", device="auto", precision="fp32"):
        path = _resolve(checkpoint)
        tc_path = _resolve(alignment_checkpoint) if alignment_checkpoint not in (None, "none") else None
        managed = _choice("device", device, DEVICES) == "auto"
        torch_device = comfy.model_management.text_encoder_offload_device() if managed else torch.device("cpu")
        settings = dict(variant=variant, tc_checkpoint=tc_path, k=k, tc_transform=tc_transform, k_weights=k_weights,
                        clip_score_convention=clip_score_convention, iqa_pairs=(iqa_prompt_pair,),
                        quick_gelu=QUICK_GELU[_choice("quick_gelu", quick_gelu, QUICK_GELU)], device=torch_device,
                        dtype=PRECISIONS[_choice("precision", precision, PRECISIONS)])
        key = (path, _stamp(path), tc_path, tc_path and _stamp(tc_path), repr(sorted(settings.items(), key=str)),
               managed)
        if key not in _CACHE:
            _CACHE.clear()
            scorer = load_scorer(path, **settings)
            _CACHE[key] = ManagedScorer(scorer) if managed else scorer
        return io.NodeOutput(_CACHE[key])


class QSchedJAQScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedJAQScore", display_name="JAQ Score (Q-Sched)", category=categories.SCORING,
            description=("Scores images with a JAQ scorer: mean JAQ and its components as FLOATs, per-image scores as "
                         "JSON, and optionally the images with their scores written on them."),
            inputs=[
                io.Image.Input("images", tooltip="The images to score (a batch gives one score per image)."),
                Scorer.Input("scorer", tooltip="From Load JAQ Scorer (Q-Sched)."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One line for the whole batch, or one line per image."),
                io.Boolean.Input("annotate", default=False, optional=True, tooltip="Write each image's scores on it."),
            ],
            outputs=[
                io.Float.Output(display_name="jaq", tooltip="Mean JAQ over the batch."),
                io.Float.Output(display_name="tc", tooltip="Mean alignment term (CLIPScore)."),
                io.Float.Output(display_name="iq", tooltip="Mean quality term (CLIP-IQA or HPSv2)."),
                io.String.Output(display_name="scores_json", tooltip="Per-image scores and the formula, JSON."),
                io.Image.Output(display_name="annotated",
                                tooltip="The images, with their scores written on them when annotate is on."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, scorer, prompts, annotate=False):
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        result = scorer.score(images, lines)
        means = [float(values.mean()) for values in (result.jaq, result.tc, result.iq)]
        annotated = _annotate(images, result.rows()) if annotate else images
        summary = f"{scorer.formula}\nmean JAQ {means[0]:.4f} (TC {means[1]:.4f}, IQ {means[2]:.4f})"
        return io.NodeOutput(*means, result.to_json(), annotated, ui={"text": [summary]})


def _annotate(images, rows):
    out = []
    for image, row in zip(images, rows):
        pil = Image.fromarray(np.clip(image[..., :3].cpu().numpy() * 255.0, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        font = ImageFont.load_default(size=max(10, pil.height // 24))
        text = f"JAQ {row['jaq']:.3f}  TC {row['tc']:.3f}  IQ {row['iq']:.3f}"
        box = draw.textbbox((4, 4), text, font=font)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
        draw.text((4, 4), text, fill=(255, 255, 255), font=font)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    return torch.stack(out).to(images.device)


NODES = [QSchedScorerLoader, QSchedJAQScore]
