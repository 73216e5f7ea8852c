"""Several calibration images in one sampling batch: a schedule per sample and a noise stream per sample.

Each sample gets what it would get alone at batch 1: its own schedule's coefficients and the fresh noise that the
noise sampler (the plain-torch `default_noise_sampler`, or the host's) would draw for it from its own seed. So a
batched image equals its batch-1 twin up to float rounding (batched matmuls may round differently), and
calibration can batch candidates and prompts freely.
"""
import torch

from .noise import default_noise_sampler
from .schedule import QSchedSchedule, ScheduleError, resize_offset_map


class ScheduleBatch:
    """One QSchedSchedule per sample of the batch; the samplers apply sample b's coefficients to sample b."""

    def __init__(self, schedules):
        self.schedules = tuple(schedules)
        if not self.schedules:
            raise ScheduleError("a schedule batch needs at least one schedule")
        for schedule in self.schedules:
            if not isinstance(schedule, QSchedSchedule):
                raise ScheduleError(f"a schedule batch holds QSchedSchedule objects, got {type(schedule).__name__}")
        steps = {schedule.steps for schedule in self.schedules}
        if len(steps) != 1:
            raise ScheduleError(f"the schedules of one batch have different step counts: {sorted(steps)}")

    def __len__(self):
        return len(self.schedules)

    @property
    def steps(self):
        return self.schedules[0].steps

    @property
    def is_identity(self):
        return all(schedule.is_identity for schedule in self.schedules)

    def check(self, steps, sampler=None):
        for schedule in self.schedules:
            schedule.check(steps, sampler=sampler)
        return self

    def coefficients(self, step, like):
        """(c_x, c_eps) of `step` as [B, 1, ...] tensors in `like`'s dtype and device, broadcasting over it."""
        shape = (len(self),) + (1,) * (like.ndim - 1)
        as_tensor = lambda values: torch.tensor(values, dtype=like.dtype, device=like.device).reshape(shape)
        return (as_tensor([s.c_x[step] for s in self.schedules]),
                as_tensor([s.c_eps[step] for s in self.schedules]))


    def offsets(self, step, like):
        """Per-sample offsets of `step` as a [B, C, 1, ...] tensor in `like`'s dtype and device (a scalar offset
        fills every channel, no offset is 0), or None when no schedule has a non-zero offset there."""
        has_maps = any(s.map_at(step) is not None for s in self.schedules)
        if not has_maps and not any(s.offset is not None and any(s.offset[step]) for s in self.schedules):
            return None
        channels = like.shape[1]
        rows = [[0.0] * channels if s.offset is None else
                list(s.offset[step]) * (channels if len(s.offset[step]) == 1 else 1) for s in self.schedules]
        offsets = torch.tensor(rows, dtype=like.dtype, device=like.device).reshape(
            (len(self), channels) + (1,) * (like.ndim - 2))
        if not has_maps:
            return offsets
        maps = [torch.zeros_like(like[:1]) if s.map_at(step) is None else resize_offset_map(s.map_at(step), like)
                for s in self.schedules]
        return offsets + torch.cat(maps)


def one_schedule(schedules):
    """The schedule to sample a batch with: the schedule itself when every sample has the same one (the
    batch-1 arithmetic, skipped multiplications included), else a ScheduleBatch."""
    schedules = tuple(schedules)
    first = schedules[0]
    same = all((s.c_x, s.c_eps, s.offset, s.offset_map) == (first.c_x, first.c_eps, first.offset, first.offset_map)
               for s in schedules)
    return first if same else ScheduleBatch(schedules)


def seeded_noise_sampler(x, seeds, make_noise_sampler=None):
    """A noise sampler drawing, for sample b, what make_noise_sampler(x[b:b+1], seed=seeds[b]) draws at batch 1
    (default: the samplers' plain-torch default_noise_sampler; in ComfyUI pass ComfyUI's own)."""
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} noise seeds for a batch of {x.shape[0]}")
    make_noise_sampler = make_noise_sampler or default_noise_sampler
    samplers = [make_noise_sampler(x[b:b + 1], seed=int(seed)) for b, seed in enumerate(seeds)]

    def draw(sigma, sigma_next):
        return torch.cat([sampler(sigma, sigma_next) for sampler in samplers])

    return draw
