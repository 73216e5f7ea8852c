"""Search strategies on synthetic objectives with known optima (no ComfyUI, no images)."""
import math

import numpy as np
import pytest

from comfyui_qsched.calibration.search import STRATEGIES, SearchInterrupted, run_search

STEPS, PROMPTS = 4, 20


class Bowl:
    """Per-prompt concave objective in the paper space, optimum near c_x start 0.93, c_eps start 1.07; each
    prompt has its own offset and slightly shifted optimum (like real prompts), and every call is recorded."""

    def __init__(self, x_opt=0.93, eps_opt=1.07, seed=0):
        rng = np.random.default_rng(seed)
        self.offset = rng.normal(0, 0.05, PROMPTS)
        self.x_opt = x_opt + rng.normal(0, 0.01, PROMPTS)
        self.eps_opt = eps_opt + rng.normal(0, 0.01, PROMPTS)
        self.calls = []

    def __call__(self, schedule, prompts):
        self.calls.append((schedule, list(prompts)))
        return [self.value(schedule, i) for i in prompts]

    def value(self, schedule, i):
        x0, e0, x1, e1 = schedule.c_x[0], schedule.c_eps[0], schedule.c_x[-1], schedule.c_eps[-1]
        return (1.0 + self.offset[i] - 4 * (x0 - self.x_opt[i]) ** 2 - 4 * (e0 - self.eps_opt[i]) ** 2
                - 2 * (x1 - 1) ** 2 - 2 * (e1 - 1) ** 2)

    def images(self):
        return sum(len(prompts) for _, prompts in self.calls)


def test_paper_grid_is_algorithm_1_of_the_official_code():
    bowl = Bowl()
    result = run_search(bowl, STEPS, PROMPTS, "paper_grid", grid_points=10)
    starts = np.linspace(0.8, 1.2, 10)
    seen = {(round(s.c_x[0], 9), round(s.c_eps[0], 9)) for s, _ in bowl.calls}
    assert seen == {(round(a, 9), round(b, 9)) for a in starts for b in starts} | {(1.0, 1.0)}
    for schedule, prompts in bowl.calls:
        assert schedule.c_x[-1] == 1.0 and schedule.c_eps[-1] == 1.0           # linspace(start, 1, steps)
        assert np.allclose(schedule.c_x, np.linspace(schedule.c_x[0], 1, STEPS))
        assert prompts == list(range(PROMPTS))
    assert result.images_generated == 101 * PROMPTS == bowl.images()
    truth = max(np.mean([bowl.value(s, i) for i in range(PROMPTS)]) for s, _ in bowl.calls)
    assert result.best_score == pytest.approx(truth)
    assert result.best_score > result.identity_score
    assert [score for score, _ in result.ranking] == sorted((s for s, _ in result.ranking), reverse=True)


def test_general_grid_searches_the_end_values_too():
    bowl = Bowl()
    result = run_search(bowl, STEPS, 4, "grid_general", grid_points=3)
    ends = {(s.c_x[-1], s.c_eps[-1]) for s, _ in bowl.calls}
    assert len(ends) == 9
    assert result.images_generated == 3 ** 4 * 4     # the grid's centre is the identity: scored once


def test_identity_always_scored_and_kept_when_nothing_beats_it():
    flat_bad = lambda schedule, prompts: [1.0 if schedule.is_identity else 0.5 for _ in prompts]
    for name in STRATEGIES:
        result = run_search(flat_bad, STEPS, 6, name, budget_images=300)
        assert result.best.is_identity, name
        assert result.identity_score == 1.0 == result.best_score


@pytest.mark.parametrize("name", ["successive_halving", "coarse_to_fine", "bayes"])
def test_smarter_strategies_reach_the_grid_best_with_a_fifth_of_the_images(name):
    grid = run_search(Bowl(), STEPS, PROMPTS, "paper_grid")
    bowl = Bowl()
    result = run_search(bowl, STEPS, PROMPTS, name)
    assert result.best_score >= grid.best_score - 0.01 * abs(grid.best_score)
    assert result.images_generated <= 0.2 * grid.images_generated
    assert result.images_generated == bowl.images()


