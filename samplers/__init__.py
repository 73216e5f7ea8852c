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


SAMPLERS = {spec.name: spec for spec in (
    SamplerSpec("lcm", k_qsched.sample_lcm, "LCM multistep: denoise, then re-noise to the next sigma"),
    SamplerSpec("tcd", k_qsched.sample_tcd, "TCD strategic stochastic sampling (EPS models only)",
                flow_ok=False, options=(("gamma", k_qsched.TCD_DEFAULT_GAMMA),)),
    SamplerSpec("euler", k_qsched.sample_euler, "Euler; flow-matching Euler on flow models"),
    SamplerSpec("euler_ancestral", k_qsched.sample_euler_ancestral,
                "Euler ancestral; the rectified-flow variant on flow models", options=(("eta", 1.0), ("s_noise", 1.0))),
)}
assert tuple(SAMPLERS) == SAMPLER_NAMES

__all__ = ["QSchedSchedule", "ScheduleError", "SAMPLERS", "SAMPLER_NAMES", "SamplerSpec", "NonFiniteLatentError",
           "default_noise_sampler", "EPSSampling", "FlowSampling", "is_flow", "SIGMA_SCHEDULES", "few_step_sigmas"]
