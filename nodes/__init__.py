"""ComfyUI nodes of the pack: thin wrappers over samplers/, quant/ and calibration/."""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


def _register(module):
    NODE_CLASS_MAPPINGS.update(module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(module.NODE_DISPLAY_NAME_MAPPINGS)


# Each node module registers itself here, one line each.
from . import routes  # noqa: E402,F401  /qsched/* server routes for web/ (only inside a running ComfyUI)
from . import sampling; _register(sampling)  # noqa: E402,E702
from . import calibrate, presets; _register(calibrate); _register(presets)  # noqa: E402,E702
from . import loaders; _register(loaders)  # noqa: E402,E702
from . import scoring; _register(scoring)  # noqa: E402,E702
