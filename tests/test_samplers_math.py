"""With coefficients != 1 each sampler equals the paper's formulas computed by hand (float64), one model call per
step whatever the coefficients, and bad input fails with a clear error before the first model call."""
import math

import pytest
import torch

from comfyui_qsched.samplers import (SAMPLERS, EPSSampling, FlowSampling, NonFiniteLatentError, QSchedSchedule,
                                     ScheduleError)
from comfyui_qsched.samplers.sigmas import few_step_sigmas
from test_samplers_toys import Recorder, ToyModel, initial_noise

SCHEDULE = QSchedSchedule.from_lists([1.012, 0.997, 0.982, 0.967], [0.955, 1.003, 1.051, 1.099])
OFFSET_SCHEDULES = {
    "scalar": QSchedSchedule.from_lists(SCHEDULE.c_x, SCHEDULE.c_eps, offset=[0.06, -0.02, 0.03, 0.01]),
    "channel": QSchedSchedule.from_lists(SCHEDULE.c_x, SCHEDULE.c_eps,
                                         offset=[[0.05, -0.04, 0.0, 0.02], [0.01, 0.03, -0.02, 0.0],
                                                 [-0.03, 0.02, 0.04, 0.01], [0.02, 0.0, -0.01, 0.03]]),
}


def _noises(steps, seed=9):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(initial_noise().shape, generator=g) for _ in range(steps)]


def _run(name, flow, sigmas, schedule, noises, **options):
    ms = FlowSampling() if flow else EPSSampling()
    model, recorder, draws = ToyModel(ms, flow=flow), Recorder(), iter(noises)
    out = SAMPLERS[name].function(model, initial_noise() * sigmas[0], sigmas, callback=recorder, disable=True,
                                  schedule=schedule, noise_sampler=lambda s, sn: next(draws), **options)
    return out, recorder, model


def _hand(name, flow, sigmas, schedule, noises, gamma=0.5, eta=1.0, s_noise=1.0):
    """The reference formulas, step by step in float64, with the toy's prediction (eps or v) written out."""
    toy = ToyModel(None, flow=flow)
    table = EPSSampling().sigmas.double()
    x = (initial_noise() * sigmas[0]).double()
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        s, sn, c_x, c_eps, z = sig[i], sig[i + 1], schedule.c_x[i], schedule.c_eps[i], noises[i].double()
        b = 0.0 if schedule.offset is None else torch.tensor(schedule.offset[i], dtype=torch.float64)
        b = b.reshape(1, -1, 1, 1) if isinstance(b, torch.Tensor) else b
        if flow:
            pred = toy.prediction(x.float(), s).double()
        else:
            pred = toy.prediction((x / math.sqrt(1 + s * s)).float(), s).double()
        if name == "tcd":  # Eq. 4 in the VP parametrisation of diffusers' TCDScheduler
            abar = lambda sigma: 1.0 / (1.0 + sigma * sigma)  # noqa: E731
            x_vp = x * math.sqrt(abar(s))
            x0 = (c_x * x_vp - math.sqrt(1 - abar(s)) * (c_eps * pred - b)) / math.sqrt(abar(s))
            t_next = int((table - sn).abs().argmin()) if sn > 0 else 0
            a_s = abar(float(table[math.floor((1 - gamma) * t_next)]))
            x_s = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * (c_eps * pred - b)
            if sn == 0:
                x = x_s  # diffusers' last step: the VP latent at timestep 0
            else:
                x_prev = math.sqrt(abar(sn) / a_s) * x_s + math.sqrt(1 - abar(sn) / a_s) * z
                x = x_prev / math.sqrt(abar(sn))
            continue
        x_q, pred_q = c_x * x, c_eps * pred - b
        denoised_q = x_q - s * pred_q
        if name == "euler":
            x = x_q + (sn - s) * pred_q
        elif name == "lcm":
            x = denoised_q if sn == 0 else (sn * z + (1 - sn) * denoised_q if flow else denoised_q + sn * z)
        elif name == "euler_ancestral" and not flow:
            up = min(sn, eta * math.sqrt(sn ** 2 * (s ** 2 - sn ** 2) / s ** 2))
            down = math.sqrt(sn ** 2 - up ** 2)
            x = denoised_q if down == 0 else x_q + (down - s) * pred_q + s_noise * up * z
        elif name == "euler_ancestral":  # rectified-flow variant
            if sn == 0:
                x = denoised_q
            else:
                down = sn * (1 + (sn / s - 1) * eta)
                renoise = math.sqrt(sn ** 2 - down ** 2 * (1 - sn) ** 2 / (1 - down) ** 2)
                x = (1 - sn) / (1 - down) * (x_q + (down - s) * pred_q) + s_noise * renoise * z
    return x


