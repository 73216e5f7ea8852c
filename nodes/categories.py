"""Where the pack's nodes sit in ComfyUI's node menu: one folder for the pack, one subfolder per job."""
ROOT = "qsched"
SAMPLING = f"{ROOT}/sampling"        # the samplers, their coefficients and sigmas
MODELS = f"{ROOT}/models"            # quantized loading and export
CALIBRATION = f"{ROOT}/calibration"  # calibration, presets, the PTQD-style correction
SCORING = f"{ROOT}/scoring"          # the JAQ scorer and its loader
ALL = (SAMPLING, MODELS, CALIBRATION, SCORING)
