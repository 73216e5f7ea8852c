"""Search strategies. Each takes the evaluation cache (`ev.score(schedule, prompts, params)`, or `ev.score_many`
for candidates that do not depend on each other's scores, so their images can share a batch) and the search
space, spends images until done or the budget runs out, and leaves the winner to run_search (best mean over all
prompts among fully scored candidates). `plan(n_prompts, budget, **options)` returns the expected image count.
"""
import logging
import math
import warnings
from collections import namedtuple
from itertools import chain, product

import numpy as np

from .noise_aware import (_plan_coarse_racing, _plan_halving_floor, _plan_racing, coarse_to_fine_racing,
                          halving_floor, racing)

Strategy = namedtuple("Strategy", "function space plan")
DEFAULT_GRID_POINTS = {"paper": 10, "general": 5}   # official default 10 x 10 starts; 5^4 for start+end
# A budget-sized grid stops growing here (316 x 316 starts, 17^4 start+end pairs): successive halving holds its
# candidates in memory, and no real budget comes near it. A larger budget is still an upper bound, not a target.
MAX_GRID_CANDIDATES = 100_000
log = logging.getLogger("qsched.calibration")


def _grid(space, points):
    """The grid's candidates, generated one at a time (never the whole grid in memory)."""
    axis = np.linspace(space.low, space.high, points).tolist()
    return product(axis, repeat=space.dims)


def _max_grid_points(space):
    points = int(round(MAX_GRID_CANDIDATES ** (1 / space.dims)))
    while points ** space.dims > MAX_GRID_CANDIDATES:
        points -= 1
    return points


def _grid_size(space, points):
    """Candidates of a grid plus the identity (which an odd grid over a symmetric range already contains)."""
    has_identity = any(abs(v - 1.0) < 1e-9 for v in np.linspace(space.low, space.high, points))
    return points ** space.dims + (0 if has_identity else 1)


def _budget_points(space, n_prompts, budget, cost=None):
    """Largest grid size per dimension whose images (identity included) fit in the budget, found by bisection
    (the cost grows with the points) and at most MAX_GRID_CANDIDATES candidates."""
    cost = cost or (lambda points: _grid_size(space, points) * n_prompts)
    low, high = 1, _max_grid_points(space)
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


def _grid_points(space, n_prompts, budget, grid_points, cost=None):
    if grid_points is not None:
        if grid_points < 2:
            raise ValueError(f"grid_points must be at least 2, got {grid_points}")
        if grid_points > _max_grid_points(space):
            raise ValueError(f"grid_points={grid_points} makes {grid_points ** space.dims} candidates; the most is "
                             f"{MAX_GRID_CANDIDATES} ({_max_grid_points(space)} points per dimension)")
        return grid_points
    if budget is None:
        return DEFAULT_GRID_POINTS[space.kind]
    return _budget_points(space, n_prompts, budget, cost)


# --- exhaustive grids (paper Algorithm 1) -------------------------------------------------------------------

def grid_search(ev, space, grid_points=None):
    """Algorithm 1: every start (and, in the general space, end) value on a grid over c_range, all prompts."""
    points = _grid_points(space, ev.n_prompts, ev.budget, grid_points)
    prompts = list(range(ev.n_prompts))
    ev.score_many((space.schedule(params), prompts, params) for params in _grid(space, points))


def _plan_grid(space, n_prompts, budget, grid_points=None, **_):
    return _grid_size(space, _grid_points(space, n_prompts, budget, grid_points)) * n_prompts


# --- successive halving over prompts ----------------------------------------------------------------------

def _rungs(n_prompts, eta, min_prompts):
    """Prompt counts per rung, smallest first, ending with all prompts: 20 prompts, eta 3 -> 1, 3, 7, 20."""
    sizes = [n_prompts]
    while True:
        smaller = math.ceil(sizes[-1] / eta)
        if smaller < max(1, min_prompts) or smaller == sizes[-1]:
            return sizes[::-1]
        sizes.append(smaller)


def _race_cost(candidates, n_prompts, eta, min_prompts):
    images, previous = 0, 0
    for size in _rungs(n_prompts, eta, min_prompts):
        images += candidates * (size - previous)
        previous, candidates = size, max(1, math.ceil(candidates / eta))
    return images


def race(ev, space, candidates, eta=3, min_prompts=1):
    """Successive halving: score all candidates on the first few prompts (the same prompts and seeds for all),
    keep the best 1/eta, give them more prompts, until the survivors are scored on every prompt."""
    survivors = list(dict.fromkeys(space.clip(c) for c in candidates))
    for size in _rungs(ev.n_prompts, eta, min_prompts):
        prompts = list(range(size))
        scored = list(zip(ev.score_many((space.schedule(c), prompts, c) for c in survivors), survivors))
        scored.sort(key=lambda item: item[0], reverse=True)
        survivors = [c for _, c in scored[:max(1, math.ceil(len(scored) / eta))]]


def successive_halving(ev, space, grid_points=None, eta=3, min_prompts=1):
    """The paper's grid (plus identity), raced over prompts instead of scoring every candidate on all."""
    race(ev, space, chain([space.identity], _grid(space, _halving_points(space, ev.n_prompts, ev.budget,
                                                                         grid_points, eta, min_prompts))),
         eta, min_prompts)