CASES = [("euler", False), ("euler", True), ("euler_ancestral", False), ("euler_ancestral", True), ("lcm", False),
         ("lcm", True), ("tcd", False)]


@pytest.mark.parametrize("name,flow", CASES, ids=[f"{n}-{'flow' if f else 'eps'}" for n, f in CASES])
def test_coefficients_follow_the_reference_formulas(name, flow):
    sigmas = few_step_sigmas("trailing" if flow else "lcm", (FlowSampling() if flow else EPSSampling()).sigmas, 4)
    noises = _noises(4)
    options = {"gamma": 0.5} if name == "tcd" else {"eta": 0.8, "s_noise": 0.9} if name == "euler_ancestral" else {}
    ours, _, model = _run(name, flow, sigmas, SCHEDULE, noises, **options)
    expected = _hand(name, flow, sigmas, SCHEDULE, noises, **options)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
    identity, _, _ = _run(name, flow, sigmas, QSchedSchedule.identity(4), noises, **options)
    assert (ours - identity).abs().max() > 1e-3  # the coefficients do change the result
    assert model.calls == 4


@pytest.mark.parametrize("kind", OFFSET_SCHEDULES)
@pytest.mark.parametrize("name,flow", CASES, ids=[f"{n}-{'flow' if f else 'eps'}" for n, f in CASES])
def test_offsets_follow_the_reference_formulas(name, flow, kind):
    """eps' = c_eps * eps - b (b scalar or per latent channel), written out by hand in float64."""
    schedule = OFFSET_SCHEDULES[kind]
    sigmas = few_step_sigmas("trailing" if flow else "lcm", (FlowSampling() if flow else EPSSampling()).sigmas, 4)
    noises = _noises(4)
    options = {"gamma": 0.5} if name == "tcd" else {"eta": 0.8, "s_noise": 0.9} if name == "euler_ancestral" else {}
    ours, _, model = _run(name, flow, sigmas, schedule, noises, **options)
    torch.testing.assert_close(ours.double(), _hand(name, flow, sigmas, schedule, noises, **options),
                               rtol=1e-5, atol=1e-5)
    without, _, _ = _run(name, flow, sigmas, SCHEDULE, noises, **options)
    assert (ours - without).abs().max() > 1e-3  # the offsets do change the result
    assert model.calls == 4


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "lcm", "tcd"])
def test_callback_reports_the_qsched_denoised_estimate(name):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 4)
    _, recorder, _ = _run(name, False, sigmas, SCHEDULE, _noises(4))
    toy = ToyModel(EPSSampling())
    for i, step in enumerate(recorder.steps):
        x, s = step["x"], step["sigma"]
        assert step["i"] == i and torch.equal(s, sigmas[i]) and torch.equal(step["sigma_hat"], sigmas[i])
        expected = SCHEDULE.c_eps[i] * toy(x, s.reshape(1)) + (SCHEDULE.c_x[i] - SCHEDULE.c_eps[i]) * x
        torch.testing.assert_close(step["denoised"], expected)


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "lcm", "tcd"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_exactly_one_model_call_per_step(name, steps):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, steps)
    for schedule in (None, QSchedSchedule.identity(steps), QSchedSchedule.constant(steps, 0.9, 1.1),
                     QSchedSchedule.linear(steps, 1.1, 0.85)):
        model = ToyModel(EPSSampling())
        SAMPLERS[name].function(model, initial_noise() * sigmas[0], sigmas, extra_args={"seed": 1}, disable=True,
                                schedule=schedule)
        assert model.calls == steps


def test_same_seed_same_result_and_schedule_none_is_identity():
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 4)
    for spec in SAMPLERS.values():
        runs = [spec.function(ToyModel(EPSSampling()), initial_noise() * sigmas[0], sigmas, extra_args={"seed": 4},
                              disable=True, schedule=schedule) for schedule in (None, QSchedSchedule.identity(4))]
        assert torch.equal(runs[0], runs[1])


