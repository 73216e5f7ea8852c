"""The evaluate pipeline: objective chosen by the user, failed images scored worst, common random numbers."""
import math
from types import SimpleNamespace

import pytest
import torch

from comfyui_qsched.calibration.pipeline import image_failure, make_evaluate, model_fingerprint
from comfyui_qsched.calibration.prompts import DEFAULT_PROMPTS, parse_prompts, prompt_seed, prompts_hash
from comfyui_qsched.calibration.search import run_search
from comfyui_qsched.samplers import NonFiniteLatentError, QSchedSchedule


class ComponentScorer:
    """tc is best at c_x start 0.8, iq and jaq = tc + 2 iq at 1.2: picking by tc would be the official code's
    rank-stage bug."""

    def score(self, images, prompts):
        level = images.mean(dim=(1, 2, 3))            # the fake generator encodes c_x start in the pixels
        tc, iq = 1.0 - level, level
        return SimpleNamespace(jaq=tc + 2 * iq, tc=tc, iq=iq)


def fake_image(schedule, index):
    return torch.full((1, 8, 8, 3), schedule.c_x[0] / 2)


def fake_generate(items):
    return torch.cat([fake_image(schedule, index) for schedule, index in items])


def test_winner_is_chosen_by_the_objective_not_a_component():
    prompts = ["a", "b", "c"]
    for objective, expected in (("jaq", 1.2), ("tc", 0.8), ("iq", 1.2)):
        evaluate = make_evaluate(fake_generate, ComponentScorer(), prompts, objective)
        result = run_search(evaluate, 4, len(prompts), "paper_grid", grid_points=5)
        assert result.best.c_x[0] == pytest.approx(expected), objective
    jaq = run_search(make_evaluate(fake_generate, ComponentScorer(), prompts), 4, 3, "paper_grid", grid_points=5)
    tc_of = lambda s: ComponentScorer().score(fake_image(s, 0), ["a"]).tc.item()
    assert max(tc_of(s) for _, s in jaq.ranking) > tc_of(jaq.best)   # a tc-picker would have chosen another


def test_nan_black_and_non_finite_latents_score_nan_and_are_reported():
    def image(index):
        if index == 0:
            return torch.zeros(1, 8, 8, 3)
        if index == 1:
            return torch.full((1, 8, 8, 3), float("nan"))
        return torch.full((1, 8, 8, 3), 0.5)

    def generate(items):
        if any(index == 2 for _, index in items):   # like the sampler: one NaN latent stops its whole batch
            raise NonFiniteLatentError("lcm", 2, 4, 0.5)
        return torch.cat([image(index) for _, index in items])

    failures = []
    evaluate = make_evaluate(generate, ComponentScorer(), list("abcd"), failures=failures)
    scores = evaluate.score(QSchedSchedule.identity(4), [0, 1, 2, 3])
    assert [math.isnan(s) for s in scores] == [True, True, True, False]
    assert [f["reason"] for f in failures] == ["all-black image", "non-finite pixels",
                                                str(NonFiniteLatentError("lcm", 2, 4, 0.5))]
    assert image_failure(torch.full((1, 2, 2, 3), 0.2)) is None


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="unknown objective"):
        make_evaluate(fake_generate, ComponentScorer(), ["a"], "fid")


def test_prompts_seeds_and_hash():
    assert 18 <= len(DEFAULT_PROMPTS) <= 25 and all(len(p.split()) >= 30 for p in DEFAULT_PROMPTS)
    assert len(set(DEFAULT_PROMPTS)) == len(DEFAULT_PROMPTS)
    assert parse_prompts("") == list(DEFAULT_PROMPTS)
    assert parse_prompts(" one \n\n two ") == ["one", "two"]
    assert prompts_hash(["a", "b"]) != prompts_hash(["b", "a"])
    assert len({prompt_seed(7, i) for i in range(25)}) == 25           # every prompt has its own noise


def test_model_fingerprint_sees_weight_changes():
    model = torch.nn.Linear(64, 64)
    before = model_fingerprint(model.state_dict())
    assert before == model_fingerprint(model.state_dict())
    with torch.no_grad():
        model.weight[0, 0] += 1
    assert model_fingerprint(model.state_dict()) != before
