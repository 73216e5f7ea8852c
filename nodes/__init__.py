"""ComfyUI nodes of the pack, on ComfyUI's V3 node schema (comfy_adapter/v3_api.py imports it): thin wrappers over
samplers/, quant/ and calibration/. ComfyUI picks them up through comfy_entrypoint (the pack's __init__.py)."""
from ..comfy_adapter.v3_api import ComfyExtension

from . import calibrate, calibrated_loader, export, loaders, presets, ptqd, sampling, scoring
from . import routes  # noqa: F401  registers the /qsched/* server routes the web extension reads

NODES = [*sampling.NODES, *loaders.NODES, *calibrated_loader.NODES, *export.NODES, *scoring.NODES, *calibrate.NODES,
         *presets.NODES, *ptqd.NODES]


class QSchedExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint():
    return QSchedExtension()