def test_model_sampling_is_found_on_the_wrapped_model_or_given():
    sigmas = few_step_sigmas("flow", FlowSampling().sigmas, 4)
    x, noises = initial_noise(), _noises(4)
    found, _, _ = _run("lcm", True, sigmas, SCHEDULE, noises)
    draws = iter(noises)
    bare = ToyModel(None, flow=True)
    given = SAMPLERS["lcm"].function(bare, x * sigmas[0], sigmas, disable=True, schedule=SCHEDULE,
                                     model_sampling=FlowSampling(), noise_sampler=lambda s, sn: next(draws))
    assert torch.equal(found, given)


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SAMPLERS))
def test_schedule_length_mismatch_fails_before_sampling(name):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 4)
    model = ToyModel(EPSSampling())
    with pytest.raises(ScheduleError, match="3 coefficient pairs but sampling runs 4 steps"):
        SAMPLERS[name].function(model, initial_noise(), sigmas, disable=True, schedule=QSchedSchedule.identity(3))
    assert model.calls == 0


def test_tcd_refuses_flow_models_before_sampling():
    model = ToyModel(FlowSampling(), flow=True)
    with pytest.raises(ValueError, match="EPS .* only; this is a flow model"):
        SAMPLERS["tcd"].function(model, initial_noise(), few_step_sigmas("flow", FlowSampling().sigmas, 4))
    assert model.calls == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"schedule": {"c_x": [1] * 4}}, "must be a QSchedSchedule"),
    ({"s_churn": 1.0}, "unknown option.*s_churn"),
])
def test_bad_arguments_are_named(kwargs, message):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 4)
    model = ToyModel(EPSSampling())
    with pytest.raises((ScheduleError, TypeError), match=message):
        SAMPLERS["euler"].function(model, initial_noise(), sigmas, disable=True, **kwargs)
    assert model.calls == 0


@pytest.mark.parametrize("sigmas,message", [
    (torch.tensor([1.0]), "at least 2 sigmas"),
    (torch.tensor([[1.0, 0.0]]), "1-D"),
    (torch.tensor([1.0, float("nan"), 0.0]), "finite and non-negative"),
    (torch.tensor([1.0, -0.5, 0.0]), "finite and non-negative"),
])
def test_bad_sigmas_are_refused(sigmas, message):
    with pytest.raises(ValueError, match=message):
        SAMPLERS["lcm"].function(ToyModel(EPSSampling()), initial_noise(), sigmas, disable=True)


@pytest.mark.parametrize("options,message", [({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
                                             ({"gamma": 0.2, "eta": 0.4}, "disagree")])
def test_tcd_gamma_is_checked(options, message):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 4)
    with pytest.raises(ValueError, match=message):
        SAMPLERS["tcd"].function(ToyModel(EPSSampling()), initial_noise(), sigmas, disable=True, **options)


def test_tcd_eta_is_an_alias_of_gamma():
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 4)
    runs = [SAMPLERS["tcd"].function(ToyModel(EPSSampling()), initial_noise() * sigmas[0], sigmas, disable=True,
                                     extra_args={"seed": 2}, **opt) for opt in ({"gamma": 0.6}, {"eta": 0.6})]
    assert torch.equal(runs[0], runs[1])


class _NaNAfter(ToyModel):
    def __init__(self, good_calls):
        super().__init__(EPSSampling())
        self.good_calls = good_calls

    def __call__(self, x, sigma, **extra_args):
        out = super().__call__(x, sigma, **extra_args)
        return out if self.calls <= self.good_calls else out * float("nan")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nan_latent_stops_with_the_step_named(name):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 4)
    model = _NaNAfter(good_calls=1)
    with pytest.raises(NonFiniteLatentError, match="step 2 of 4") as caught:
        SAMPLERS[name].function(model, initial_noise() * sigmas[0], sigmas, extra_args={"seed": 0}, disable=True)
    assert caught.value.step == 1 and model.calls == 2


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_spec_says_what_its_function_does(name):
    """A spec's options are what its function takes (with those defaults, the same result as without them), and
    flow_ok is whether it runs on a flow model (otherwise it refuses one before the first model call)."""
    spec = SAMPLERS[name]
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, 2)
    plain = spec.function(ToyModel(EPSSampling()), initial_noise() * sigmas[0], sigmas, extra_args={"seed": 0},
                          disable=True)
    with_options = spec.function(ToyModel(EPSSampling()), initial_noise() * sigmas[0], sigmas, extra_args={"seed": 0},
                                 disable=True, **dict(spec.options))
    assert torch.equal(plain, with_options)
    with pytest.raises(TypeError, match="unknown option"):
        spec.function(ToyModel(EPSSampling()), initial_noise() * sigmas[0], sigmas, disable=True, not_an_option=1)
    flow_sigmas = few_step_sigmas("flow", FlowSampling().sigmas, 2)
    model = ToyModel(FlowSampling(), flow=True)
    if spec.flow_ok:
        assert torch.isfinite(spec.function(model, initial_noise() * flow_sigmas[0], flow_sigmas,
                                            extra_args={"seed": 0}, disable=True)).all()
    else:
        with pytest.raises(ValueError, match="EPS .*models only"):
            spec.function(model, initial_noise() * flow_sigmas[0], flow_sigmas, extra_args={"seed": 0}, disable=True)
        assert model.calls == 0


