"""ComfyUI nodes of the pack: thin wrappers over samplers/, quant/ and calibration/."""
from . import calibrate, export, loaders, presets, sampling, scoring
from . import routes  # noqa: F401  registers the /qsched/* server routes the web extension reads

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (sampling, loaders, export, scoring, calibrate, presets):
    for _node in getattr(_module, "NODES", ()):  # V3 nodes (moving there module by module)
        _schema = _node.GET_SCHEMA()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _node
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name
    NODE_CLASS_MAPPINGS.update(getattr(_module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
