"""Noise-aware strategies (racing, halving_floor, coarse_to_fine_racing) on objectives with per-image noise: the
floor of prompts per judgement, stratified rungs, confidence-interval racing, and the pick against the full grid."""
import hashlib

import numpy as np
import pytest

from comfyui_qsched.calibration.paired import paired_difference
from comfyui_qsched.calibration.runlog import schedule_key
from comfyui_qsched.calibration.search import DEFAULT_STRATEGY, STRATEGIES, run_search
from comfyui_qsched.calibration.search.space import (MIN_JUDGE_PROMPTS, doubling_rungs, halving_rungs,
                                                     stratified_order)
from test_search import PROMPTS, STEPS, Bowl

NOISE_AWARE = ("racing", "halving_floor", "coarse_to_fine_racing")


class NoisyBowl(Bowl):
    """The bowl plus independent per-image noise (sd `sigma`), fixed by (seed, schedule, prompt) like an image."""

    def __init__(self, sigma, seed=0):
        super().__init__(seed=seed)
        self.sigma, self.seed = sigma, seed

    def value(self, schedule, i):
        text = f"{self.seed}|{schedule_key(schedule.c_x, schedule.c_eps)}|{i}"
        noise = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)).normal()
        return super().value(schedule, i) + self.sigma * noise


def _prompts_per_candidate(objective):
    seen = {}
    for schedule, prompts in objective.calls:
        seen.setdefault((schedule.c_x, schedule.c_eps), []).append(list(prompts))
    return seen


def test_rungs_and_stratified_order():
    assert halving_rungs(20, eta=3, floor=10) == [10, 20]
    assert halving_rungs(100, eta=3, floor=10) == [10, 12, 34, 100]
    assert halving_rungs(6, eta=3, floor=10) == [6]
    assert doubling_rungs(20, floor=10) == [10, 20]
    assert doubling_rungs(100, floor=10) == [10, 20, 40, 80, 100]
    assert stratified_order(["a", "a", "b", "b", "c"]) == [0, 2, 4, 1, 3]
    assert stratified_order(list(range(5))) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="min_prompts"):
        halving_rungs(20, floor=0)


@pytest.mark.parametrize("name", NOISE_AWARE)
def test_no_candidate_is_judged_on_fewer_prompts_than_the_floor(name):
    bowl = Bowl()
    run_search(bowl, STEPS, PROMPTS, name)
    for calls in _prompts_per_candidate(bowl).values():
        assert len(calls[0]) >= MIN_JUDGE_PROMPTS          # the first judgement already sees the floor


@pytest.mark.parametrize("name", NOISE_AWARE)
def test_partial_rungs_are_stratified_over_prompts(name):
    bowl = Bowl()
    strata = [i // 2 for i in range(PROMPTS)]             # 10 prompts, each with two seeds, listed side by side
    run_search(bowl, STEPS, PROMPTS, name, strata=strata)
    first_rungs = [calls[0] for calls in _prompts_per_candidate(bowl).values() if len(calls[0]) < PROMPTS]
    assert first_rungs
    for prompts in first_rungs:
        assert len(prompts) == 10 and {strata[i] for i in prompts} == set(range(10))
    with pytest.raises(ValueError, match="one label per prompt"):
        run_search(Bowl(), STEPS, PROMPTS, name, strata=[0, 1])


def test_the_default_strategy_is_noise_aware():
    assert DEFAULT_STRATEGY in NOISE_AWARE and DEFAULT_STRATEGY in STRATEGIES


@pytest.mark.parametrize("name", NOISE_AWARE)
def test_noiseless_bowl_finds_the_grid_best(name):
    grid = run_search(Bowl(), STEPS, PROMPTS, "paper_grid")
    result = run_search(Bowl(), STEPS, PROMPTS, name)
    assert result.best_score >= grid.best_score - 0.01 * abs(grid.best_score)
    assert result.images_generated < grid.images_generated


def test_racing_keeps_candidates_it_cannot_tell_apart():
    """Schedules with the same expected score stay in the race to the last prompt; clearly worse ones go early."""
    calls = []

    def evaluate(schedule, prompts):
        x_start, eps_start = round(schedule.c_x[0], 6), round(schedule.c_eps[0], 6)
        calls.append(((x_start, eps_start), list(prompts)))
        base = 0.5 if schedule.is_identity else (1.0 if x_start == 0.8 else 0.0)
        return [base + 0.05 * np.random.default_rng([i, int(x_start * 1e3), int(eps_start * 1e3)]).normal()
                for i in prompts]

    run_search(evaluate, STEPS, 40, "racing", grid_points=2)   # starts 0.8 and 1.2 for both coefficients
    prompts = {}
    for candidate, seen in calls:
        prompts.setdefault(candidate, set()).update(seen)
    assert len(prompts[(0.8, 0.8)]) == len(prompts[(0.8, 1.2)]) == 40       # tied: both kept to the end
    assert len(prompts[(1.2, 0.8)]) == len(prompts[(1.2, 1.2)]) == MIN_JUDGE_PROMPTS   # worse: out after one rung


def test_racing_picks_algorithm_1s_winner_on_noisy_objectives_where_one_prompt_halving_does_not():
    ranks = {"racing": [], "successive_halving": []}
    for seed in range(4):
        objective = NoisyBowl(0.2, seed)
        grid = run_search(objective, STEPS, PROMPTS, "paper_grid")
        order = [schedule_key(s.c_x, s.c_eps) for _, s in grid.ranking]
        for name in ranks:
            result = run_search(NoisyBowl(0.2, seed), STEPS, PROMPTS, name)
            pick = schedule_key(result.best.c_x, result.best.c_eps)
            ranks[name].append(order.index(pick))
            # either way the pick must be within the calibration set's noise of the grid's winner
            gap = paired_difference([objective.value(grid.best, i) for i in range(PROMPTS)],
                                    [objective.value(result.best, i) for i in range(PROMPTS)])
            assert gap.low <= 0, (name, seed)
    assert ranks["racing"] == [0, 0, 0, 0]
    assert max(ranks["successive_halving"]) > 0        # judged on 1 prompt first, it drops the grid's winner
