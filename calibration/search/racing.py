"""racing (the default): the paper grid (Algorithm 1's candidates plus identity), raced with confidence intervals.

No candidate is judged on fewer than MIN_JUDGE_PROMPTS prompts (taken in an order stratified over prompts or
classes), a candidate is dropped only when a confidence interval on its paired difference to the leader lies below
zero, and whatever is still in the race is scored on the whole calibration set before the winner is chosen
(run_search picks the best mean over all prompts).

Why: the paper grid's scores are noisy (per-prompt noise of a generated image), and successive halving that cuts 81
candidates to 27 on one image throws the full grid's winner away more often than not. Racing with intervals keeps
every candidate the data cannot yet tell apart from the leader, so its pick is the full grid's (Algorithm 1's) or
one within the calibration set's noise of it.
"""
from ..paired import CONFIDENCE
from .races import confidence_race
from .registry import register
from .space import MIN_JUDGE_PROMPTS, capped, grid, grid_size, points_per_dimension


def racing(ev, space, grid_points=None, min_prompts=MIN_JUDGE_PROMPTS, growth=2, confidence=CONFIDENCE):
    points = points_per_dimension(space, ev.n_prompts, ev.budget, grid_points)
    confidence_race(ev, space, [space.identity, *grid(space, points)], min_prompts, growth, confidence)


def plan(space, n_prompts, budget, grid_points=None, **_):
    total = grid_size(space, points_per_dimension(space, n_prompts, budget, grid_points)) * n_prompts
    return capped(total, budget)   # upper bound: nothing dropped


register("racing", racing, plan)
