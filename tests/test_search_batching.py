"""Batched calibration search: several candidates' images in one score_many call of the objective give the same search as one
candidate at a time (winner, trace, budget, run log, resume), and a NaN sample costs its batch mates nothing."""
import math

import pytest
import torch

from comfyui_qsched.calibration.pipeline import make_evaluate
from comfyui_qsched.calibration.search import Evaluator, SearchInterrupted, run_search
from comfyui_qsched.samplers import NonFiniteLatentError
from test_search import PROMPTS, STEPS, Bowl

STRATEGY_OPTIONS = {"paper_grid": {"grid_points": 5}, "grid_general": {"grid_points": 3},
                    "successive_halving": {}, "coarse_to_fine": {}, "bayes": {"iterations": 3},
                    "racing": {"grid_points": 5}, "halving_floor": {"grid_points": 5}, "coarse_to_fine_racing": {}}


class BatchedBowl(Bowl, Evaluator):
    """Bowl as a batched Evaluator: score_many is the batched entry point; records every call's requests."""
    batched = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batches = []

    def score(self, schedule, prompts):
        return self(schedule, prompts)

    def score_many(self, requests):
        self.batches.append([(schedule, list(indices)) for schedule, indices in requests])
        return [[self.value(schedule, i) for i in indices] for schedule, indices in requests]


def _search(strategy, batch_images, tmp_path=None, **kwargs):
    bowl = BatchedBowl()
    log = None if tmp_path is None else tmp_path / f"{strategy}-{batch_images}.jsonl"
    result = run_search(bowl, STEPS, PROMPTS, strategy, batch_images=batch_images, run_log=log,
                        settings={"seed": 1}, strata=[i % 7 for i in range(PROMPTS)],
                        **STRATEGY_OPTIONS[strategy], **kwargs)
    return result, bowl, log


@pytest.mark.parametrize("strategy", list(STRATEGY_OPTIONS))
def test_batched_search_equals_one_candidate_at_a_time(strategy, tmp_path):
    alone, alone_bowl, alone_log = _search(strategy, 1, tmp_path)
    batched, bowl, batched_log = _search(strategy, 45, tmp_path)
    assert batched.best == alone.best and batched.best_score == alone.best_score
    assert batched.identity_score == alone.identity_score
    assert batched.trace == alone.trace and batched.ranking == alone.ranking
    assert batched.images_generated == alone.images_generated
    # the run log holds the same lines in the same order (header included: batching does not key the log)
    assert batched_log.read_text() == alone_log.read_text()
    images = [sum(len(indices) for _, indices in batch) for batch in bowl.batches]
    assert sum(images) + sum(len(p) for _, p in bowl.calls) == batched.images_generated   # nothing made twice
    assert max(images) <= 45 and max(len(batch) for batch in bowl.batches) > 1
    assert len(bowl.batches) + len(bowl.calls) < len(alone_bowl.calls)


def test_a_candidate_larger_than_the_batch_is_generated_alone():
    result, bowl, _ = _search("paper_grid", 12)
    assert all(len(batch) == 1 and len(batch[0][1]) == PROMPTS for batch in bowl.batches)
    assert result.best == _search("paper_grid", 1)[0].best


@pytest.mark.parametrize("strategy", ["paper_grid", "coarse_to_fine", "successive_halving"])
def test_batched_search_spends_the_same_budget(strategy):
    alone, alone_bowl, _ = _search(strategy, 1, budget_images=137)
    batched, bowl, _ = _search(strategy, 16, budget_images=137)
    made = sum(len(i) for b in bowl.batches for _, i in b) + bowl.images()
    assert made == batched.images_generated == alone.images_generated <= 137
    assert batched.best == alone.best and batched.trace == alone.trace


def test_interrupted_batched_search_resumes_to_the_same_result(tmp_path):
    full, _, _ = _search("coarse_to_fine", 8)
    log = tmp_path / "run.jsonl"
    bowl = BatchedBowl()
    with pytest.raises(SearchInterrupted):
        run_search(bowl, STEPS, PROMPTS, "coarse_to_fine", batch_images=8, run_log=log, settings={"seed": 1},
                   should_stop=lambda: len(bowl.batches) >= 3)
    done = sum(len(i) for b in bowl.batches for _, i in b) + bowl.images()   # the identity goes alone
    resumed = run_search(BatchedBowl(), STEPS, PROMPTS, "coarse_to_fine", batch_images=8, run_log=log,
                         settings={"seed": 1})
    assert resumed.best == full.best and resumed.best_score == full.best_score
    assert resumed.images_reused == done and resumed.images_generated == full.images_generated - done


def test_batch_images_must_be_positive():
    with pytest.raises(ValueError, match="batch_images must be a positive integer"):
        run_search(BatchedBowl(), STEPS, PROMPTS, "paper_grid", batch_images=0)


class LevelScorer:
    def score(self, images, prompts):
        level = images.mean(dim=(1, 2, 3))
        return type("Result", (), {"jaq": level})()


def test_a_nan_candidate_in_a_batch_costs_its_batch_mates_nothing():
    """The sampler raises for a whole batch when one latent goes NaN; the batch is halved until the bad samples
    stand alone, and every other sample scores what it scores at batch 1."""
    calls = []

    def generate(items):
        calls.append(len(items))
        if any(schedule.c_x[0] > 1.15 and index == 1 for schedule, index in items):
            raise NonFiniteLatentError("lcm", 1, 4, 0.5)
        return torch.stack([torch.full((4, 4, 3), schedule.c_x[0] / 4 + index / 100) for schedule, index in items])

    failures = []
    evaluate = make_evaluate(generate, LevelScorer(), ["a", "b", "c", "d"], failures=failures)
    result = run_search(evaluate, STEPS, 4, "paper_grid", grid_points=3, batch_images=12)
    alone = run_search(make_evaluate(generate, LevelScorer(), ["a", "b", "c", "d"]), STEPS, 4, "paper_grid",
                       grid_points=3, batch_images=1)
    assert [t["score"] for t in result.trace] == [t["score"] for t in alone.trace]
    bad = [t for t in result.trace if t["schedule"]["c_x"][0] > 1.15]
    assert bad and all(t["score"] == -math.inf for t in bad)
    assert {(f["prompt"], f["reason"]) for f in failures} == {(1, str(NonFiniteLatentError("lcm", 1, 4, 0.5)))}
    assert len(failures) == len(bad)
    assert max(calls) == 12
