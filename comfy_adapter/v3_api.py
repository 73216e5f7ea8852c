"""ComfyUI's V3 API (io, ComfyExtension, ComfyAPI, ComfyAPISync), imported here only.

The pack is written against the versioned `comfy_api.v0_0_2` (0.3.64 and 0.33.0 ship it). A newer ComfyUI may
drop that version; the pack then uses `comfy_api.latest`, which every release with the V3 schema has, rather
than failing to load. Only a missing pinned module falls back: an error raised inside it is ComfyUI's, and shows.
"""
import importlib

PINNED = "comfy_api.v0_0_2"
FALLBACK = "comfy_api.latest"


def import_v3_api(pinned=PINNED, fallback=FALLBACK):
    try:
        return importlib.import_module(pinned)
    except ModuleNotFoundError as error:
        if error.name != pinned:
            raise
    return importlib.import_module(fallback)


api = import_v3_api()
io = api.io
ComfyExtension = api.ComfyExtension
ComfyAPI = api.ComfyAPI
ComfyAPISync = api.ComfyAPISync
