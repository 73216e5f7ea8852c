"""Calibration against the full-precision model: distances, the reference evaluate, the per-step free-parameter
refinement (scipy Powell) and the PTQD-style fit, on toy models whose exact correction is known in closed form.

A toy "quantized" model predicts eps_Q = (1 + k) eps_FP + delta (delta a constant per step and channel). The exact
correction is c_x = 1, c_eps = 1 / (1 + k), b = delta / (1 + k): with it the quantized sampler reproduces the FP
sampler's latents, so the reference distance can reach 0. The tests check that the search finds it."""
import math

import numpy as np
import pytest
import torch

from comfyui_qsched.calibration import optimise, ptqd, reference
from comfyui_qsched.calibration.search import run_search
from comfyui_qsched.samplers import SAMPLERS, EPSSampling, NonFiniteLatentError, QSchedSchedule, ScheduleError
from comfyui_qsched.samplers.sigmas import few_step_sigmas
from test_samplers_toys import ToyModel, initial_noise

STEPS = 2
GAIN = (0.08, -0.05)                          # k per step
DELTA = ((0.10, -0.06, 0.03, 0.0), (0.04, 0.02, -0.05, 0.08))  # delta per step and channel


class QuantizedToy(ToyModel):
    """eps_Q = (1 + k_i) eps_FP + delta_i, step i found from sigma."""

    def __init__(self, sigmas, gain=GAIN, delta=DELTA):
        super().__init__(EPSSampling())
        self.sigmas, self.gain, self.delta = sigmas, gain, torch.tensor(delta)

    def __call__(self, x, sigma, **extra_args):
        fp = super().__call__(x, sigma, **extra_args)
        s = float(sigma[0])
        i = int((self.sigmas[:-1] - s).abs().argmin())
        eps = (x - fp) / s
        eps_q = (1 + self.gain[i]) * eps + self.delta[i].reshape(1, -1, 1, 1)
        return x - s * eps_q


def _sigmas(steps=STEPS):
    return few_step_sigmas("lcm", EPSSampling().sigmas, steps)


def _sample(model, schedule, prompt, sampler="euler", steps=STEPS):
    """One calibration prompt's latent [1, 4, 6, 6]: its own noise (seed 100 + prompt)."""
    sigmas = _sigmas(steps)
    x = initial_noise(seed=100 + prompt, shape=(1, 4, 6, 6)) * sigmas[0]
    return SAMPLERS[sampler].function(model, x, sigmas, extra_args={"seed": prompt}, disable=True, schedule=schedule)


def _generator(model):
    """The batch generator interface: generate([(schedule, prompt), ...]) -> latents [N, 4, 6, 6]."""
    return lambda items: torch.cat([_sample(model, schedule, prompt) for schedule, prompt in items])


def _references(model, calls=None):
    def sample(indices):
        if calls is not None:
            calls.append(list(indices))
        return torch.cat([_sample(model, None, i) for i in indices])
    return reference.ReferenceOutputs(sample)


def _exact_schedule(per_channel=True):
    c_eps = [1 / (1 + k) for k in GAIN]
    offset = [[d * g for d in row] if per_channel else [sum(row) / len(row) * g] for row, g in zip(DELTA, c_eps)]
    return QSchedSchedule.from_lists([1.0] * STEPS, c_eps, offset=offset)


# --- distances ---------------------------------------------------------------------------------------------------

