"""The closed-form per-step correction (calibration/closed_form.py) and the per-step offset map it produces:
the fit equals numpy's least squares on the explicit design matrix (bilinear weights written out here, not taken
from torch); a correction inside the model family is recovered exactly along the trajectory; zero maps sample bit
for bit like no map in every sampler; a map fitted at one resolution is resized to another as bilinear resizing
says."""
import numpy as np
import pytest
import torch

from comfyui_qsched.calibration.closed_form import (ClosedFormError, StepReached, fit_schedule, fit_step,
                                                    schedule_from_fits, step_recorder)
from comfyui_qsched.calibration.presets import make_preset, schedule_of, validate
from comfyui_qsched.samplers import SAMPLERS, EPSSampling, FlowSampling, QSchedSchedule, ScheduleError
from comfyui_qsched.samplers.sigmas import few_step_sigmas
from test_samplers_toys import Recorder, ToyModel, initial_noise


def bilinear_matrix(n_out, n_in):
    """[n_out, n_in] weights of 1-D linear resizing with half-pixel centres (align_corners=False), source index
    clamped at 0 and n_in - 1."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        low = min(int(np.floor(src)), n_in - 1)
        high = min(low + 1, n_in - 1)
        frac = src - low
        matrix[i, low] += 1 - frac
        matrix[i, high] += frac
    return matrix


def numpy_fit(x, sigma, dq, dfp, grid, free_c_x):
    """np.linalg.lstsq on the explicit design matrix: one row per sample, channel and pixel."""
    x, dq, dfp = (np.asarray(t, dtype=np.float64) for t in (x, dq, dfp))
    n, c, height, width = x.shape
    up = np.kron(bilinear_matrix(height, grid[0]), bilinear_matrix(width, grid[1]))   # [HW, hw]
    k = up.shape[1]
    columns = [dq.reshape(-1), x.reshape(-1)] if free_c_x else [(dq - x).reshape(-1)]
    target = (dfp if free_c_x else dfp - x).reshape(-1)
    basis = np.zeros((n, c, height * width, c * k))
    for channel in range(c):
        basis[:, channel, :, channel * k:(channel + 1) * k] = up[None]
    basis = basis * np.asarray(sigma, dtype=np.float64).reshape(-1, 1, 1, 1)
    design = np.concatenate([np.stack(columns, 1), basis.reshape(n * c * height * width, c * k)], axis=1)
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    m = len(columns)
    c_eps = solution[0]
    c_x = c_eps + solution[1] if free_c_x else 1.0
    return c_x, c_eps, solution[m:].reshape(c, *grid)


def _batch(seed=0, shape=(6, 3, 16, 12)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    dq = torch.randn(shape, generator=g)
    dfp = 0.9 * dq + 0.05 * x + 0.3 * torch.randn(shape, generator=g) + torch.linspace(-0.2, 0.4, shape[-1])
    sigma = torch.full((shape[0],), 2.5)
    return x, sigma, dq, dfp


@pytest.mark.parametrize("form,grid", [("map", (8, 8)), ("channel", (1, 1))])
@pytest.mark.parametrize("free_c_x", [True, False])
def test_fit_equals_numpy_least_squares(form, grid, free_c_x):
    x, sigma, dq, dfp = _batch()
    sigma = torch.tensor([2.5, 2.5, 1.0, 1.0, 0.5, 0.5])      # one sigma per sample is allowed too
    fit = fit_step(x, sigma, dq, dfp, form=form, map_size=8, free_c_x=free_c_x)
    c_x, c_eps, offset = numpy_fit(x, sigma, dq, dfp, grid, free_c_x)
    assert fit["c_eps"] == pytest.approx(c_eps, rel=1e-9, abs=1e-12)
    assert fit["c_x"] == pytest.approx(c_x, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(fit["offset"].numpy(), offset, rtol=1e-7, atol=1e-10)
    assert fit["residual"] < fit["uncorrected"]


def test_a_map_larger_than_the_latent_is_cut_to_it():
    x, sigma, dq, dfp = _batch(shape=(4, 2, 6, 5))
    fit = fit_step(x, sigma, dq, dfp, form="map", map_size=8)
    assert tuple(fit["offset"].shape) == (2, 6, 5)
    np.testing.assert_allclose(fit["offset"].numpy(), numpy_fit(x, sigma, dq, dfp, (6, 5), True)[2], atol=1e-9)


def test_fit_refuses_mismatched_shapes_and_unknown_forms():
    x, sigma, dq, dfp = _batch()
    with pytest.raises(ClosedFormError, match="share one"):
        fit_step(x, sigma, dq[:, :2], dfp)
    with pytest.raises(ClosedFormError, match="unknown closed-form offset form 'pixel'"):
        fit_step(x, sigma, dq, dfp, form="pixel")


def _resize(grid, size):
    """numpy bilinear resize of a [C, h, w] grid to size (H, W)."""
    grid = np.asarray(grid, dtype=np.float64)
    rows, cols = bilinear_matrix(size[0], grid.shape[1]), bilinear_matrix(size[1], grid.shape[2])
    return np.einsum("Hh,chw,Ww->cHW", rows, grid, cols)


class DistortedModel:
    """A 'quantized' toy: D_q = (D_fp - (c_x - c_eps) x - sigma * resize(map_i)) / c_eps with known per-step
    values, so the closed-form correction (c_x, c_eps, map_i) restores D_fp exactly."""

    def __init__(self, fp, sigmas, c_x, c_eps, maps):
        self.fp, self.sigmas, self.c_x, self.c_eps, self.maps = fp, sigmas, c_x, c_eps, maps
        self.inner_model = fp.inner_model

    def __call__(self, x, sigma, **extra_args):
        i = int((self.sigmas[:-1] - sigma[0]).abs().argmin())
        resized = torch.tensor(_resize(self.maps[i], x.shape[-2:]), dtype=x.dtype)[None]
        return (self.fp(x, sigma) - (self.c_x[i] - self.c_eps[i]) * x - sigma[0] * resized) / self.c_eps[i]


def _trajectory(sampler, quantized, fp, x0, sigmas, model_sampling):
    def trajectory(schedule, step):
        record = []
        try:
            SAMPLERS[sampler].function(step_recorder(quantized, step, record), x0, sigmas, extra_args={"seed": 5},
                                       disable=True, schedule=schedule, model_sampling=model_sampling)
        except StepReached:
            pass
        x, sigma, dq = record[0]
        return x, sigma, dq, fp(x, sigma)
    return trajectory


def test_fit_along_the_trajectory_recovers_a_distortion_in_the_family_and_the_fp_sample():
    steps, ms = 3, EPSSampling()
    sigmas = few_step_sigmas("lcm", ms.sigmas, steps)
    fp = ToyModel(ms, seed=3)
    g = torch.Generator().manual_seed(9)
    maps = [(torch.randn(4, 3, 3, generator=g) * 0.1).tolist() for _ in range(steps)]
    c_x, c_eps = [1.05, 0.97, 1.02], [0.9, 1.1, 0.95]
    quantized = DistortedModel(fp, sigmas, c_x, c_eps, maps)
    x0 = initial_noise(shape=(8, 4, 6, 6)) * sigmas[0]
    schedule, fits = fit_schedule(_trajectory("lcm", quantized, fp, x0, sigmas, ms), steps, "lcm", form="map",
                                  map_size=3)
    assert schedule.c_x == pytest.approx(c_x, abs=1e-4) and schedule.c_eps == pytest.approx(c_eps, abs=1e-4)
    np.testing.assert_allclose(np.asarray(schedule.offset_map), np.asarray(maps), atol=1e-4)
    assert all(fit["residual"] < 1e-8 for fit in fits)
    reference = SAMPLERS["lcm"].function(fp, x0, sigmas, extra_args={"seed": 5}, disable=True, model_sampling=ms)
    corrected = SAMPLERS["lcm"].function(quantized, x0, sigmas, extra_args={"seed": 5}, disable=True,
                                         schedule=schedule, model_sampling=ms)
    naive = SAMPLERS["lcm"].function(quantized, x0, sigmas, extra_args={"seed": 5}, disable=True, model_sampling=ms)
    assert torch.allclose(corrected, reference, atol=1e-4)
    assert (naive - reference).abs().max() > 100 * (corrected - reference).abs().max()


def test_samplers_that_read_x_prime_keep_c_x_one():
    steps, ms = 2, EPSSampling()
    sigmas = few_step_sigmas("lcm", ms.sigmas, steps)
    fp = ToyModel(ms, seed=3)
    quantized = DistortedModel(fp, sigmas, [1.0, 1.0], [0.9, 1.1], [[[[0.05]]] * 4] * steps)
    x0 = initial_noise(shape=(4, 4, 6, 6)) * sigmas[0]
    schedule, _ = fit_schedule(_trajectory("euler", quantized, fp, x0, sigmas, ms), steps, "euler", form="channel")
    assert schedule.c_x == (1.0, 1.0) and schedule.c_eps == pytest.approx((0.9, 1.1), abs=1e-5)
    assert np.asarray(schedule.offset) == pytest.approx(0.05, abs=1e-5)
    assert schedule.offset_map is None and schedule.sampler == "euler"


def test_non_positive_coefficients_are_refused_with_the_step():
    fit = {"c_x": 1.0, "c_eps": -0.2, "offset": torch.zeros(1, 1, 1)}
    with pytest.raises(ClosedFormError, match=r"step\(s\) \[0\]"):
        schedule_from_fits([fit], 2, "channel")


CASES = [("euler", False), ("euler", True), ("euler_ancestral", False), ("euler_ancestral", True), ("lcm", False),
         ("lcm", True), ("tcd", False)]


def _sample(name, flow, schedule, shape=(2, 4, 6, 6), steps=4):
    ms = FlowSampling() if flow else EPSSampling()
    sigmas = few_step_sigmas("flow" if flow else "lcm", ms.sigmas, steps)
    recorder = Recorder()
    out = SAMPLERS[name].function(ToyModel(ms, flow=flow), initial_noise(shape=shape) * sigmas[0], sigmas,
                                  extra_args={"seed": 17}, callback=recorder, disable=True, schedule=schedule)
    return out, recorder.steps


@pytest.mark.parametrize("coefficients", ["identity", "linear"])
@pytest.mark.parametrize("name,flow", CASES, ids=[f"{n}-{'flow' if f else 'eps'}" for n, f in CASES])
def test_zero_offset_maps_sample_bit_for_bit_like_no_map(name, flow, coefficients):
    plain = QSchedSchedule.identity(4) if coefficients == "identity" else QSchedSchedule.linear(4, 0.93, 1.08)
    reference, reference_steps = _sample(name, flow, plain)
    zero = QSchedSchedule(plain.c_x, plain.c_eps, offset_map=[[[[0.0] * 3] * 2] * 4] * 4)
    assert not zero.has_offset and zero.is_identity == plain.is_identity
    out, recorded = _sample(name, flow, zero)
    assert torch.equal(out, reference)
    assert all(torch.equal(a["denoised"], b["denoised"]) for a, b in zip(recorded, reference_steps))
    moved = QSchedSchedule(plain.c_x, plain.c_eps, offset_map=[[[[0.0] * 3] * 2] * 4] * 3 + [[[[0.1] * 3] * 2] * 4])
    assert not torch.equal(_sample(name, flow, moved)[0], reference)


@pytest.mark.parametrize("size", [(6, 6), (16, 16), (9, 20)])
def test_a_map_applies_at_any_latent_size_as_its_bilinear_resize(size):
    ms = EPSSampling()
    sigmas = few_step_sigmas("lcm", ms.sigmas, 1)
    grid = (torch.arange(4 * 3 * 3, dtype=torch.float64).reshape(4, 3, 3) / 50 - 0.3).tolist()
    schedule = QSchedSchedule((1.0,), (1.0,), offset_map=[grid], offset=[[0.01, 0.0, -0.02, 0.0]])
    shape = (2, 4, *size)
    base, _ = _sample("lcm", False, QSchedSchedule.identity(1), shape=shape, steps=1)
    moved, _ = _sample("lcm", False, schedule, shape=shape, steps=1)
    # one LCM step returns D' = D + sigma_0 * (channel offset + resize(map))
    expected = float(sigmas[0]) * (_resize(grid, size) + np.array([0.01, 0.0, -0.02, 0.0])[:, None, None])
    np.testing.assert_allclose((moved - base).numpy(), np.broadcast_to(expected, shape), atol=2e-5)


def test_a_batch_of_schedules_applies_each_sample_its_own_map():
    from comfyui_qsched.samplers.batch import ScheduleBatch
    grid = [[[0.2, -0.1], [0.0, 0.3]]] * 4
    with_map = QSchedSchedule((1.0,), (1.0,), offset_map=[grid])
    plain = QSchedSchedule.identity(1)
    alone, _ = _sample("lcm", False, with_map, shape=(1, 4, 6, 6), steps=1)
    together, _ = _sample("lcm", False, ScheduleBatch([with_map, plain]), shape=(2, 4, 6, 6), steps=1)
    base, _ = _sample("lcm", False, plain, shape=(2, 4, 6, 6), steps=1)
    assert torch.allclose(together[:1], alone, atol=1e-6)
    assert torch.equal(together[1:], base[1:])


def test_bad_maps_are_refused_with_the_problem_named():
    with pytest.raises(ScheduleError, match="one per step"):
        QSchedSchedule((1.0, 1.0), (1.0, 1.0), offset_map=[[[[0.0]]]])
    with pytest.raises(ScheduleError, match="not finite"):
        QSchedSchedule((1.0,), (1.0,), offset_map=[[[[float("nan")]]]])
    with pytest.raises(ScheduleError, match="different shapes"):
        QSchedSchedule((1.0, 1.0), (1.0, 1.0), offset_map=[[[[0.0]]], [[[0.0, 1.0]]]])
    with pytest.raises(ScheduleError, match=r"\[channels\]\[rows\]\[columns\]"):
        QSchedSchedule((1.0,), (1.0,), offset_map=[[0.0, 1.0]])
    with pytest.raises(ScheduleError, match="2 channel"):
        _sample("lcm", False, QSchedSchedule((1.0,), (1.0,), offset_map=[[[[0.1]]] * 2]), steps=1)


def test_a_map_round_trips_through_dicts_and_presets():
    grid = [[[0.25, -0.5], [0.125, 0.0]]] * 2
    schedule = QSchedSchedule((1.0, 1.02), (0.98, 1.0), sampler="lcm", offset_map=[grid, grid])
    assert QSchedSchedule.from_dict(schedule.to_dict()) == schedule
    preset = make_preset(schedule, model_name="toy")
    validate(preset)
    assert preset["offset_map"] == [grid, grid]
    assert schedule_of(preset).offset_map == schedule.offset_map
    assert "offset_map" not in make_preset(QSchedSchedule.identity(2), model_name="toy", sampler="lcm")
