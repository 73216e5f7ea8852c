"""GPU run only (tests/gpu is collected only with QSCHED_TEST_DEVICE=cuda). ComfyUI 0.33's DynamicVRAM needs
comfy-aimdo's native library loaded before ComfyUI imports comfy_aimdo.host_buffer, which binds the library once
at its import: main.py calls comfy_aimdo.control.init() first thing, and so does this file, before any test
imports ComfyUI."""
import importlib.util

if importlib.util.find_spec("comfy_aimdo") is not None:
    import comfy_aimdo.control

    comfy_aimdo.control.init()
