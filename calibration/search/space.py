"""What a search strategy searches over and in what steps: the parameter space (SearchSpace), the candidate
grids (sized by a budget when no size is given), the prompt counts of the rungs a race judges on, and the
stratified prompt order. Shared by every strategy module and by the held-out split (calibration/heldout.py)."""
import logging
import math
from itertools import product

import numpy as np

from ...samplers.schedule import QSchedSchedule

DEFAULT_GRID_POINTS = {"paper": 10, "general": 5}   # official default 10 x 10 starts; 5^4 for start+end
# A budget-sized grid stops growing here (316 x 316 starts, 17^4 start+end pairs): successive halving holds its
# candidates in memory, and no real budget comes near it. A larger budget is still an upper bound, not a target.
MAX_GRID_CANDIDATES = 100_000
MIN_JUDGE_PROMPTS = 10   # the floor: one image per digit class on the testbed, half the paper's 20 prompts
FINAL_TOP = 3            # fraction-cut halving still scores at least this many on every prompt
log = logging.getLogger("qsched.calibration")


# --- the parameter space ---------------------------------------------------------------------------

class SearchSpace:
    """Maps parameter vectors to schedules: 'paper' = (x_start, eps_start), ends fixed at 1 as in the official
    code; 'general' = (x_start, eps_start, x_end, eps_end). Values are clipped to c_range."""

    def __init__(self, kind, steps, c_range, sampler=None):
        if kind not in ("paper", "general"):
            raise ValueError(f"unknown search space {kind!r}; use 'paper' or 'general'")
        low, high = (float(c) for c in c_range)
        if not (0 < low < high) or not (low <= 1.0 <= high):
            raise ValueError(f"c_range must satisfy 0 < c_min <= 1 <= c_max with c_min < c_max, got {c_range!r}")
        self.kind, self.steps, self.low, self.high, self.sampler = kind, steps, low, high, sampler
        self.dims = 2 if kind == "paper" else 4

    @property
    def identity(self):
        return (1.0,) * self.dims

    def clip(self, params):
        return tuple(min(self.high, max(self.low, float(p))) for p in params)

    def schedule(self, params):
        params = self.clip(params)
        x_start, eps_start = params[:2]
        x_end, eps_end = params[2:] if self.dims == 4 else (1.0, 1.0)
        label = f"c_x {x_start:.4g}->{x_end:.4g}, c_eps {eps_start:.4g}->{eps_end:.4g}"
        return QSchedSchedule.linear(self.steps, x_start, eps_start, x_end, eps_end, sampler=self.sampler,
                                     label=label)


# --- grids --------------------------------------------------------------------------------------------

def grid(space, points):
    """The grid's candidates, generated one at a time (never the whole grid in memory)."""
    axis = np.linspace(space.low, space.high, points).tolist()
    return product(axis, repeat=space.dims)


def max_grid_points(space):
    points = int(round(MAX_GRID_CANDIDATES ** (1 / space.dims)))
    while points ** space.dims > MAX_GRID_CANDIDATES:
        points -= 1
    return points


def grid_size(space, points):
    """Candidates of a grid plus the identity (which an odd grid over a symmetric range already contains)."""
    has_identity = any(abs(v - 1.0) < 1e-9 for v in np.linspace(space.low, space.high, points))
    return points ** space.dims + (0 if has_identity else 1)


def budget_points(space, n_prompts, budget, cost=None):
    """Largest grid size per dimension whose images (identity included) fit in the budget, found by bisection
    (the cost grows with the points) and at most MAX_GRID_CANDIDATES candidates."""
    cost = cost or (lambda points: grid_size(space, points) * n_prompts)
    low, high = 1, max_grid_points(space)
    if cost(high) <= budget:
        log.warning("a budget of %s images would allow a grid of more than %d candidates: using %d points per "
                    "dimension (%d candidates)", budget, MAX_GRID_CANDIDATES, high, high ** space.dims)
        return high
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return max(low, 2)


def points_per_dimension(space, n_prompts, budget, grid_points=None, cost=None):
    """Grid points per dimension: `grid_points` if given (checked), else the default without a budget, else the
    most the budget allows (`cost(points)` -> images, by default every candidate on every prompt)."""
    if grid_points is not None:
        if grid_points < 2:
            raise ValueError(f"grid_points must be at least 2, got {grid_points}")
        if grid_points > max_grid_points(space):
            raise ValueError(f"grid_points={grid_points} makes {grid_points ** space.dims} candidates; the most is "
                             f"{MAX_GRID_CANDIDATES} ({max_grid_points(space)} points per dimension)")
        return grid_points
    if budget is None:
        return DEFAULT_GRID_POINTS[space.kind]
    return budget_points(space, n_prompts, budget, cost)


# --- rungs: prompts per judgement -------------------------------------------------------------------

def fraction_rungs(n_prompts, eta, min_prompts):
    """Prompt counts per rung, smallest first, ending with all prompts: 20 prompts, eta 3 -> 1, 3, 7, 20."""
    sizes = [n_prompts]
    while True:
        smaller = math.ceil(sizes[-1] / eta)
        if smaller < max(1, min_prompts) or smaller == sizes[-1]:
            return sizes[::-1]
        sizes.append(smaller)


def judge_floor(n_prompts, floor=MIN_JUDGE_PROMPTS):
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 1:
        raise ValueError(f"min_prompts (the floor of images a candidate is judged on) must be a positive integer, "
                         f"got {floor!r}")
    return min(n_prompts, floor)


def doubling_rungs(n_prompts, floor=MIN_JUDGE_PROMPTS, growth=2):
    """Prompt counts per rung for racing: floor, floor * growth, ..., all prompts."""
    if growth <= 1:
        raise ValueError(f"growth must be > 1, got {growth!r}")
    sizes = [judge_floor(n_prompts, floor)]
    while sizes[-1] < n_prompts:
        sizes.append(min(n_prompts, math.ceil(sizes[-1] * growth)))
    return sizes


def halving_rungs(n_prompts, eta=3, floor=MIN_JUDGE_PROMPTS):
    """Prompt counts per rung for successive halving, never below the floor: 20 prompts, eta 3, floor 10 ->
    10, 20; 100 prompts -> 10, 12, 34, 100."""
    floor = judge_floor(n_prompts, floor)
    sizes = [n_prompts]
    while sizes[-1] > floor:
        smaller = math.ceil(sizes[-1] / eta)
        sizes.append(floor if smaller <= floor else smaller)
    return sizes[::-1]


def halving_cost(candidates, rungs, eta, keep=1):
    """Images a successive-halving race of `candidates` over prompt counts `rungs` generates at most, keeping the
    best 1/eta (at least `keep`) after each rung."""
    images, previous = 0, 0
    for size in rungs:
        images += candidates * (size - previous)
        previous, candidates = size, max(min(keep, candidates), math.ceil(candidates / eta))
    return images


def capped(total, budget):
    """A plan's image count, at most the budget (when there is one)."""
    return min(total, budget) if budget else total


def stratified_order(strata):
    """Prompt indices ordered round-robin over strata (first appearance order, each stratum in its own order), so
    every prefix is as balanced over prompts or classes as it can be: ['a', 'a', 'b', 'b'] -> [0, 2, 1, 3]."""
    groups = {}
    for index, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(index)
    queues = list(groups.values())
    order = []
    for position in range(max((len(q) for q in queues), default=0)):
        order += [q[position] for q in queues if position < len(q)]
    return order
