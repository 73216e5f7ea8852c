"""Per-step Q-Sched coefficients: c_x scales the latent, c_eps the predicted noise (paper Eq. 4), and an optional
per-step offset b on the predicted noise, eps' = c_eps * eps - b (scalar or one value per latent channel), plus an
optional per-step low-resolution offset map (one [h, w] grid per latent channel, resized bilinearly to the latent)."""
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

# Samplers a schedule can be tuned for / applied with (kept here so validation needs no sampler import).
SAMPLER_NAMES = ("lcm", "tcd", "euler", "euler_ancestral")


class ScheduleError(ValueError):
    """A coefficient schedule that cannot be used as given; the message names the problem."""


class NotANumber(ScheduleError):
    """A schedule value that is not a real number (text, a boolean, a list, null)."""


def finite_number(value, name):
    """`value` as a float if it is a finite real number, else ScheduleError naming `name`: the one check of every
    numeric field of a schedule (c_x, c_eps, offset). Text ("0.05") and booleans are not numbers here, although
    float() would take them."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise NotANumber(f"{name} = {value!r} is a {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ScheduleError(f"{name} = {value} is not finite")
    return value


def _numbers(values, name, what):
    try:
        return tuple(finite_number(v, f"{name}[{i}]") for i, v in enumerate(values))
    except NotANumber as error:
        raise NotANumber(f"{name} must be {what}, but {error}") from None


def _list_of(values, name):
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ScheduleError(f"{name} must be a list of numbers, got {values!r}")
    return tuple(values)


def _coefficients(values, name):
    values = _list_of(values, name)
    if not values:
        raise ScheduleError(f"{name} is empty: a schedule needs one coefficient per step")
    values = _numbers(values, name, "a list of numbers")
    for step, value in enumerate(values):
        if value <= 0:
            raise ScheduleError(f"{name}[{step}] = {value} is not positive")
    return values


def _offsets(values, steps):
    """None, or one tuple per step of 1 (scalar) or C (per latent channel) finite numbers, the same width each step."""
    if values is None:
        return None
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ScheduleError(f"offset must be a list with one entry per step, got {values!r}")
    rows = []
    for step, row in enumerate(values):
        if isinstance(row, (str, bytes, dict)):
            raise ScheduleError(f"offset[{step}] must be a number or a list of numbers, got {row!r}")
        row = tuple(row) if hasattr(row, "__iter__") else (row,)
        if not row:
            raise ScheduleError(f"offset[{step}] is empty: give one value, or one per latent channel")
        row = _numbers(row, f"offset[{step}]", "a number or a list of numbers")
        rows.append(row)
    if len(rows) != steps:
        raise ScheduleError(f"offset has {len(rows)} entries but the schedule has {steps} steps: one per step")
    widths = sorted({len(row) for row in rows})
    if len(widths) > 1:
        raise ScheduleError(f"offset entries have different widths {widths}: use one value per step, or the same "
                            "number of channels at every step")
    return tuple(rows)


def _offset_maps(values, steps):
    """None, or one [C][h][w] grid of finite numbers per step, the same shape at every step."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ScheduleError(f"offset_map must be a list with one [channels][rows][columns] grid per step, got "
                            f"{values!r}")
    maps, shapes = [], set()
    for step, grid in enumerate(values):
        try:
            array = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ScheduleError(f"offset_map[{step}] must be a [channels][rows][columns] grid of numbers") from error
        if array.ndim != 3 or 0 in array.shape:
            raise ScheduleError(f"offset_map[{step}] must be a non-empty [channels][rows][columns] grid, got shape "
                                f"{list(array.shape)}")
        if not np.isfinite(array).all():
            raise ScheduleError(f"offset_map[{step}] contains a value that is not finite")
        shapes.add(array.shape)
        maps.append(tuple(tuple(tuple(row) for row in channel) for channel in array.tolist()))
    if len(maps) != steps:
        raise ScheduleError(f"offset_map has {len(maps)} entries but the schedule has {steps} steps: one per step")
    if len(shapes) > 1:
        raise ScheduleError(f"offset_map grids have different shapes {sorted(shapes)}: use one shape at every step")
    return tuple(maps)


def _check_sampler_name(sampler, what):
    if sampler is not None and sampler not in SAMPLER_NAMES:
        raise ScheduleError(f"unknown sampler {sampler!r} ({what}); known: {', '.join(SAMPLER_NAMES)}")


def _steps_count(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps!r}")
    return steps


