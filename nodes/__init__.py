"""ComfyUI nodes of the pack: thin wrappers over samplers/, quant/ and calibration/."""
from . import calibrate, export, loaders, presets, ptqd, sampling, scoring
from . import routes  # noqa: F401  registers the /qsched/* server routes the web extension reads

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (sampling, loaders, export, scoring, calibrate, presets, ptqd):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
