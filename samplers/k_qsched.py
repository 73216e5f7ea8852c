"""Q-Sched samplers in ComfyUI's k-diffusion convention (paper Eq. 4, Algorithm 1).

The model returns the denoised estimate D(x, sigma). At step i the sampler state and the noise prediction are
scaled after the model call: x' = c_x x, eps' = c_eps (x - D) / sigma - b, so D' = x' - sigma eps'. The optional
per-step offset b (a scalar or one value per latent channel; see schedule.py) extends Eq. 4 by the additive term
that rescaling cannot express. The model always sees the unscaled x and fresh noise is never scaled. A
coefficient of exactly 1 skips its multiplication and a zero offset its subtraction, so with an identity schedule
every sampler performs the same float operations, in the same order, as ComfyUI's own sample_euler /
sample_euler_ancestral(_RF) / sample_lcm, and the results are bit-identical when both draw from the same noise
sampler (inside ComfyUI the nodes pass the host's own as `make_noise_sampler`).

Callbacks get ComfyUI's dict (x, i, sigma, sigma_hat, denoised) with denoised = D', the estimate the step uses,
so previews show what the coefficients do. The latent is checked after every step: NaN/inf raises
NonFiniteLatentError naming the step instead of returning a black image.
"""
import math

import torch
from tqdm.auto import trange

from .batch import ScheduleBatch
from .model_sampling import EPSSampling, discrete_sigma_table, is_flow
from .noise import default_noise_sampler
from .schedule import QSchedSchedule, ScheduleError, resize_offset_map


class NonFiniteLatentError(FloatingPointError):
    """The latent became NaN or infinite during sampling; `step` is the 0-based step index."""

    def __init__(self, sampler, step, steps, sigma):
        self.sampler, self.step, self.steps = sampler, step, steps
        super().__init__(f"{sampler}: the latent became NaN/inf at step {step + 1} of {steps} (sigma {sigma:.4g}); "
                         "check the model, its quantization and the Q-Sched coefficients")


# Copied from comfy/k_diffusion/sampling.py (k-diffusion): the samplers run outside ComfyUI too; inside it they
# are handed the host's module as `k_diffusion` and call its to_d / get_ancestral_step instead.
def to_d(x, sigma, denoised):
    """(x - D) / sigma: the noise prediction (EPS models) or the velocity (flow models)."""
    return (x - denoised) / sigma[(...,) + (None,) * (x.ndim - sigma.ndim)]


# Copied from comfy/k_diffusion/sampling.py (k-diffusion), as to_d above.
def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(sigma_down, sigma_up) of an ancestral step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def scale(tensor, c):
    """c * tensor; c is a float, or per-sample [B, 1, ...] coefficients of a ScheduleBatch."""
    if isinstance(c, torch.Tensor):
        return tensor * c
    return tensor if c == 1.0 else tensor * c


def qsched_denoised(x, denoised, c_x, c_eps, sigma=None, offset=None):
    """D' = x' - sigma eps' = c_eps D + (c_x - c_eps) x + sigma b (the last term only with an offset b)."""
    if offset is not None:
        return qsched_denoised(x, denoised, c_x, c_eps) + offset * sigma
    if not isinstance(c_x, torch.Tensor) and c_x == 1.0 and c_eps == 1.0:
        return denoised
    return c_eps * denoised + (c_x - c_eps) * x


def noise_prediction(x, sigma, denoised, c_eps, offset=None, to_d=to_d):
    """eps' = c_eps (x - D) / sigma - b: the scaled noise prediction (the velocity on flow models)."""
    d = scale(to_d(x, sigma, denoised), c_eps)
    return d if offset is None else d - offset


def step_offset(schedule, i, x):
    """The offset of step i as a tensor broadcasting over x's batch and spatial dims (per sample for a
    ScheduleBatch), or None when it is zero."""
    if isinstance(schedule, ScheduleBatch):
        return schedule.offsets(i, x)
    offset = None
    if schedule.offset is not None and any(schedule.offset[i]):
        values = torch.tensor(schedule.offset[i], dtype=x.dtype, device=x.device)
        offset = values.reshape((1, -1) + (1,) * (x.ndim - 2)) if len(values) > 1 else values.reshape(())
    grid = schedule.map_at(i)
    if grid is None:
        return offset
    resized = resize_offset_map(grid, x)
    return resized if offset is None else offset + resized


