"""halving_floor: the paper grid raced by successive halving with a floor of prompts per judgement (stratified
order) and the top few re-scored on every prompt."""
from .races import halving_race
from .registry import register
from .space import FINAL_TOP, MIN_JUDGE_PROMPTS, grid, halving_cost, halving_rungs, points_per_dimension


def _cost(space, n_prompts, points, eta, min_prompts, keep):
    # the identity is scored on every prompt before the strategy runs
    rungs = halving_rungs(n_prompts, eta, min_prompts)
    return n_prompts + halving_cost(points ** space.dims + 1, rungs, eta, keep)


def _points(space, n_prompts, budget, grid_points, eta, min_prompts, keep):
    cost = lambda points: _cost(space, n_prompts, points, eta, min_prompts, keep)
    return points_per_dimension(space, n_prompts, budget, grid_points, cost)


def halving_floor(ev, space, grid_points=None, eta=3, min_prompts=MIN_JUDGE_PROMPTS, keep=FINAL_TOP):
    points = _points(space, ev.n_prompts, ev.budget, grid_points, eta, min_prompts, keep)
    halving_race(ev, space, [space.identity, *grid(space, points)], halving_rungs(ev.n_prompts, eta, min_prompts),
                 eta, keep, ev.order)


def plan(space, n_prompts, budget, grid_points=None, eta=3, min_prompts=MIN_JUDGE_PROMPTS, keep=FINAL_TOP, **_):
    points = _points(space, n_prompts, budget, grid_points, eta, min_prompts, keep)
    return _cost(space, n_prompts, points, eta, min_prompts, keep)


register("halving_floor", halving_floor, plan)
