"""Reference-free image scores for Q-Sched: CLIPScore, CLIP-IQA, HPSv2 and their combination JAQ.

    from comfyui_qsched.scoring import load_scorer
    scorer = load_scorer("models/qsched_scorers/ViT-L-14.pt")
    result = scorer.score(images, ["a photo of a cat"])   # images: ComfyUI IMAGE [B, H, W, C] in [0, 1]
    result.jaq, result.tc, result.iq                       # per-image float tensors
"""
from .checkpoints import ScorerError, read_scorer_weights
from .jaq import JAQOptions, JAQScorer, ScoreResult, clip_scorer, load_scorer
from .options import DEFAULT_K, SCORER_OPTIONS, ScorerOption
from .scores import CLIP_IQA_PAIRS, CLIP_SCORE_CONVENTIONS

__all__ = ["load_scorer", "clip_scorer", "JAQScorer", "JAQOptions", "ScoreResult", "ScorerError", "read_scorer_weights",
           "CLIP_IQA_PAIRS", "CLIP_SCORE_CONVENTIONS", "DEFAULT_K", "SCORER_OPTIONS", "ScorerOption"]
