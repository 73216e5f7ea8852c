"""JAQ: the Joint Alignment-Quality score Q-Sched tunes its coefficients with (higher is better).

    JAQ = f(TC) + k * IQ     (k_weights="iq", the default)      or      k * f(TC) + IQ     (k_weights="tc")

with f = identity (default) or log. Defaults and their sources:
- The paper (arXiv 2509.01624, Eq. 5) writes JAQ = TC + k * IQ with k = 2: the defaults here.
- The official code (enyac-group/q-sched, CLIP variant) ranks by log(CLIPScore) + 2 * CLIP-IQA:
  tc_transform="log".
- The paper's Table 3 values reproduce as HPSv2 + 2 * AQ-Map, i.e. k on the alignment term: k_weights="tc".
Variants: "clip" (TC = CLIPScore, IQ = CLIP-IQA, one CLIP checkpoint) and "preference" (IQ = HPSv2 from the HPS
file, TC = CLIPScore from a separate CLIP checkpoint: AQ-Map is not built, see the README).
Note the scales: torchmetrics CLIPScore is ~20-35 for real CLIPs while CLIP-IQA and HPSv2 are below 1, so with the
paper's identity form the alignment term dominates; log or the Hessel convention (2.5 * cos) balance them.
"""
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import torch

from .checkpoints import ScorerError, read_scorer_weights
from .options import DEFAULT_K, K_WEIGHTS, OPTION, TC_TRANSFORMS, VARIANTS
from .preprocess import check_images, prepare, to_levels
from .scores import CLIPIQA, HPSv2, CLIPScore
LOG_FLOOR = 1e-6  # log(0) would make a non-aligned image -inf; it becomes log(1e-6) instead


@dataclass(frozen=True)
class JAQOptions:
    k: float = DEFAULT_K
    tc_transform: str = OPTION["tc_transform"].default
    k_weights: str = OPTION["k_weights"].default

    def __post_init__(self):
        if self.tc_transform not in TC_TRANSFORMS:
            raise ScorerError(f"tc_transform must be one of {TC_TRANSFORMS}, got {self.tc_transform!r}.")
        if self.k_weights not in K_WEIGHTS:
            raise ScorerError(f"k_weights must be one of {K_WEIGHTS}, got {self.k_weights!r}.")
        if not math.isfinite(self.k):
            raise ScorerError(f"k must be a finite number, got {self.k!r}.")

    def combine(self, tc, iq):
        tc = tc.clamp(min=LOG_FLOOR).log() if self.tc_transform == "log" else tc
        return tc + self.k * iq if self.k_weights == "iq" else self.k * tc + iq

    def formula(self, tc_name, iq_name):
        tc = f"log({tc_name})" if self.tc_transform == "log" else tc_name
        return f"{tc} + {self.k:g} * {iq_name}" if self.k_weights == "iq" else f"{self.k:g} * {tc} + {iq_name}"


@dataclass
class ScoreResult:
    """Per-image scores (1-D float tensors on the CPU) and the formula that combined them."""
    jaq: torch.Tensor
    tc: torch.Tensor
    iq: torch.Tensor
    prompts: list
    formula: str
    components: dict = field(default_factory=dict)  # e.g. per-pair CLIP-IQA values

    def rows(self):
        rows = []
        for i in range(len(self.jaq)):
            row = {"index": i, "prompt": self.prompts[i], "jaq": float(self.jaq[i]), "tc": float(self.tc[i]),
                   "iq": float(self.iq[i])}
            row.update({name: float(values[i]) for name, values in self.components.items()})
            rows.append(row)
        return rows

    def to_json(self):
        summary = {"formula": self.formula, "mean_jaq": float(self.jaq.mean()), "mean_tc": float(self.tc.mean()),
                   "mean_iq": float(self.iq.mean())}
        return json.dumps({**summary, "images": self.rows()}, indent=1)


