"""Few-step sigma schedules the Q-Sched coefficients were tuned on, read off a model's 1000-entry sigma table.

- `lcm` (LCM and TCD, 50 original steps): timesteps 999, 759, 499, 259 at 4 steps.
- `trailing` (SDXL-Turbo): 999, 749, 499, 249 at 4 steps (ComfyUI's SDTurboScheduler gives 999, 899, 799, 699).
- `flow` (FLUX-schnell, shift from the table): sigmas 1, .75, .5, .25 at 4 steps = trailing on a flow table.
Each returns steps + 1 sigmas ending in 0, like ComfyUI's schedulers.
"""
import numpy as np
import torch

SCHEDULES = ("lcm", "trailing", "flow")
# The few-step schedules by the scheduler names a host lists beside its own (ComfyUI's scheduler widget), with
# the kind each is and what it is for; the flow one reads a shift-1 flow table whatever the model's shift.
SCHEDULER_KINDS = {
    "lcm_original": ("lcm", "LCM/TCD: timesteps from the 50-step original grid (999, 759, 499, 259 at 4 steps)"),
    "turbo_trailing": ("trailing", "SDXL-Turbo: trailing timesteps (999, 749, 499, 249 at 4 steps)"),
    "flow_shift1": ("flow", "flow models (FLUX-schnell): sigmas 1, .75, .5, .25 at 4 steps (shift 1, whatever the "
                    "model's)"),
}


def lcm_timesteps(steps, original_steps=50, train_steps=1000):
    """diffusers' LCMScheduler/TCDScheduler: `steps` evenly spaced picks from the original_steps-step grid."""
    if not 1 <= steps <= original_steps:
        raise ValueError(f"lcm schedule: steps must be between 1 and {original_steps}, got {steps}")
    origin = (np.arange(1, original_steps + 1) * (train_steps // original_steps) - 1)[::-1]
    picks = np.floor(np.linspace(0, original_steps, num=steps, endpoint=False)).astype(np.int64)
    return origin[picks].tolist()


def trailing_timesteps(steps, train_steps=1000):
    """diffusers' timestep_spacing="trailing": round(arange(T, 0, -T/steps)) - 1."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"trailing schedule: steps must be between 1 and {train_steps}, got {steps}")
    return (np.round(np.arange(train_steps, 0, -train_steps / steps)).astype(np.int64) - 1).tolist()


def sigmas_at(sigma_table, timesteps):
    """table[t] for each timestep, then a final 0."""
    table = torch.as_tensor(sigma_table, dtype=torch.float32)
    if table.ndim != 1 or len(table) < 2:
        raise ValueError(f"sigma table must be 1-D with the model's discrete sigmas, got shape {tuple(table.shape)}")
    bad = [t for t in timesteps if not 0 <= t < len(table)]
    if bad:
        raise ValueError(f"timesteps {bad} are outside the {len(table)}-entry sigma table")
    return torch.cat([table[torch.tensor(timesteps, dtype=torch.long)], table.new_zeros(1)])


def few_step_sigmas(kind, sigma_table, steps):
    """Sigmas of schedule `kind` (one of SCHEDULES) for a model with this sigma table."""
    if kind == "lcm":
        timesteps = lcm_timesteps(steps, train_steps=len(sigma_table))
    elif kind in ("trailing", "flow"):
        timesteps = trailing_timesteps(steps, train_steps=len(sigma_table))
    else:
        raise ValueError(f"unknown sigma schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    return sigmas_at(sigma_table, timesteps)
