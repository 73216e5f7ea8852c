"""The loops the strategies share: racing candidates over growing numbers of prompts (by confidence intervals or
by successive halving) and refining a 3-point grid around the best so far, coarse to fine. Strategies call these
with their candidates; the score cache `ev` (runner.Evaluations) does the scoring, budget and run log."""
import math
from itertools import product

from ..paired import CONFIDENCE, paired_difference
from ..runlog import schedule_key
from .space import MIN_JUDGE_PROMPTS, doubling_rungs


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


def halving_race(ev, space, candidates, rungs, eta, keep=1, order=None):
    """Successive halving: score all candidates on the first rungs[0] prompts of `order` (the same prompts and
    seeds for all; default: index order), keep the best 1/eta (at least `keep`), give them the next rung's
    prompts, until the survivors are scored on every prompt."""
    order = list(range(ev.n_prompts)) if order is None else order
    survivors = list(dict.fromkeys(space.clip(c) for c in candidates))
    for size in rungs:
        prompts = list(order[:size])
        scored = list(zip(ev.score_many((space.schedule(c), prompts, c) for c in survivors), survivors))
        scored.sort(key=lambda item: item[0], reverse=True)
        survivors = [c for _, c in scored[:max(keep, math.ceil(len(scored) / eta))]]


def coarse_to_fine(ev, space, levels, race_level):
    """3 points per dimension over the whole range, then around the best so far with half the spacing; each
    level's candidates (and the incumbent, on the same prompts) go to `race_level(candidates)`."""
    center = tuple((space.low + space.high) / 2 for _ in range(space.dims))
    span = (space.high - space.low) / 2
    for _ in range(levels):
        candidates = [tuple(c + o for c, o in zip(center, offset))
                      for offset in product((-span, 0.0, span), repeat=space.dims)]
        best_key = ev.best()[1]
        if best_key is not None and ev.params.get(best_key) is not None:
            candidates.append(ev.params[best_key])   # the incumbent competes on the same prompts
        race_level(candidates)
        center = ev.params.get(ev.best()[1]) or center
        span /= 2
