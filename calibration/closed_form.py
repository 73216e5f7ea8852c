"""The closed-form reference correction: per step, least squares of the full-precision model's prediction on the
quantized one, along the corrected trajectory. One pass over the calibration pairs, no search, deterministic.

At step i the quantized model is sampled with the corrections already fitted for steps < i; at the latent x it
reaches, both models predict the denoised D_q(x) and D_fp(x). The corrected prediction of the extended Eq. 4,
D' = c_eps D_q + (c_x - c_eps) x + sigma b, is linear in (c_eps, c_x - c_eps, b), so the fit minimising
|D' - D_fp|^2 over every pair, channel and pixel is a linear least-squares problem, solved here through its normal
equations in float64. The offset b has one of two forms that transfer across resolutions:
- "channel": one value per latent channel (the schedule's `offset`);
- "map": an [h, w] grid per channel resized bilinearly to the latent (the schedule's `offset_map`); the fit sees
  exactly that resize, so the grid fitted at one resolution is the least-squares grid for it there.
c_x is free only for samplers whose step reads D' alone (LCM); every other sampler also uses x' = c_x x, so there
c_x = 1 and matching D' matches the full-precision step.
"""
import torch
import torch.nn.functional as F

from ..samplers.schedule import QSchedSchedule, ScheduleError

FORMS = ("map", "channel")
DEFAULT_FORM = "map"
DEFAULT_MAP_SIZE = 8
FREE_C_X_SAMPLERS = ("lcm",)   # samplers whose next latent depends on D' only


class ClosedFormError(ValueError):
    """A closed-form fit that cannot be made or used; the message names the step and the problem."""


def resize_basis(grid, size, dtype=torch.float64):
    """[H*W, h*w]: column k is the unit impulse k of an [h, w] grid resized bilinearly (align_corners=False) to
    `size` = (H, W), the resize the samplers apply to an offset map (a 1x1 grid gives a column of ones)."""
    h, w = grid
    impulses = torch.eye(h * w, dtype=dtype).reshape(h * w, 1, h, w)
    if (h, w) != tuple(size):
        impulses = F.interpolate(impulses, size=tuple(size), mode="bilinear", align_corners=False)
    return impulses.reshape(h * w, -1).T.contiguous()


def fit_step(x, sigma, denoised_q, denoised_fp, form=DEFAULT_FORM, map_size=DEFAULT_MAP_SIZE, free_c_x=True):
    """Least squares of denoised_fp on c_eps * denoised_q + (c_x - c_eps) * x + sigma * b over a batch [N, C, H, W]
    of one step (sigma: a number or one per sample). Returns {"c_x", "c_eps", "offset"} with offset a [C, h, w]
    float64 tensor (h = w = 1 for the "channel" form), and the fit's residual and FP-to-quantized errors."""
    if form not in FORMS:
        raise ClosedFormError(f"unknown closed-form offset form {form!r}; choose one of {', '.join(FORMS)}")
    shapes = {tuple(t.shape) for t in (x, denoised_q, denoised_fp)}
    if len(shapes) != 1 or x.ndim != 4:
        raise ClosedFormError(f"x, D_q and D_fp must share one [N, C, H, W] shape, got {sorted(shapes)}")
    n, channels, height, width = x.shape
    grid = (1, 1) if form == "channel" else (min(map_size, height), min(map_size, width))
    x, dq, dfp = (t.detach().double().cpu() for t in (x, denoised_q, denoised_fp))
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(n).cpu()
    u, y = (dq, dfp) if free_c_x else (dq - x, dfp - x)
    columns = [u, x] if free_c_x else [u]
    basis = resize_basis(grid, (height, width))                                  # [HW, k]
    k = basis.shape[1]

    def project(t):   # A_basis^T t: per channel, sum over samples of sigma_n * U^T t_n  -> [C * k]
        return torch.einsum("n,ncp,pk->ck", sigma, t.reshape(n, channels, -1), basis).reshape(-1)

    m = len(columns)
    size = m + channels * k
    gram = torch.zeros(size, size, dtype=torch.float64)
    rhs = torch.zeros(size, dtype=torch.float64)
    for a, col_a in enumerate(columns):
        rhs[a] = (col_a * y).sum()
        for b, col_b in enumerate(columns):
            gram[a, b] = (col_a * col_b).sum()
        gram[a, m:] = project(col_a)
        gram[m:, a] = gram[a, m:]
    rhs[m:] = project(y)
    block = (sigma ** 2).sum() * (basis.T @ basis)
    for c in range(channels):
        gram[m + c * k:m + (c + 1) * k, m + c * k:m + (c + 1) * k] = block
    solution = torch.linalg.lstsq(gram, rhs[:, None], driver="gelsd").solution[:, 0]
    c_eps = float(solution[0])
    c_x = c_eps + float(solution[1]) if free_c_x else 1.0
    offset = solution[m:].reshape(channels, *grid)
    corrected = apply_correction(x, sigma, dq, c_x, c_eps, offset)
    return {"c_x": c_x, "c_eps": c_eps, "offset": offset,
            "residual": float(((corrected - dfp) ** 2).mean()), "uncorrected": float(((dq - dfp) ** 2).mean())}