class JAQScorer:
    """Scores ComfyUI IMAGE batches; built by `load_scorer`. Models stay loaded; text embeddings are cached."""

    def __init__(self, tc_metric, iq_metric, options=JAQOptions(), variant="clip", batch_size=16, label=""):
        self.tc_metric, self.iq_metric, self.options = tc_metric, iq_metric, options
        self.variant, self.batch_size, self.label = variant, batch_size, label
        self.formula = options.formula(_display(tc_metric), _display(iq_metric))

    @torch.no_grad()
    def score(self, images, prompts):
        images = check_images(images)
        prompts = _expand_prompts(prompts, images.shape[0])
        parts = [self._score_chunk(images[i:i + self.batch_size], prompts[i:i + self.batch_size])
                 for i in range(0, images.shape[0], self.batch_size)]
        tc, iq = (torch.cat([p[j] for p in parts]) for j in (0, 1))
        components = {}
        if isinstance(self.iq_metric, CLIPIQA) and len(self.iq_metric.pairs) > 1:
            per_pair = torch.cat([p[2] for p in parts])
            components = {f"clip_iqa[{pos}|{neg}]": per_pair[:, j] for j, (pos, neg) in enumerate(self.iq_metric.pairs)}
        return ScoreResult(self.options.combine(tc, iq), tc, iq, prompts, self.formula, components)

    def _score_chunk(self, images, prompts):
        features = {}
        for metric in (self.tc_metric, self.iq_metric):
            key = (id(metric.towers), metric.image_mode)
            if key not in features:
                towers = metric.towers
                pixels = prepare(to_levels(images, towers.device), metric.image_mode, towers.image_size,
                                 towers.mean, towers.std)
                dtype = next(towers.parameters()).dtype
                features[key] = towers.encode_image(pixels.to(dtype), metric.image_mode != "native").float()
        tc = self.tc_metric(features[(id(self.tc_metric.towers), self.tc_metric.image_mode)], prompts)
        iq_features = features[(id(self.iq_metric.towers), self.iq_metric.image_mode)]
        iq = self.iq_metric(iq_features, prompts)
        per_pair = self.iq_metric.per_pair(iq_features) if isinstance(self.iq_metric, CLIPIQA) else None
        return tc.cpu(), iq.cpu(), None if per_pair is None else per_pair.cpu()

    @torch.no_grad()
    def image_features(self, images):
        """CLIP image embeddings [B, D] (float, CPU) of the alignment metric's towers, as CLIPScore sees the
        images; the reference_clip calibration objective compares them with the FP model's."""
        images = check_images(images)
        towers, mode = self.tc_metric.towers, self.tc_metric.image_mode
        pixels = prepare(to_levels(images, towers.device), mode, towers.image_size, towers.mean, towers.std)
        return towers.encode_image(pixels.to(next(towers.parameters()).dtype), mode != "native").float().cpu()

    def describe(self):
        return f"JAQ ({self.variant}) = {self.formula}" + (f" [{self.label}]" if self.label else "")

    def identity(self):
        """Everything that decides this scorer's numbers, for keying stored scores (the calibration run log):
        options, each metric's settings, and the content of the weights its towers hold. Never a file name: a
        changed file under the same name is another scorer, the same file under another name is not."""
        return {"variant": self.variant, "formula": self.formula, "options": dataclasses.asdict(self.options),
                "tc": _metric_identity(self.tc_metric), "iq": _metric_identity(self.iq_metric)}


def _metric_identity(metric):
    towers = metric.towers
    settings = {key: getattr(metric, key) for key in ("name", "convention", "pairs", "logit_scale", "image_mode")
                if hasattr(metric, key)}
    return {**settings, "dtype": str(next(towers.parameters()).dtype),
            "towers": towers.source if towers.source is not None else {"content_sha256": _content_sha256(towers)}}


def _content_sha256(module):
    """SHA-256 of every parameter and buffer (name, shape, dtype, values) of towers not built from files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _display(metric):
    if isinstance(metric, CLIPScore):
        return f"CLIPScore[{metric.convention}]"
    if isinstance(metric, CLIPIQA):
        return "CLIP-IQA[" + ",".join(f"{p}|{n}" for p, n in metric.pairs) + "]"
    return "HPSv2"


def _expand_prompts(prompts, batch):
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ScorerError("No prompt given: pass one prompt for the whole batch or one per image.")
    if not all(isinstance(p, str) for p in prompts):
        raise ScorerError("Prompts must be strings.")
    if len(prompts) == 1:
        return prompts * batch
    if len(prompts) != batch:
        raise ScorerError(f"Got {len(prompts)} prompts for {batch} images: pass 1 prompt or exactly {batch}.")
    return prompts


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_scorer(checkpoint, variant=OPTION["variant"].default, tc_checkpoint=None, k=DEFAULT_K,
                tc_transform=OPTION["tc_transform"].default, k_weights=OPTION["k_weights"].default,
                clip_score_convention=OPTION["clip_score_convention"].default,
                iqa_pairs=(OPTION["iqa_prompt_pair"].default,), iqa_logit_scale="model",
                architecture="auto", quick_gelu=None, device=None, dtype=torch.float32, batch_size=16):
    """Build a JAQ scorer from local weight files.

    checkpoint: a CLIP checkpoint (variant "clip") or the HPS v2/v2.1 file (variant "preference");
    tc_checkpoint: for "preference", the CLIP checkpoint whose CLIPScore is the alignment term (required).
    architecture / quick_gelu apply to open_clip-layout files (see towers.build_towers).
    """
    from .towers import build_towers

    if variant not in VARIANTS:
        raise ScorerError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    options = JAQOptions(float(k), tc_transform, k_weights)
    device = torch.device(device) if device is not None else default_device()

    def towers_for(path, arch, gelu):
        return build_towers(read_scorer_weights(path), arch, gelu).to(device=device, dtype=dtype)

    if variant == "clip":
        return clip_scorer(towers_for(checkpoint, architecture, quick_gelu), options, clip_score_convention,
                           iqa_pairs, iqa_logit_scale, batch_size, label=str(checkpoint))
    if tc_checkpoint is None:
        raise ScorerError("The preference variant needs a CLIP checkpoint for the alignment term (tc_checkpoint).")
    iq_metric = HPSv2(towers_for(checkpoint, architecture, quick_gelu))  # "auto" finds ViT-H-14 by shapes
    tc_metric = CLIPScore(towers_for(tc_checkpoint, "auto", None), clip_score_convention)
    return JAQScorer(tc_metric, iq_metric, options, variant, batch_size, label=str(checkpoint))


def clip_scorer(towers, options=JAQOptions(), clip_score_convention=OPTION["clip_score_convention"].default,
                iqa_pairs=(OPTION["iqa_prompt_pair"].default,),
                iqa_logit_scale="model", batch_size=16, label=""):
    """The CLIP variant on towers already built (ClipTowers), e.g. for benchmarks."""
    return JAQScorer(CLIPScore(towers, clip_score_convention), CLIPIQA(towers, iqa_pairs, iqa_logit_scale), options,
                     "clip", batch_size, label)