def check_offset_channels(schedule, x):
    """A per-channel offset must have one value per latent channel; refuse it before the first model call."""
    schedules = schedule.schedules if isinstance(schedule, ScheduleBatch) else (schedule,)
    width = max(s.offset_channels for s in schedules)
    if width > 1 and (x.ndim < 2 or x.shape[1] != width):
        raise ScheduleError(f"the schedule's offset has {width} values per step (one per latent channel) but the "
                            f"latent has {x.shape[1] if x.ndim > 1 else 1} channels; recalibrate for this model")
    shapes = {s.map_shape for s in schedules if s.offset_map is not None}
    for shape in shapes:
        if x.ndim != 4 or x.shape[1] != shape[0]:
            raise ScheduleError(f"the schedule's offset map has {shape[0]} channel(s) and needs a 4-D latent [B, C, H, "
                                f"W] with that many channels, got shape {list(x.shape)}; recalibrate for this model")


class _Run:
    """What every sampler validates and resolves before its first model call. Option `k_diffusion`: the host's
    k-diffusion sampling module (ComfyUI's), whose to_d / get_ancestral_step the steps then use."""

    def __init__(self, name, model, x, sigmas, extra_args, schedule, noise_sampler, make_noise_sampler, model_sampling,
                 options, flow_ok=True):
        k_diffusion = options.pop("k_diffusion", None)
        self.to_d = to_d if k_diffusion is None else k_diffusion.to_d
        self.get_ancestral_step = get_ancestral_step if k_diffusion is None else k_diffusion.get_ancestral_step
        if options:
            raise TypeError(f"sampler {name!r} got unknown option(s): {', '.join(sorted(options))}")
        if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
            raise ValueError(f"sampler {name!r} needs a 1-D tensor of at least 2 sigmas, got {sigmas!r}")
        if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
            raise ValueError(f"sampler {name!r}: sigmas must be finite and non-negative, got {sigmas.tolist()}")
        self.steps = len(sigmas) - 1
        schedule = QSchedSchedule.identity(self.steps) if schedule is None else schedule
        if not isinstance(schedule, (QSchedSchedule, ScheduleBatch)):
            raise ScheduleError(f"schedule must be a QSchedSchedule, got {type(schedule).__name__}")
        self.schedule = schedule.check(self.steps, sampler=name)
        check_offset_channels(self.schedule, x)
        self.per_sample = None
        if isinstance(schedule, ScheduleBatch):
            if len(schedule) != x.shape[0]:
                raise ScheduleError(f"{len(schedule)} schedules for a batch of {x.shape[0]} samples")
            self.per_sample = [schedule.coefficients(i, x) for i in range(self.steps)]
        self.name = name
        self.extra_args = {} if extra_args is None else extra_args
        if model_sampling is None:
            model_sampling = getattr(getattr(getattr(model, "inner_model", None), "inner_model", None),
                                     "model_sampling", None)
        self.flow = is_flow(model_sampling)
        if self.flow and not flow_ok:
            raise ValueError(f"sampler {name!r} works on EPS (noise-prediction) models only; this is a flow model")
        self.model_sampling = EPSSampling() if model_sampling is None else model_sampling
        self.noise_sampler = noise_sampler
        if noise_sampler is None:
            make_noise_sampler = default_noise_sampler if make_noise_sampler is None else make_noise_sampler
            self.noise_sampler = make_noise_sampler(x, seed=self.extra_args.get("seed", None))
        self.s_in = x.new_ones([x.shape[0]])

    def coefficients(self, i):
        if self.per_sample is not None:
            return self.per_sample[i]
        return self.schedule.c_x[i], self.schedule.c_eps[i]

    def checked(self, x, i, sigmas):
        if not torch.isfinite(x).all():
            raise NonFiniteLatentError(self.name, i, self.steps, float(sigmas[i]))
        return x


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, schedule=None, noise_sampler=None,
                 make_noise_sampler=None, model_sampling=None, **options):
    """Euler steps x_next = x' + (sigma_next - sigma) eps'; on flow models eps' is the scaled velocity."""
    run = _Run("euler", model, x, sigmas, extra_args, schedule, noise_sampler, make_noise_sampler, model_sampling,
               options)
    for i in trange(run.steps, disable=disable):
        c_x, c_eps = run.coefficients(i)
        b = step_offset(run.schedule, i, x)
        denoised = model(x, sigmas[i] * run.s_in, **run.extra_args)
        d = noise_prediction(x, sigmas[i], denoised, c_eps, b, run.to_d)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": qsched_denoised(x, denoised, c_x, c_eps, sigmas[i], b)})
        dt = sigmas[i + 1] - sigmas[i]
        x = run.checked(scale(x, c_x) + d * dt, i, sigmas)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, schedule=None,
                           noise_sampler=None, make_noise_sampler=None, model_sampling=None, eta=1.0, s_noise=1.0,
                           **options):
    """Ancestral Euler: x' + (sigma_down - sigma) eps' + s_noise sigma_up z; the RF variant on flow models."""
    run = _Run("euler_ancestral", model, x, sigmas, extra_args, schedule, noise_sampler, make_noise_sampler,
               model_sampling, options)
    step = _ancestral_rf_step if run.flow else _ancestral_eps_step
    if run.flow:  # a flow model whose noise_scaling scales fresh noise (noise_scale) renoises with that scale too
        s_noise = s_noise * getattr(run.model_sampling, "noise_scale", 1.0)
    for i in trange(run.steps, disable=disable):
        c_x, c_eps = run.coefficients(i)
        denoised = model(x, sigmas[i] * run.s_in, **run.extra_args)
        denoised_q = qsched_denoised(x, denoised, c_x, c_eps, sigmas[i], step_offset(run.schedule, i, x))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised_q})
        x = run.checked(step(run, x, denoised, denoised_q, sigmas, i, eta, s_noise), i, sigmas)
    return x


