"""ComfyUI-QSched: quantization-aware few-step sampling (Q-Sched, arXiv 2509.01624) for ComfyUI."""
import importlib.util

if importlib.util.find_spec("comfy") is None:
    # Imported outside ComfyUI (pytest collects this folder as a package): there is nothing to register.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