def test_common_random_numbers_no_prompt_scored_twice_and_subsets_are_prefixes():
    bowl = Bowl()
    run_search(bowl, STEPS, PROMPTS, "successive_halving")
    per_candidate = {}
    for schedule, prompts in bowl.calls:
        per_candidate.setdefault((schedule.c_x, schedule.c_eps), []).extend(prompts)
    for prompts in per_candidate.values():
        assert len(prompts) == len(set(prompts))
        assert sorted(prompts) == list(range(len(prompts)))   # everyone is compared on the same prompts/seeds


def test_nan_candidates_are_worst_reported_and_the_search_goes_on():
    bowl = Bowl()

    def evaluate(schedule, prompts):
        if schedule.c_x[0] < 0.85:
            return [float("nan") if i == 1 else 5.0 for i in prompts]   # would win without the NaN
        return bowl(schedule, prompts)

    result = run_search(evaluate, STEPS, 4, "paper_grid", grid_points=5)
    assert result.best.c_x[0] >= 0.85
    assert len(result.failures) == 5 and all(f["prompts"] == [1] for f in result.failures)
    assert all(score == -math.inf for score, s in result.ranking if s.c_x[0] < 0.85)
    assert result.images_generated == 25 * 4


def test_budget_is_never_exceeded():
    for name in STRATEGIES:
        bowl = Bowl()
        result = run_search(bowl, STEPS, 10, name, budget_images=120)
        assert result.images_generated == bowl.images() <= 120, name


def test_progress_is_reported_and_should_stop_interrupts():
    bowl, seen = Bowl(), []
    run_search(bowl, STEPS, 5, "paper_grid", grid_points=3, progress=lambda done, total: seen.append((done, total)))
    assert [d for d, _ in seen] == [5 * k for k in range(1, 10)] and all(t == 45 for _, t in seen)
    with pytest.raises(SearchInterrupted):
        run_search(Bowl(), STEPS, 5, "paper_grid", grid_points=3, should_stop=lambda: len(seen) > 12,
                   progress=lambda done, total: seen.append(done))


def test_interrupted_search_resumes_from_the_run_log(tmp_path):
    log = tmp_path / "run.jsonl"
    settings = {"model": "m", "prompts": "abc"}
    calls = []
    with pytest.raises(SearchInterrupted):
        run_search(Bowl(), STEPS, 5, "paper_grid", grid_points=4, settings=settings, run_log=log,
                   should_stop=lambda: len(calls) >= 7, progress=lambda *a: calls.append(a))
    bowl = Bowl()
    resumed = run_search(bowl, STEPS, 5, "paper_grid", grid_points=4, settings=settings, run_log=log)
    assert resumed.images_generated == (17 - 7) * 5 == bowl.images()   # 4 x 4 grid + identity
    assert resumed.images_reused == 7 * 5
    fresh = run_search(Bowl(), STEPS, 5, "paper_grid", grid_points=4)
    assert resumed.best == fresh.best and resumed.best_score == pytest.approx(fresh.best_score)
    again = run_search(Bowl(), STEPS, 5, "coarse_to_fine", settings=settings, run_log=log)   # other strategy reuses
    assert again.images_reused > 0


def test_a_log_of_other_settings_is_not_mixed_in(tmp_path):
    log = tmp_path / "run.jsonl"
    run_search(lambda s, p: [9.0 for _ in p], STEPS, 3, "paper_grid", grid_points=2, settings={"seed": 1},
               run_log=log)
    bowl = Bowl()
    result = run_search(bowl, STEPS, 3, "paper_grid", grid_points=2, settings={"seed": 2}, run_log=log)
    assert result.images_reused == 0 and result.images_generated == 5 * 3 == bowl.images()
    assert result.best_score < 9.0
    assert len(list(tmp_path.glob("run.jsonl.*.old"))) == 1


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown strategy"):
        run_search(Bowl(), STEPS, 3, "random_walk")
    with pytest.raises(ValueError, match="budget_images"):
        run_search(Bowl(), STEPS, 10, "paper_grid", budget_images=5)
    with pytest.raises(ValueError, match="c_range"):
        run_search(Bowl(), STEPS, 3, "paper_grid", c_range=(1.1, 1.2))
    with pytest.raises(ValueError, match="returned 1 scores for 3"):
        run_search(lambda s, p: [1.0], STEPS, 3, "paper_grid")
