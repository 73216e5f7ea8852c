"""Noise-aware search strategies: no candidate is judged on fewer than MIN_JUDGE_PROMPTS prompts (taken in an
order stratified over prompts or classes), a candidate is dropped only when a confidence interval on its paired
difference to the leader lies below zero, and whatever is still in the race is scored on the whole calibration set
before the winner is chosen (run_search picks the best mean over all prompts).

Why: the paper grid's scores are noisy (per-prompt noise of a generated image), and successive halving that cuts 81
candidates to 27 on one image throws the full grid's winner away more often than not. Racing with intervals keeps
every candidate the data cannot yet tell apart from the leader, so its pick is the full grid's (Algorithm 1's) or
one within the calibration set's noise of it.
"""
import math

from .paired import CONFIDENCE, paired_difference
from .runlog import schedule_key

MIN_JUDGE_PROMPTS = 10   # the floor: one image per digit class on the testbed, half the paper's 20 prompts
FINAL_TOP = 3            # fraction-cut halving still scores at least this many on every prompt


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


def _prompt_scores(ev, schedule, prompts):
    return [ev.scores[schedule_key(schedule.c_x, schedule.c_eps)][i] for i in prompts]


def confidence_race(ev, space, candidates, floor=MIN_JUDGE_PROMPTS, growth=2, confidence=CONFIDENCE):
    """Score every candidate on the first `floor` prompts of the stratified order, then on twice as many, ...,
    up to all; after each rung drop the candidates whose paired difference to the leader (same prompts, same
    noise) has its whole confidence interval below zero, and those that failed (NaN)."""
    survivors = list(dict.fromkeys(space.clip(c) for c in candidates))
    for size in doubling_rungs(ev.n_prompts, floor, growth):
        prompts = ev.order[:size]
        scored = list(zip(ev.score_many((space.schedule(c), prompts, c) for c in survivors), survivors))
        scored = [(score, c) for score, c in scored if math.isfinite(score)]
        if not scored:
            return
        leader = max(scored, key=lambda item: item[0])[1]
        leader_scores = _prompt_scores(ev, space.schedule(leader), prompts)
        survivors = [c for _, c in scored if c == leader or paired_difference(
            _prompt_scores(ev, space.schedule(c), prompts), leader_scores, confidence).high >= 0]


def floor_halving(ev, space, candidates, eta=3, floor=MIN_JUDGE_PROMPTS, keep=FINAL_TOP):
    """Successive halving whose first rung already has `floor` prompts (stratified) and whose cuts keep at least
    `keep` candidates, so the top few are all re-scored on the whole calibration set."""
    survivors = list(dict.fromkeys(space.clip(c) for c in candidates))
    for size in halving_rungs(ev.n_prompts, eta, floor):
        prompts = ev.order[:size]
        scored = list(zip(ev.score_many((space.schedule(c), prompts, c) for c in survivors), survivors))
        scored.sort(key=lambda item: item[0], reverse=True)
        survivors = [c for _, c in scored[:max(keep, math.ceil(len(scored) / eta))]]


# --- strategies (registered in strategies.STRATEGIES) ---------------------------------------------------------

def racing(ev, space, grid_points=None, min_prompts=MIN_JUDGE_PROMPTS, growth=2, confidence=CONFIDENCE):
    """The paper grid (Algorithm 1's candidates plus identity), raced with confidence intervals."""
    from .strategies import _grid, _grid_points
    points = _grid_points(space, ev.n_prompts, ev.budget, grid_points)
    confidence_race(ev, space, [space.identity, *_grid(space, points)], min_prompts, growth, confidence)


def halving_floor(ev, space, grid_points=None, eta=3, min_prompts=MIN_JUDGE_PROMPTS, keep=FINAL_TOP):
    """The paper grid raced by successive halving with a floor of prompts per judgement and the top few re-scored
    on every prompt."""
    from .strategies import _grid, _grid_points
    cost = lambda points: _halving_floor_cost(space, ev.n_prompts, points, eta, min_prompts, keep)
    points = _grid_points(space, ev.n_prompts, ev.budget, grid_points, cost)
    floor_halving(ev, space, [space.identity, *_grid(space, points)], eta, min_prompts, keep)


def coarse_to_fine_racing(ev, space, levels=4, min_prompts=MIN_JUDGE_PROMPTS, growth=2, confidence=CONFIDENCE):
    """Coarse to fine (3 points per dimension, then around the best with half the spacing), each level raced
    with confidence intervals against the incumbent on the same prompts."""
    from itertools import product
    center = tuple((space.low + space.high) / 2 for _ in range(space.dims))
    span = (space.high - space.low) / 2
    for _ in range(levels):
        candidates = [tuple(c + o for c, o in zip(center, offset))
                      for offset in product((-span, 0.0, span), repeat=space.dims)]
        best_key = ev.best()[1]
        if best_key is not None and ev.params.get(best_key) is not None:
            candidates.append(ev.params[best_key])
        confidence_race(ev, space, candidates, min_prompts, growth, confidence)
        center = ev.params.get(ev.best()[1]) or center
        span /= 2


def _plan_racing(space, n_prompts, budget, grid_points=None, **_):
    from .strategies import _grid_points, _grid_size
    total = _grid_size(space, _grid_points(space, n_prompts, budget, grid_points)) * n_prompts
    return min(total, budget) if budget else total   # upper bound: nothing dropped


def _halving_floor_cost(space, n_prompts, points, eta, min_prompts, keep):
    candidates, images, previous = points ** space.dims + 1, n_prompts, 0   # the identity is scored up front
    for size in halving_rungs(n_prompts, eta, min_prompts):
        images += candidates * (size - previous)
        previous, candidates = size, max(min(keep, candidates), math.ceil(candidates / eta))
    return images


def _plan_halving_floor(space, n_prompts, budget, grid_points=None, eta=3, min_prompts=MIN_JUDGE_PROMPTS,
                        keep=FINAL_TOP, **_):
    from .strategies import _grid_points
    cost = lambda points: _halving_floor_cost(space, n_prompts, points, eta, min_prompts, keep)
    return cost(_grid_points(space, n_prompts, budget, grid_points, cost))


def _plan_coarse_racing(space, n_prompts, budget, levels=4, **_):
    total = n_prompts + levels * (3 ** space.dims + 1) * n_prompts
    return min(total, budget) if budget else total
