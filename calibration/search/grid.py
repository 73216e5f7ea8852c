"""paper_grid (Algorithm 1, the official search) and grid_general: every start (and, in the general space, end)
value on a grid over c_range, every candidate on every prompt."""
from .registry import register
from .space import grid, grid_size, points_per_dimension


def grid_search(ev, space, grid_points=None):
    points = points_per_dimension(space, ev.n_prompts, ev.budget, grid_points)
    prompts = list(range(ev.n_prompts))
    ev.score_many((space.schedule(params), prompts, params) for params in grid(space, points))


def plan(space, n_prompts, budget, grid_points=None, **_):
    return grid_size(space, points_per_dimension(space, n_prompts, budget, grid_points)) * n_prompts


register("paper_grid", grid_search, plan, space="paper")
register("grid_general", grid_search, plan, space="general")