def _halving_cost(space, n_prompts, points, eta, min_prompts):
    # Upper bound: the identity races too but was already scored on every prompt before the strategy ran.
    return n_prompts + _race_cost(points ** space.dims + 1, n_prompts, eta, min_prompts)


def _halving_points(space, n_prompts, budget, grid_points, eta, min_prompts):
    cost = lambda points: _halving_cost(space, n_prompts, points, eta, min_prompts)
    return _grid_points(space, n_prompts, budget, grid_points, cost)


def _plan_halving(space, n_prompts, budget, grid_points=None, eta=3, min_prompts=1, **_):
    points = _halving_points(space, n_prompts, budget, grid_points, eta, min_prompts)
    return _halving_cost(space, n_prompts, points, eta, min_prompts)


# --- coarse to fine ---------------------------------------------------------------------------------------

def coarse_to_fine(ev, space, levels=4, eta=3, min_prompts=2):
    """3 points per dimension over the whole range, then around the best so far with half the spacing, each
    level raced over prompts. After 4 levels on [0.8, 1.2] the spacing is 0.025 (a 10-point grid has 0.044)."""
    center = tuple((space.low + space.high) / 2 for _ in range(space.dims))
    span = (space.high - space.low) / 2
    for _ in range(levels):
        offsets = product((-span, 0.0, span), repeat=space.dims)
        candidates = [tuple(c + o for c, o in zip(center, offset)) for offset in offsets]
        best_key = ev.best()[1]
        if best_key is not None and ev.params.get(best_key) is not None:
            candidates.append(ev.params[best_key])   # the incumbent competes on the same prompts
        race(ev, space, candidates, eta, min_prompts)
        best_key = ev.best()[1]
        center = ev.params.get(best_key) or center
        span /= 2


def _plan_coarse(space, n_prompts, budget, levels=4, eta=3, min_prompts=2, **_):
    per_level = _race_cost(3 ** space.dims, n_prompts, eta, min_prompts)
    total = n_prompts + levels * per_level
    return min(total, budget) if budget else total


# --- Bayesian optimisation ----------------------------------------------------------------------------------

def bayes(ev, space, n_init=5, iterations=10, seed=0, pool=4096):
    """Gaussian-process expected improvement on the mean score, every candidate scored on all prompts."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    rng = np.random.default_rng(seed)
    width = space.high - space.low
    to_unit = lambda p: (np.asarray(p) - space.low) / width
    from_unit = lambda u: tuple((space.low + np.asarray(u) * width).tolist())
    prompts = list(range(ev.n_prompts))
    # Latin hypercube start: every dimension's range covered once per point.
    strata = np.stack([rng.permutation(n_init) for _ in range(space.dims)], axis=1)
    starts = [from_unit(row) for row in (strata + rng.random((n_init, space.dims))) / n_init]
    ev.score_many((space.schedule(start), prompts, start) for start in starts)
    kernel = ConstantKernel(1.0) * Matern(length_scale=[0.3] * space.dims, nu=2.5) + WhiteKernel(1e-4)
    for _ in range(iterations):
        done = [(ev.params[k], s) for s, k in ev.full() if ev.params.get(k) is not None]
        inputs = np.array([to_unit(p) for p, _ in done])
        scores = np.array([s for _, s in done])
        finite = np.isfinite(scores)
        floor = scores[finite].min() - (np.ptp(scores[finite]) + 1e-6) if finite.any() else 0.0
        scores = np.where(finite, scores, floor)   # failed candidates: worse than anything that worked
        scale = scores.std() or 1.0
        targets = (scores - scores.mean()) / scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GaussianProcessRegressor(kernel, normalize_y=False, random_state=seed).fit(inputs, targets)
        best_unit = inputs[np.argmax(targets)]
        local = np.clip(best_unit + rng.normal(0, 0.05, (pool // 4, space.dims)), 0, 1)
        options = np.concatenate([rng.random((pool, space.dims)), local])
        mean, std = model.predict(options, return_std=True)
        improvement = mean - targets.max()
        z = improvement / np.maximum(std, 1e-9)
        expected = improvement * _normal_cdf(z) + std * np.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
        choice = from_unit(options[int(np.argmax(expected))])
        ev.score(space.schedule(choice), prompts, choice)


def _normal_cdf(z):
    from scipy.special import ndtr
    return ndtr(z)


def _plan_bayes(space, n_prompts, budget, n_init=5, iterations=10, **_):
    total = (1 + n_init + iterations) * n_prompts
    return min(total, budget) if budget else total


DEFAULT_STRATEGY = "racing"
STRATEGIES = {
    "racing": Strategy(racing, "paper", _plan_racing),
    "halving_floor": Strategy(halving_floor, "paper", _plan_halving_floor),
    "coarse_to_fine_racing": Strategy(coarse_to_fine_racing, "paper", _plan_coarse_racing),
    "paper_grid": Strategy(grid_search, "paper", _plan_grid),
    "grid_general": Strategy(grid_search, "general", _plan_grid),
    "successive_halving": Strategy(successive_halving, "paper", _plan_halving),
    "coarse_to_fine": Strategy(coarse_to_fine, "paper", _plan_coarse),
    "bayes": Strategy(bayes, "paper", _plan_bayes),
}