def _comfyui_tcd_rule(sigmas, noises, gamma):
    """The update rule of the published ComfyUI-TCD node (JettHu), written out in float64: VP x_s from the
    alphas_cumprod table at s = floor((1 - gamma) t), the last s forced to 0, then back to the VE latent."""
    toy = ToyModel(None)
    table = EPSSampling().sigmas.double()
    alphas_cumprod = 1.0 / (1.0 + table ** 2)
    timesteps = [int((table - float(s)).abs().argmin()) for s in sigmas]
    alpha_s = [float(alphas_cumprod[math.floor((1 - gamma) * t)]) for t in timesteps[:-1]] + [float(alphas_cumprod[0])]
    x = (initial_noise() * sigmas[0]).double()
    for i in range(len(sigmas) - 1):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        eps = toy.prediction((x / math.sqrt(1 + s * s)).float(), s).double()
        denoised = x - s * eps
        x_s = math.sqrt(alpha_s[i + 1]) * denoised + math.sqrt(1 - alpha_s[i + 1]) * eps
        if gamma > 0 and sn > 0:
            x = x_s / math.sqrt(alpha_s[i + 1]) + noises[i].double() * math.sqrt(sn ** 2 + 1 - 1 / alpha_s[i + 1])
        else:
            x = x_s * math.sqrt(sn ** 2 + 1)
    return x


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_tcd_with_identity_schedule_follows_the_comfyui_tcd_node(gamma, steps):
    sigmas = few_step_sigmas("lcm", EPSSampling().sigmas, steps)
    noises = _noises(steps)
    ours, _, _ = _run("tcd", False, sigmas, QSchedSchedule.identity(steps), noises, gamma=gamma)
    torch.testing.assert_close(ours.double(), _comfyui_tcd_rule(sigmas, noises, gamma), rtol=1e-5, atol=1e-5)


def test_tcd_sigma_table_fallbacks():
    from types import SimpleNamespace
    from comfyui_qsched.samplers.k_qsched import sigma_table
    from comfyui_qsched.samplers.model_sampling import discrete_sigma_table
    full = discrete_sigma_table()
    assert torch.equal(sigma_table(EPSSampling()), full)
    assert torch.equal(sigma_table(None), full)
    thinned = SimpleNamespace(sigmas=full[19::20], num_timesteps=1000, linear_start=0.00085, linear_end=0.012)
    assert torch.equal(sigma_table(thinned), full)
    other = SimpleNamespace(sigmas=full[19::20], num_timesteps=1000, linear_start=0.0001, linear_end=0.02)
    assert torch.equal(sigma_table(other), discrete_sigma_table(0.0001, 0.02))


def test_a_host_k_diffusion_module_replaces_the_copied_helpers():
    """Inside ComfyUI the samplers get the host's k-diffusion module (`k_diffusion`) and call its to_d and
    get_ancestral_step instead of the plain-torch copies; the copies compute the same numbers."""
    import types

    from comfyui_qsched.samplers import default_noise_sampler, k_qsched
    calls = []

    def to_d(x, sigma, denoised):
        calls.append("to_d")
        return (x - denoised) / sigma

    def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
        calls.append("get_ancestral_step")
        return k_qsched.get_ancestral_step(sigma_from, sigma_to, eta)

    host = types.SimpleNamespace(to_d=to_d, get_ancestral_step=get_ancestral_step)
    sigmas = torch.tensor([14.6, 3.0, 0.9, 0.0])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    model = lambda x, sigma, **_: x * 0.5
    for sampler in (k_qsched.sample_euler, k_qsched.sample_euler_ancestral):
        calls.clear()
        plain = sampler(model, x, sigmas, disable=True, make_noise_sampler=default_noise_sampler,
                        extra_args={"seed": 1})
        hosted = sampler(model, x, sigmas, disable=True, make_noise_sampler=default_noise_sampler,
                         extra_args={"seed": 1}, k_diffusion=host)
        assert calls and torch.allclose(hosted, plain, rtol=1e-6, atol=1e-6)
    assert "get_ancestral_step" in calls
