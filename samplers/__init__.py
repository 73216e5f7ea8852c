"""Q-Sched sampling math in plain torch: coefficient schedules, samplers, few-step sigma schedules."""
from dataclasses import dataclass
from typing import Callable

from . import k_qsched
from .k_qsched import NonFiniteLatentError
from .noise import default_noise_sampler
from .model_sampling import EPSSampling, FlowSampling, is_flow
from .schedule import SAMPLER_NAMES, QSchedSchedule, ScheduleError
from .sigmas import SCHEDULES as SIGMA_SCHEDULES, few_step_sigmas


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    function: Callable
    description: str
    flow_ok: bool = True
    options: tuple = ()  # extra keyword options the function takes, with their defaults


# What each sampler of SAMPLER_NAMES (the one list of names, in schedule.py) is; its function is
# k_qsched.sample_<name>.
_DETAILS = {
    "lcm": dict(description="LCM multistep: denoise, then re-noise to the next sigma"),
    "tcd": dict(description="TCD strategic stochastic sampling (EPS models only)", flow_ok=False,
                options=(("gamma", k_qsched.TCD_DEFAULT_GAMMA),)),
    "euler": dict(description="Euler; flow-matching Euler on flow models"),
    "euler_ancestral": dict(description="Euler ancestral; the rectified-flow variant on flow models",
                            options=(("eta", 1.0), ("s_noise", 1.0))),
}
SAMPLERS = {name: SamplerSpec(name, getattr(k_qsched, f"sample_{name}"), **_DETAILS[name]) for name in SAMPLER_NAMES}

__all__ = ["QSchedSchedule", "ScheduleError", "SAMPLERS", "SAMPLER_NAMES", "SamplerSpec", "NonFiniteLatentError",
           "default_noise_sampler", "EPSSampling", "FlowSampling", "is_flow", "SIGMA_SCHEDULES", "few_step_sigmas"]