def test_distances_against_torch_functional():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    expected = torch.stack([torch.nn.functional.mse_loss(a[i], b[i]) for i in range(3)])
    torch.testing.assert_close(reference.latent_distance(a, b), expected)
    torch.testing.assert_close(reference.relative_latent_error(a, b), expected / (b ** 2).mean(dim=(1, 2, 3)))
    images = torch.rand(2, 8, 8, 3, generator=g)
    assert torch.equal(reference.image_distance(images, images), torch.zeros(2))
    f = torch.randn(2, 16, generator=g)
    torch.testing.assert_close(reference.feature_distance(f, 3 * f), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(reference.feature_distance(f, -f), torch.full((2,), 2.0))
    with pytest.raises(reference.ReferenceError, match="same latent"):
        reference.latent_distance(a, b[:, :2])


def test_jaq_with_reference_subtracts_the_weighted_relative_error():
    jaq = torch.tensor([2.5, 2.0])
    z_fp = torch.ones(2, 1, 2, 2)
    z_q = z_fp.clone()
    z_q[1] += 0.5                                  # relative error 0.25 for the second sample
    torch.testing.assert_close(reference.jaq_with_reference(jaq, z_q, z_fp, 2.0), torch.tensor([2.5, 1.5]))
    torch.testing.assert_close(reference.jaq_with_reference(jaq, z_q, z_fp, 0.0), jaq)


# --- the reference evaluate --------------------------------------------------------------------------------------

def test_reference_evaluate_scores_minus_the_distance_and_samples_the_reference_once():
    sigmas = _sigmas()
    fp, quantized = ToyModel(EPSSampling()), QuantizedToy(sigmas)
    calls = []
    evaluate = reference.make_reference_evaluate(_generator(quantized), None, _references(fp, calls),
                                                 "reference_latent")
    naive = evaluate.score(QSchedSchedule.identity(STEPS), [0, 1, 2])
    exact, partly = evaluate.score_many([(_exact_schedule(), [0, 1, 2]), (QSchedSchedule.identity(STEPS), [3, 0])])
    assert calls == [[0, 1, 2], [3]]            # one batch per call, cached: later candidates reuse the FP latents
    assert partly[1] == naive[0]
    for i, value in enumerate(naive):
        expected = -torch.nn.functional.mse_loss(_sample(quantized, None, i), _sample(fp, None, i)).item()
        assert value == pytest.approx(expected, rel=1e-5)
    assert max(exact) > -1e-9 and min(naive) < -1e-4   # the exact correction reproduces the FP latents


def test_reference_evaluate_scores_failures_worst_and_reports_them():
    failures = []
    outputs = reference.ReferenceOutputs(lambda indices: torch.zeros(len(indices), 4, 2, 2))

    def generate(items):
        if any(index == 2 for _, index in items):      # the sampler stops the whole batch on a NaN latent
            raise NonFiniteLatentError("euler", 0, 1, 1.0)
        return torch.stack([torch.full((4, 2, 2), float("nan") if index == 1 else 0.5) for _, index in items])

    evaluate = reference.make_reference_evaluate(generate, None, outputs, "reference_latent", failures=failures)
    scores = evaluate.score(QSchedSchedule.identity(1), [0, 1, 2, 3])
    assert scores[0] == scores[3] == pytest.approx(-0.25) and math.isnan(scores[1]) and math.isnan(scores[2])
    assert [(f["prompt"], f["reason"][:18]) for f in failures] == [(1, "non-finite latent"), (2, "euler: the latent ")]
    bad = reference.ReferenceOutputs(lambda indices: torch.full((len(indices), 4, 2, 2), float("inf")))
    with pytest.raises(reference.ReferenceError, match="reference produced NaN"):
        reference.make_reference_evaluate(lambda items: torch.zeros(len(items), 4, 2, 2), None, bad,
                                          "reference_latent").score(QSchedSchedule.identity(1), [0])


# --- the free per-step parameters and the optimiser ---------------------------------------------------------------

def test_free_schedule_vector_round_trip_and_layout():
    free = optimise.FreeSchedule(3, "per_step_channel_offset", (0.5, 1.5), channels=2)
    assert free.dims == 3 * (2 + 2) and len(free.bounds()) == free.dims
    start = QSchedSchedule.from_lists([0.9, 1.0, 1.1], [1.2, 1.1, 1.0], offset=[[0.1, -0.1], [0.0, 0.2], [0.3, 0.0]])
    vector = free.vector(start)
    assert vector[:6].tolist() == [0.1, -0.1, 0.0, 0.2, 0.3, 0.0]           # offsets first
    again = free.schedule(vector)
    assert (again.c_x, again.c_eps, again.offset) == (start.c_x, start.c_eps, start.offset)
    no_offsets = optimise.FreeSchedule(3, "per_step")
    assert no_offsets.dims == 6 and no_offsets.schedule(no_offsets.vector(start)).offset is None
    scalar = optimise.FreeSchedule(3, "per_step_offset").vector(QSchedSchedule.identity(3))
    assert scalar.tolist() == [0.0] * 3 + [1.0] * 6
    clipped = optimise.FreeSchedule(1, "per_step_offset", (0.8, 1.2), offset_bound=0.1).schedule([5.0, 0.1, 3.0])
    assert clipped.offset == ((0.1,),) and clipped.c_eps == (0.8,) and clipped.c_x == (1.2,)
    with pytest.raises(ValueError, match="unknown refinement form"):
        optimise.FreeSchedule(2, "per_pixel")


def test_refine_finds_a_known_per_step_optimum():
    """A smooth objective with its maximum at known per-step values off the linspace(start, 1) family."""
    target = QSchedSchedule.from_lists([0.95, 1.08, 0.97], [1.1, 0.9, 1.04], offset=[[0.2], [-0.1], [0.05]])
    free = optimise.FreeSchedule(3, "per_step_offset", (0.5, 1.5))
    goal = free.vector(target)

    def score(schedule):
        return -float(((free.vector(schedule) - goal) ** 2).sum())

    best, best_score, evaluations = optimise.refine(score, QSchedSchedule.identity(3), free, max_evaluations=2000,
                                                    tolerance=1e-6)
    np.testing.assert_allclose(free.vector(best), goal, atol=1e-3)
    assert best_score > -1e-5 and evaluations <= 2000


@pytest.mark.parametrize("form,per_channel", [("per_step_offset", False), ("per_step_channel_offset", True)])
def test_search_with_refinement_recovers_the_exact_correction(form, per_channel, tmp_path):
    sigmas = _sigmas()
    fp, quantized = ToyModel(EPSSampling()), QuantizedToy(sigmas, delta=DELTA if per_channel else
                                                          tuple((sum(r) / 4,) * 4 for r in DELTA))
    evaluate = reference.make_reference_evaluate(_generator(quantized), None, _references(fp), "reference_latent")
    refine = {"form": form, "evaluations": 1000, "channels": 4, "c_range": (0.7, 1.3)}
    log = tmp_path / "log" if not per_channel else None       # one resume check is enough (fsync per candidate)
    result = run_search(evaluate, STEPS, 3, "paper_grid", grid_points=5, refine=refine, run_log=log)
    start = result.refinement["start_score"]
    assert start < -1e-3 and result.best_score > 0.01 * start    # the grid alone cannot get there; this can
    # The fit matters where it is used: a prompt it never saw comes out (nearly) as the FP model's latent.
    held_out = _sample(fp, None, 7)
    assert (_sample(quantized, result.best, 7) - held_out).pow(2).mean() < 0.01 * (
        _sample(quantized, None, 7) - held_out).pow(2).mean()
    if not per_channel:
        # The first step's coefficients are well determined (sigma 14.6 multiplies them); the two offsets trade
        # against each other along the flat direction of the shift they add up to, b_0 (sigma_0 - sigma_1) c_x[1]
        # + b_1 sigma_1 (each alone comes out within about 0.004 and 0.03 of the exact values, on 3 or 6 prompts
        # alike), and at the last step c_x - 1 times the latent's mean can stand in for part of the offset; with one
        # offset per channel even more so. So the scalar form's first-step coefficients and the offsets' total
        # shift are compared with the exact correction's.
        exact = _exact_schedule(per_channel)
        assert result.best.c_eps[0] == pytest.approx(exact.c_eps[0], abs=5e-3)
        assert result.best.c_x[0] == pytest.approx(exact.c_x[0], abs=5e-3)
        sigmas = _sigmas().tolist()

        def shift(schedule):
            b = [row[0] for row in schedule.offset]
            return b[0] * (sigmas[0] - sigmas[1]) * schedule.c_x[1] + b[1] * (sigmas[1] - sigmas[2])
        assert shift(result.best) == pytest.approx(shift(exact), rel=2e-2)
    phases = {entry["phase"] for entry in result.trace}
    assert phases == {"search", "refine"} and result.refinement["images"] <= 1000 * 3
    if log is not None:
        again = run_search(evaluate, STEPS, 3, "paper_grid", grid_points=5, refine=refine, run_log=log)
        assert again.images_generated == 0 and again.best == result.best   # the run log resumes the refinement


def test_refinement_budget_is_respected():
    seen = []

    def evaluate(schedule, prompts):
        seen.append(len(prompts))
        return [-float(sum((c - 1.1) ** 2 for c in schedule.c_x + schedule.c_eps))] * len(prompts)

    result = run_search(evaluate, 2, 4, "paper_grid", grid_points=3, refine={"form": "per_step", "evaluations": 7})
    assert result.refinement["images"] <= 7 * 4 and result.images_generated == sum(seen)
    assert result.best_score >= result.refinement["start_score"]
    with pytest.raises(ValueError, match="unknown refinement option"):
        run_search(evaluate, 2, 4, "paper_grid", grid_points=3, refine={"form": "per_step", "iterations": 3})


# --- PTQD-style fit ------------------------------------------------------------------------------------------------

def test_ptqd_fit_recovers_gain_and_mean_and_its_schedule_undoes_them():
    g = torch.Generator().manual_seed(3)
    eps_fp = torch.randn(64, 4, 6, 6, generator=g)
    delta = torch.tensor([0.2, -0.1, 0.05, 0.0]).reshape(1, 4, 1, 1)
    eps_q = 1.07 * eps_fp + delta
    scalar = ptqd.fit_step(eps_fp, eps_q)
    channel = ptqd.fit_step(eps_fp, eps_q, per_channel=True)
    assert scalar["k"] == pytest.approx(0.07, abs=2e-3) and scalar["mean"] == pytest.approx(0.0375, abs=2e-3)
    np.testing.assert_allclose(channel["mean"], [0.2, -0.1, 0.05, 0.0], atol=3e-3)
    schedule = ptqd.ptqd_schedule([channel])
    corrected = schedule.c_eps[0] * eps_q - torch.tensor(schedule.offset[0]).reshape(1, 4, 1, 1)
    torch.testing.assert_close(corrected, eps_fp, atol=5e-3, rtol=0)
    assert schedule.c_x == (1.0,)
    with pytest.raises(ValueError, match="eps shapes differ"):
        ptqd.fit_step(eps_fp, eps_q[:, :2])


def test_ptqd_schedule_corrects_the_quantized_toy_sampler():
    """Fit along the quantized trajectory (the same inputs through both models), then sample with the schedule."""
    sigmas = _sigmas()
    fp, quantized = ToyModel(EPSSampling()), QuantizedToy(sigmas)
    fits, x = [], torch.cat([initial_noise(seed=s) for s in range(8)]) * sigmas[0]
    for i in range(STEPS):
        s = sigmas[i].reshape(1)
        d_fp, d_q = fp(x, s), quantized(x, s)
        fits.append(ptqd.fit_step(ptqd.eps_from_denoised(x, s, d_fp), ptqd.eps_from_denoised(x, s, d_q), True))
        x = x + (sigmas[i + 1] - sigmas[i]) * ptqd.eps_from_denoised(x, s, d_q)
    schedule = ptqd.ptqd_schedule(fits, sampler="euler")
    target = _sample(fp, None, 0)
    fixed = _sample(quantized, schedule, 0)
    naive = _sample(quantized, None, 0)
    # PTQD's gain is a regression without intercept, so with eps of non-zero mean it is not exact: much closer
    assert (fixed - target).pow(2).mean() < 0.05 * (naive - target).pow(2).mean()


def test_offset_schedules_still_refuse_other_step_counts():
    with pytest.raises(ScheduleError, match="2 coefficient pairs but sampling runs 3"):
        _exact_schedule().check(3)


def test_the_plot_shows_the_refinement():
    from comfyui_qsched.calibration.plot import REFINE, plot_result

    def evaluate(schedule, prompts):
        b = 0.0 if schedule.offset is None else schedule.offset[0][0]
        return [-float(sum((c - 1.05) ** 2 for c in schedule.c_x + schedule.c_eps) + (b - 0.1) ** 2)] * len(prompts)

    def refine_pixels(result):
        image = (plot_result(result)[0] * 255).round().to(torch.uint8)
        return int((image == torch.tensor(REFINE, dtype=torch.uint8)).all(dim=-1).sum())

    plain = run_search(evaluate, 2, 2, "paper_grid", grid_points=3)
    refined = run_search(evaluate, 2, 2, "paper_grid", grid_points=3,
                         refine={"form": "per_step_offset", "evaluations": 60})
    assert refine_pixels(plain) == 0
    assert refine_pixels(refined) > 200         # the dotted start line, the refinement's curve and its values
    assert refined.best.offset is not None and refined.best_score > plain.best_score
