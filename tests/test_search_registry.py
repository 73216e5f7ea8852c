"""A new search strategy is one module (its run and its cost plan) plus one registration line: shown here with a
small strategy that scores the corners and the centre of the space, checked against a brute-force pick."""
from itertools import product

import numpy as np
import pytest

from comfyui_qsched.calibration.run import CalibrationConfig
from comfyui_qsched.calibration.search import STRATEGIES, plan_images, register, run_search
from comfyui_qsched.calibration.search.space import SearchSpace, capped
from test_search import PROMPTS, STEPS, Bowl


# --- the whole new strategy ---------------------------------------------------------------------------------------
def corners(ev, space):
    """The 2^dims corners of c_range and its centre, every candidate on every prompt."""
    points = [*product((space.low, space.high), repeat=space.dims), ((space.low + space.high) / 2,) * space.dims]
    prompts = list(range(ev.n_prompts))
    ev.score_many((space.schedule(p), prompts, p) for p in points)


def corners_plan(space, n_prompts, budget, **_):
    return capped((2 ** space.dims + 2) * n_prompts, budget)   # corners, centre and the identity
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def registered():
    register("corners", corners, corners_plan)   # the registration line
    yield "corners"
    del STRATEGIES["corners"]


def test_a_registered_strategy_runs_plans_and_picks_the_best_candidate(registered):
    bowl = Bowl()
    result = run_search(bowl, STEPS, PROMPTS, registered, c_range=(0.9, 1.1))
    space = SearchSpace("paper", STEPS, (0.9, 1.1))
    candidates = [(0.9, 0.9), (0.9, 1.1), (1.1, 0.9), (1.1, 1.1), (1.0, 1.0)]   # the centre is the identity here
    means = {c: np.mean([bowl.value(space.schedule(c), i) for i in range(PROMPTS)]) for c in candidates}
    best = max(means, key=means.get)
    assert (result.best.c_x[0], result.best.c_eps[0]) == pytest.approx(best)
    assert result.best_score == pytest.approx(means[best])
    assert result.images_generated == 5 * PROMPTS   # the centre coincides with the identity: scored once
    assert plan_images(registered, space, PROMPTS) == 6 * PROMPTS >= result.images_generated
    assert result.strategy == "corners"


def test_a_name_is_registered_once_and_unknown_names_are_refused(registered):
    with pytest.raises(ValueError, match="registered twice"):
        register("corners", corners, corners_plan)
    with pytest.raises(ValueError, match="unknown strategy 'corner'"):
        run_search(Bowl(), STEPS, PROMPTS, "corner")


def test_the_names_saved_workflows_presets_and_run_logs_carry_are_all_registered():
    # the node's choices (saved in workflows), in the node's order; never renamed
    saved = ("racing", "halving_floor", "coarse_to_fine_racing", "paper_grid", "grid_general", "successive_halving",
             "coarse_to_fine", "bayes")
    assert tuple(STRATEGIES) == saved
    assert CalibrationConfig.__dataclass_fields__["strategy"].metadata["setting"].choices == saved
    assert {STRATEGIES[name].space for name in saved} == {"paper", "general"}
