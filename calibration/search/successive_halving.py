"""successive_halving: the paper's grid (plus identity), raced over prompts instead of scoring every candidate on
all: all on the first prompt(s), the best 1/eta on eta times as many, ... Fast, but the first cut is made on 1-2
images, so noise can decide (halving_floor and racing judge on at least 10)."""
from itertools import chain

from .races import halving_race
from .registry import register
from .space import fraction_rungs, grid, halving_cost, points_per_dimension


def _cost(space, n_prompts, points, eta, min_prompts):
    # Upper bound: the identity races too but was already scored on every prompt before the strategy ran.
    return n_prompts + halving_cost(points ** space.dims + 1, fraction_rungs(n_prompts, eta, min_prompts), eta)


def _points(space, n_prompts, budget, grid_points, eta, min_prompts):
    cost = lambda points: _cost(space, n_prompts, points, eta, min_prompts)
    return points_per_dimension(space, n_prompts, budget, grid_points, cost)


def successive_halving(ev, space, grid_points=None, eta=3, min_prompts=1):
    points = _points(space, ev.n_prompts, ev.budget, grid_points, eta, min_prompts)
    halving_race(ev, space, chain([space.identity], grid(space, points)),
                 fraction_rungs(ev.n_prompts, eta, min_prompts), eta)


def plan(space, n_prompts, budget, grid_points=None, eta=3, min_prompts=1, **_):
    return _cost(space, n_prompts, _points(space, n_prompts, budget, grid_points, eta, min_prompts), eta, min_prompts)


register("successive_halving", successive_halving, plan)