@dataclass(frozen=True)
class QSchedSchedule:
    """c_x[i], c_eps[i] for step i (0 = noisiest); `sampler` is the sampler it was tuned for, if known.

    `offset[i]` (optional) is subtracted from the scaled noise prediction at step i: a tuple of one value (all
    channels) or one value per latent channel. `offset_map[i]` (optional) is a [C][h][w] grid resized bilinearly to
    the latent's size and added to offset[i]: a spatially varying offset that transfers across resolutions. None and
    all-zero offsets sample exactly as the paper's form."""
    c_x: tuple
    c_eps: tuple
    sampler: str | None = None
    label: str = ""
    offset: tuple | None = None
    offset_map: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "c_x", _coefficients(self.c_x, "c_x"))
        object.__setattr__(self, "c_eps", _coefficients(self.c_eps, "c_eps"))
        if len(self.c_x) != len(self.c_eps):
            raise ScheduleError(f"c_x has {len(self.c_x)} values but c_eps has {len(self.c_eps)}: "
                                "one pair per step is needed")
        _check_sampler_name(self.sampler, "schedule.sampler")
        object.__setattr__(self, "label", str(self.label))
        object.__setattr__(self, "offset", _offsets(self.offset, len(self.c_x)))
        object.__setattr__(self, "offset_map", _offset_maps(self.offset_map, len(self.c_x)))

    @property
    def steps(self):
        return len(self.c_x)

    @property
    def has_offset(self):
        return (self.offset is not None and any(v != 0.0 for row in self.offset for v in row)) or self.has_offset_map

    @property
    def has_offset_map(self):
        return self.offset_map is not None and any(self.map_at(i) for i in range(self.steps))

    def map_at(self, i):
        """Step i's offset map when it has a non-zero value, else None."""
        if self.offset_map is None:
            return None
        grid = self.offset_map[i]
        return grid if any(v != 0.0 for channel in grid for row in channel for v in row) else None

    @property
    def map_shape(self):
        """(C, h, w) of the offset map, or None without one."""
        if self.offset_map is None:
            return None
        grid = self.offset_map[0]
        return (len(grid), len(grid[0]), len(grid[0][0]))

    @property
    def offset_channels(self):
        """0 without offsets, 1 for a scalar offset per step, C for one per latent channel."""
        return 0 if self.offset is None else len(self.offset[0])

    @property
    def is_identity(self):
        return all(c == 1.0 for c in self.c_x + self.c_eps) and not self.has_offset

    def check(self, steps, sampler=None):
        """Raise ScheduleError unless this schedule fits `steps` sampling steps (and `sampler`, if given)."""
        _check_sampler_name(sampler, "requested sampler")
        if self.steps != _steps_count(steps):
            raise ScheduleError(f"schedule has {self.steps} coefficient pairs but sampling runs {steps} steps")
        if sampler is not None and self.sampler is not None and self.sampler != sampler:
            name = f" {self.label!r}" if self.label else ""
            raise ScheduleError(f"schedule{name} was tuned for the {self.sampler} sampler but sampling uses "
                                f"{sampler}; use {self.sampler} or calibrate a schedule for {sampler}")
        return self

    @classmethod
    def identity(cls, steps):
        return cls.constant(steps, 1.0, 1.0)

    @classmethod
    def constant(cls, steps, c_x, c_eps, **fields):
        steps = _steps_count(steps)
        return cls((c_x,) * steps, (c_eps,) * steps, **fields)

    @classmethod
    def linear(cls, steps, x_start, eps_start, x_end=1.0, eps_end=1.0, **fields):
        """The paper's form: c = linspace(start, end, steps); the official search fixes end = 1."""
        steps = _steps_count(steps)
        return cls(tuple(np.linspace(x_start, x_end, steps).tolist()),
                   tuple(np.linspace(eps_start, eps_end, steps).tolist()), **fields)

    @classmethod
    def from_lists(cls, c_x, c_eps, **fields):
        return cls(tuple(c_x), tuple(c_eps), **fields)

    def to_dict(self):
        data = {"c_x": list(self.c_x), "c_eps": list(self.c_eps), "sampler": self.sampler, "label": self.label}
        if self.offset is not None:
            data["offset"] = [list(row) for row in self.offset]
        if self.offset_map is not None:
            data["offset_map"] = map_lists(self.offset_map)
        return data

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ScheduleError(f"a schedule must be a dict with c_x and c_eps, got {type(data).__name__}")
        missing = [key for key in ("c_x", "c_eps") if key not in data]
        if missing:
            raise ScheduleError(f"schedule dict lacks {', '.join(missing)}")
        unknown = sorted(set(data) - {"c_x", "c_eps", "sampler", "label", "offset", "offset_map"})
        if unknown:
            raise ScheduleError(f"schedule dict has unknown keys {', '.join(unknown)}")
        for key in ("c_x", "c_eps"):
            if isinstance(data[key], (str, bytes)) or not hasattr(data[key], "__iter__"):
                raise ScheduleError(f"{key} must be a list of numbers, got {data[key]!r}")
        return cls(tuple(data["c_x"]), tuple(data["c_eps"]), data.get("sampler"), data.get("label", ""),
                   data.get("offset"), data.get("offset_map"))


def map_lists(offset_map):
    """An offset map as nested lists (JSON)."""
    return [[[list(row) for row in channel] for channel in grid] for grid in offset_map]


def resize_offset_map(grid, x):
    """A [C][h][w] offset map resized bilinearly (align_corners=False) to x's [H, W]: a [1, C, H, W] tensor."""
    grid = torch.tensor(grid, dtype=torch.float32, device=x.device)[None]
    if tuple(grid.shape[-2:]) != tuple(x.shape[-2:]):
        grid = torch.nn.functional.interpolate(grid, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return grid.to(x.dtype)
