"""coarse_to_fine_racing: coarse to fine (3 points per dimension, then around the best with half the spacing),
each level raced with confidence intervals against the incumbent on the same prompts."""
from ..paired import CONFIDENCE
from .races import coarse_to_fine, confidence_race
from .registry import register
from .space import MIN_JUDGE_PROMPTS, capped


def coarse_to_fine_racing(ev, space, levels=4, min_prompts=MIN_JUDGE_PROMPTS, growth=2, confidence=CONFIDENCE):
    coarse_to_fine(ev, space, levels,
                   lambda candidates: confidence_race(ev, space, candidates, min_prompts, growth, confidence))


def plan(space, n_prompts, budget, levels=4, **_):
    return capped(n_prompts + levels * (3 ** space.dims + 1) * n_prompts, budget)


register("coarse_to_fine_racing", coarse_to_fine_racing, plan)