def apply_correction(x, sigma, denoised_q, c_x, c_eps, offset):
    """D' = c_eps D_q + (c_x - c_eps) x + sigma * resize(offset) in float64 (the fit's model, for reports/tests)."""
    n = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(n)
    resized = resize_basis(tuple(offset.shape[1:]), tuple(x.shape[2:])) @ offset.reshape(offset.shape[0], -1).T
    resized = resized.T.reshape(1, offset.shape[0], *x.shape[2:])
    return c_eps * denoised_q.double() + (c_x - c_eps) * x.double() + sigma[:, None, None, None] * resized


def schedule_from_fits(fits, steps, form, sampler=None, label=""):
    """The QSchedSchedule of per-step fits (steps without a fit: identity, no offset)."""
    c_x = [fit["c_x"] for fit in fits] + [1.0] * (steps - len(fits))
    c_eps = [fit["c_eps"] for fit in fits] + [1.0] * (steps - len(fits))
    bad = [i for i, (a, b) in enumerate(zip(c_x, c_eps)) if not (a > 0 and b > 0)]
    if bad:
        raise ClosedFormError(f"the closed-form fit gave a non-positive coefficient at step(s) {bad} (c_x {c_x}, "
                              f"c_eps {c_eps}): the quantized model does not follow the full-precision one there")
    channels, grid = (fits[0]["offset"].shape[0], tuple(fits[0]["offset"].shape[1:])) if fits else (1, (1, 1))
    zero = torch.zeros(channels, *grid, dtype=torch.float64)
    offsets = [fit["offset"] for fit in fits] + [zero] * (steps - len(fits))
    try:
        if form == "channel":
            return QSchedSchedule(tuple(c_x), tuple(c_eps), sampler, label,
                                  offset=[o.reshape(-1).tolist() for o in offsets])
        return QSchedSchedule(tuple(c_x), tuple(c_eps), sampler, label, offset_map=[o.tolist() for o in offsets])
    except ScheduleError as error:
        raise ClosedFormError(f"the closed-form fit is not a usable schedule: {error}") from None


def fit_schedule(trajectory, steps, sampler, form=DEFAULT_FORM, map_size=DEFAULT_MAP_SIZE, label=None,
                 should_stop=None):
    """Fit every step in order along the corrected trajectory; returns (schedule, fits).

    trajectory(schedule, i) -> (x, sigma, D_q, D_fp) over every calibration pair at step i of the quantized model
    sampled with `schedule` (steps < i corrected, the rest identity): the host's sampler, noise and conditioning."""
    free_c_x = sampler in FREE_C_X_SAMPLERS
    label = label if label is not None else f"closed form ({form}) {sampler} {steps} steps"
    fits = []
    schedule = QSchedSchedule.identity(steps)
    for i in range(steps):
        if should_stop is not None:
            should_stop()
        x, sigma, dq, dfp = trajectory(schedule, i)
        for name, t in (("x", x), ("D_q", dq), ("D_fp", dfp)):
            if not torch.isfinite(t).all():
                raise ClosedFormError(f"step {i + 1}: {name} has NaN/inf; check the models and their quantization")
        fits.append(fit_step(x, sigma, dq, dfp, form, map_size, free_c_x))
        schedule = schedule_from_fits(fits, steps, form, sampler, label)
    return schedule, fits


def describe_fits(fits):
    """One line per step: coefficients, offset range and the squared error before/after."""
    lines = ["closed-form correction, D' = c_eps D + (c_x - c_eps) x + sigma b, per step:"]
    for i, fit in enumerate(fits):
        offset = fit["offset"]
        lines.append(f"step {i + 1}: c_x {fit['c_x']:.4g}, c_eps {fit['c_eps']:.4g}, offset {tuple(offset.shape)} "
                     f"in [{float(offset.min()):.4g}, {float(offset.max()):.4g}], error to FP "
                     f"{fit['uncorrected']:.4g} -> {fit['residual']:.4g}")
    return "\n".join(lines)


def record_fits(fits):
    """JSON-safe fits for a preset's search record."""
    return [{"c_x": fit["c_x"], "c_eps": fit["c_eps"], "error_before": fit["uncorrected"],
             "error_after": fit["residual"]} for fit in fits]


class StepReached(Exception):
    """Raised by step_recorder's model wrapper to end sampling once the step of interest was recorded."""


def step_recorder(model, step, record):
    """A model callable for a sampler: passes calls through and, at call `step` (0-based), appends (x, sigma, D) to
    `record` and raises StepReached (the rest of the trajectory is not needed)."""
    calls = [0]

    def call(x, sigma, **extra_args):
        denoised = model(x, sigma, **extra_args)
        if calls[0] == step:
            record.append((x.detach(), sigma.detach(), denoised.detach()))
            raise StepReached()
        calls[0] += 1
        return denoised
    call.inner_model = getattr(model, "inner_model", None)
    return call
