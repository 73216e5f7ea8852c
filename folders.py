"""The folder names the pack reads and writes, defined once (plain module: quant/, scoring/, comfy_adapter/ and
nodes/ all name them)."""
PRESETS = "qsched_presets"          # <ComfyUI user dir>/: calibrated presets (the preset loader's list)
RUNS = "qsched_runs"                # <ComfyUI user dir>/: calibration run logs (resume)
SCORERS = "qsched_scorers"          # models/: JAQ scorer weights
QUANT_CACHE = "qsched_quant_cache"  # models/: quantized weights kept by the loaders' cache option
