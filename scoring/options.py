"""The JAQ scorer's options, defined once (default, choices, bounds, help) the way calibration's CalibrationConfig
is: `JAQOptions` and `load_scorer` take their defaults from here, the Load JAQ Scorer node builds its inputs and
the command line its `--scorer-*` arguments from SCORER_OPTIONS."""
from dataclasses import dataclass

from .scores import CLIP_IQA_PAIRS, CLIP_SCORE_CONVENTIONS

VARIANTS = ("clip", "preference")
TC_TRANSFORMS = ("identity", "log")
K_WEIGHTS = ("iq", "tc")
DEFAULT_K = 2.0   # the paper's Eq. 5 and the official code


@dataclass(frozen=True)
class ScorerOption:
    name: str            # load_scorer's keyword (iqa_prompt_pair: one name of iqa_pairs)
    default: object
    help: str
    choices: tuple = None   # None: a number within minimum..maximum
    minimum: float = None
    maximum: float = None
    step: float = None

    def number(self):
        return self.choices is None


SCORER_OPTIONS = (
    ScorerOption("variant", VARIANTS[0], "clip: TC = CLIPScore, IQ = CLIP-IQA. preference: IQ = HPSv2 (checkpoint), "
                 "TC = CLIPScore (alignment_checkpoint).", VARIANTS),
    ScorerOption("k", DEFAULT_K, "JAQ weight; 2 in the paper (Eq. 5) and the official code.", minimum=0.0,
                 maximum=1000.0, step=0.1),
    ScorerOption("tc_transform", TC_TRANSFORMS[0], "identity: the paper's TC + k*IQ; log: the official code's "
                 "log(CLIPScore) + k*IQ.", TC_TRANSFORMS),
    ScorerOption("k_weights", K_WEIGHTS[0], "Which term k multiplies: iq (paper Eq. 5) or tc (the paper's Table 3 "
                 "values: HPSv2 + 2 * AQ-Map).", K_WEIGHTS),
    ScorerOption("clip_score_convention", "torchmetrics", "torchmetrics: 100*max(cos,0); hessel: 2.5*max(cos,0) "
                 "with 'A photo depicts ' before the prompt.", tuple(sorted(CLIP_SCORE_CONVENTIONS))),
    ScorerOption("iqa_prompt_pair", "quality", "CLIP-IQA antonym pair; quality = 'Good photo.' / 'Bad photo.'",
                 tuple(CLIP_IQA_PAIRS)),
)
OPTION = {option.name: option for option in SCORER_OPTIONS}
