"""ComfyUI-QSched: quantization-aware few-step sampling (Q-Sched, arXiv 2509.01624) for ComfyUI.

ComfyUI loads the nodes through comfy_entrypoint (V3 node schema); a module that also defined
NODE_CLASS_MAPPINGS would have its entry point ignored."""
import importlib.util

WEB_DIRECTORY = "./web"
__all__ = ["WEB_DIRECTORY"]

if importlib.util.find_spec("comfy") is not None:  # outside ComfyUI (pytest collects this folder) nothing registers
    from .nodes import comfy_entrypoint
    __all__.append("comfy_entrypoint")
