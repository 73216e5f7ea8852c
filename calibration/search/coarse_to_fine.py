"""coarse_to_fine: 3 points per dimension over the whole range, then around the best so far with half the
spacing, each level raced by successive halving over prompts. After 4 levels on [0.8, 1.2] the spacing is 0.025
(a 10-point grid has 0.044). Judges on 2 prompts first: fast, but noise can decide."""
from . import races
from .registry import register
from .space import capped, fraction_rungs, halving_cost


def coarse_to_fine(ev, space, levels=4, eta=3, min_prompts=2):
    rungs = fraction_rungs(ev.n_prompts, eta, min_prompts)
    races.coarse_to_fine(ev, space, levels, lambda candidates: races.halving_race(ev, space, candidates, rungs, eta))


def plan(space, n_prompts, budget, levels=4, eta=3, min_prompts=2, **_):
    per_level = halving_cost(3 ** space.dims, fraction_rungs(n_prompts, eta, min_prompts), eta)
    return capped(n_prompts + levels * per_level, budget)


register("coarse_to_fine", coarse_to_fine, plan)
