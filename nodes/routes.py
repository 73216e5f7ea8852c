"""Read-only server routes for the web extension: the preset list and one preset, as JSON.

Served by ComfyUI's PromptServer under /qsched/... (and /api/qsched/...). They only read the preset
folder(s) through calibration.presets, and refuse any name that could leave them. The reading happens on a
worker thread, never on the server's event loop: whatever sits in the folder, the server keeps answering.
"""
import asyncio
import concurrent.futures
import logging
import os

from aiohttp import web

PREFIX = "/qsched"

log = logging.getLogger("comfyui_qsched.routes")


def _entry_json(entry):
    """One entry of calibration.presets.list_presets() as JSON: name, valid, reason, summary."""
    valid = bool(entry.get("valid"))
    summary = entry.get("summary") if valid else None
    return {"name": entry.get("name"), "valid": valid, "reason": None if valid else str(entry.get("error")),
            "summary": summary}


def default_preset_folders():
    """The user's preset folder(s) registered with ComfyUI, then the examples shipped in the pack."""
    import folder_paths  # ComfyUI's; only reached inside a running ComfyUI

    from ..calibration.presets import SHIPPED_PRESETS
    from ..comfy_adapter.calibration import PRESET_FOLDER_NAME

    try:
        folders = list(folder_paths.get_folder_paths(PRESET_FOLDER_NAME))
    except KeyError:
        folders = []
    return folders + [SHIPPED_PRESETS] * (SHIPPED_PRESETS not in folders)


_READERS = []   # one small thread pool for the routes' file reading, made on first use


async def _off_the_event_loop(function, *args):
    if not _READERS:
        _READERS.append(concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="qsched-presets"))
    return await asyncio.get_running_loop().run_in_executor(_READERS[0], function, *args)


def list_preset_entries(preset_folders):
    """The JSON of GET /qsched/presets: every preset of every folder, the first folder winning a name."""
    from ..calibration import presets as preset_store

    entries, seen = [], set()
    for folder in preset_folders():
        try:
            listed = preset_store.list_presets(folder) if os.path.isdir(folder) else []
        except OSError as error:  # e.g. a folder we may not list: the other folders still count
            log.warning("Q-Sched: cannot list presets in %s: %s", folder, error)
            continue
        for entry in listed:
            row = _entry_json(entry)
            if row["name"] not in seen:  # the first folder wins, as ComfyUI's file lists do
                seen.add(row["name"])
                entries.append(row)
    return {"presets": entries}


def read_one_preset(preset_folders, raw_name):
    """(HTTP status, JSON) of GET /qsched/presets/{name}."""
    from ..calibration import presets as preset_store

    try:
        name = preset_store.check_name(raw_name)
    except preset_store.PresetError as e:
        return 400, {"error": str(e)}
    for folder in preset_folders():
        try:
            path = preset_store.preset_path(folder, name)
        except preset_store.PresetError as e:
            return 400, {"error": str(e)}
        if not os.path.lexists(path):
            continue
        try:
            preset = preset_store.load_preset(folder, name)
        except preset_store.PresetError as e:
            return 422, {"name": name, "valid": False, "reason": str(e)}
        return 200, {"name": name, "valid": True, "summary": preset_store.summary(preset), "preset": preset}
    return 404, {"error": f"no preset named {name!r}"}


def add_routes(routes, preset_folders=default_preset_folders):
    """Add the /qsched routes to an aiohttp RouteTableDef; `preset_folders()` -> folders to read."""

    @routes.get(PREFIX + "/presets")
    async def list_presets(request):
        return web.json_response(await _off_the_event_loop(list_preset_entries, preset_folders))

    @routes.get(PREFIX + "/presets/{name}")
    async def get_preset(request):
        status, body = await _off_the_event_loop(read_one_preset, preset_folders, request.match_info["name"])
        return web.json_response(body, status=status)

    return routes


def _register_on_comfyui_server():
    try:
        from server import PromptServer
    except ImportError:  # outside ComfyUI (tests, CLI)
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False
    try:
        add_routes(instance.routes)
    except Exception:  # the nodes still load; the web extension then says the preset list is unavailable
        log.exception("Q-Sched: could not add the /qsched server routes")
        return False
    return True


_register_on_comfyui_server()
