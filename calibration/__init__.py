"""Calibration: coefficient search, run log, presets, prompts and the scoring metrics (plain torch, no ComfyUI)."""
