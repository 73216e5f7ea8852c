"""The pack's own link types, as V3 custom IO types. Their type strings are what the links of saved workflows
carry, so they never change."""
from ..comfy_adapter.v3_api import io

Schedule = io.Custom("QSCHED_SCHEDULE")  # samplers.schedule.QSchedSchedule: per-step c_x, c_eps
Scorer = io.Custom("QSCHED_SCORER")      # a scoring/ scorer (cached across runs by its loader)