def _ancestral_eps_step(run, x, denoised, denoised_q, sigmas, i, eta, s_noise):
    sigma_down, sigma_up = run.get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
    if sigma_down == 0:
        return denoised_q
    c_x, c_eps = run.coefficients(i)
    d = noise_prediction(x, sigmas[i], denoised, c_eps, step_offset(run.schedule, i, x), run.to_d)
    dt = sigma_down - sigmas[i]
    return scale(x, c_x) + d * dt + run.noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up


def _ancestral_rf_step(run, x, denoised, denoised_q, sigmas, i, eta, s_noise):
    """Rectified-flow ancestral step (ComfyUI's sample_euler_ancestral_RF) on x' and D'."""
    if sigmas[i + 1] == 0:
        return denoised_q
    downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * eta
    sigma_down = sigmas[i + 1] * downstep_ratio
    alpha_next = 1 - sigmas[i + 1]
    alpha_down = 1 - sigma_down
    renoise = (sigmas[i + 1] ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    ratio = sigma_down / sigmas[i]
    # ratio x' + (1 - ratio) D' = x' + (sigma_down - sigma) eps'
    x = ratio * scale(x, run.coefficients(i)[0]) + (1 - ratio) * denoised_q
    if eta > 0:
        x = (alpha_next / alpha_down) * x + run.noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, schedule=None, noise_sampler=None,
               make_noise_sampler=None, model_sampling=None, **options):
    """LCM multistep: x_next = noise_scaling(sigma_next, z, D'); the last step returns D'."""
    run = _Run("lcm", model, x, sigmas, extra_args, schedule, noise_sampler, make_noise_sampler, model_sampling,
               options)
    for i in trange(run.steps, disable=disable):
        c_x, c_eps = run.coefficients(i)
        b = step_offset(run.schedule, i, x)
        denoised = model(x, sigmas[i] * run.s_in, **run.extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": qsched_denoised(x, denoised, c_x, c_eps, sigmas[i], b)})
        x = qsched_denoised(x, denoised, c_x, c_eps, sigmas[i], b)
        if sigmas[i + 1] > 0:
            x = run.model_sampling.noise_scaling(sigmas[i + 1], run.noise_sampler(sigmas[i], sigmas[i + 1]), x)
        x = run.checked(x, i, sigmas)
    return x


TCD_DEFAULT_GAMMA = 0.3  # diffusers' and ComfyUI-TCD's default; the paper evaluated PCM with gamma = 0


def sigma_table(model_sampling):
    """The model's full discrete sigma table (1000 entries for SD-family models), which TCD indexes by timestep.

    Taken from `model_sampling.sigmas` when that covers every training timestep. A thinned table (ComfyUI's
    LCM ModelSamplingDiscreteDistilled keeps 50 of the 1000) is rebuilt from the object's linear_start/linear_end
    betas; with neither, the SD1.5/SDXL scaled-linear table (beta 0.00085..0.012) is used, which is also what
    ComfyUI's ModelSamplingDiscrete builds by default."""
    table = getattr(model_sampling, "sigmas", None)
    if isinstance(table, torch.Tensor) and table.ndim == 1 and len(table) > 1 \
            and len(table) == getattr(model_sampling, "num_timesteps", len(table)):
        return table.detach().float().cpu()
    if hasattr(model_sampling, "linear_start") and hasattr(model_sampling, "linear_end"):
        return discrete_sigma_table(model_sampling.linear_start, model_sampling.linear_end,
                                    getattr(model_sampling, "num_timesteps", 1000))
    return discrete_sigma_table()


def tcd_sigma_s(table, sigma_next, gamma):
    """sigma of timestep s = floor((1 - gamma) t_next), t_next the table index nearest sigma_next (TCD Eq. 9).

    The product is taken in float32 as diffusers' TCDScheduler does, so the same s comes out. For gamma = 0
    (s = t_next) sigma_next itself is returned, so off-table sigmas still land exactly on sigma_next."""
    sigma_next = float(sigma_next)
    t_next = 0 if sigma_next <= 0 else int((table.log() - math.log(sigma_next)).abs().argmin())
    s = int(torch.floor((1 - gamma) * torch.tensor(t_next)))
    return sigma_next if s == t_next and sigma_next > 0 else float(table[s])


@torch.no_grad()
def sample_tcd(model, x, sigmas, extra_args=None, callback=None, disable=None, schedule=None, noise_sampler=None,
               make_noise_sampler=None, model_sampling=None, gamma=None, eta=None, **options):
    """TCD (Zheng et al. 2024) with Q-Sched, Eq. 4 of the paper written for the VE latent:
    x_s = D' + sigma_s eps', then x_next = x_s + sqrt(sigma_next^2 - sigma_s^2) z (gamma > 0, not the last step).

    `eta` is accepted as another name for `gamma` (diffusers and ComfyUI-TCD call it eta). Like diffusers'
    TCDScheduler the last step lands on timestep 0 and returns that VP latent, sqrt(abar_0) x_s, which is what
    diffusers decodes. EPS-family models only (it needs the discrete VP sigma table)."""
    if gamma is not None and eta is not None and gamma != eta:
        raise ValueError(f"tcd: gamma={gamma} and eta={eta} disagree; they are the same parameter, give one")
    gamma = TCD_DEFAULT_GAMMA if gamma is None and eta is None else (eta if gamma is None else gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"tcd: gamma must be in [0, 1], got {gamma}")
    run = _Run("tcd", model, x, sigmas, extra_args, schedule, noise_sampler, make_noise_sampler, model_sampling,
               options, flow_ok=False)
    table = sigma_table(run.model_sampling)
    for i in trange(run.steps, disable=disable):
        c_x, c_eps = run.coefficients(i)
        b = step_offset(run.schedule, i, x)
        denoised = model(x, sigmas[i] * run.s_in, **run.extra_args)
        eps = noise_prediction(x, sigmas[i], denoised, c_eps, b, run.to_d)
        denoised_q = qsched_denoised(x, denoised, c_x, c_eps, sigmas[i], b)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised_q})
        sigma_s = tcd_sigma_s(table, sigmas[i + 1], gamma)
        x = denoised_q + eps * sigma_s
        if sigmas[i + 1] == 0:
            x = x / math.sqrt(1.0 + sigma_s ** 2)
        elif gamma > 0:
            renoise = max(float(sigmas[i + 1]) ** 2 - sigma_s ** 2, 0.0) ** 0.5
            x = x + run.noise_sampler(sigmas[i], sigmas[i + 1]) * renoise
        x = run.checked(x, i, sigmas)
    return x
