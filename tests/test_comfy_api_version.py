"""The pack's V3 API import (comfy_adapter/v3_api.py): the pinned comfy_api.v0_0_2 where ComfyUI has it, else
comfy_api.latest. A ComfyUI without v0_0_2 is simulated by hiding that module in a fresh process, on each release
the suite runs on; the pack must then load every node with the same schema as with the pinned version."""
import json
import subprocess
import sys

import pytest

from comfy_fixtures import REPO_ROOT, import_comfyui

# Imports the pack as ComfyUI would reach it, optionally with comfy_api.v0_0_2 missing, and prints which API it got
# and each node's full schema (the node info the frontend receives).
LOAD_PACK = """
import asyncio, json, sys
comfyui, root, hide = sys.argv[1], sys.argv[2], sys.argv[3] == "hide"
sys.path[:0] = [comfyui, root]
if hide:
    sys.modules["comfy_api.v0_0_2"] = None  # what `import comfy_api.v0_0_2` meets where the version is gone
import comfy.cli_args
comfy.cli_args.args.cpu = True
import qsched  # noqa: F401  registers the pack as comfyui_qsched
from comfyui_qsched import nodes
from comfyui_qsched.comfy_adapter import v3_api
extension = asyncio.run(nodes.comfy_entrypoint())
schemas = {node.GET_SCHEMA().node_id: node.GET_NODE_INFO_V1() for node in asyncio.run(extension.get_node_list())}
print(json.dumps({"api": v3_api.api.__name__, "schemas": schemas}, default=str))
"""


def load_pack(hide):
    comfyui = import_comfyui()
    result = subprocess.run([sys.executable, "-c", LOAD_PACK, comfyui, REPO_ROOT, "hide" if hide else "keep"],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_the_pinned_version_the_pack_loads_on_the_latest_api():
    pinned, fallback = load_pack(hide=False), load_pack(hide=True)
    assert pinned["api"] == "comfy_api.v0_0_2"
    assert fallback["api"] == "comfy_api.latest"
    assert len(pinned["schemas"]) == 13
    assert fallback["schemas"] == pinned["schemas"]


def test_an_error_inside_the_pinned_version_is_not_hidden(tmp_path, monkeypatch):
    """Only a missing pinned module falls back; one that exists and fails on its own import raises that error."""
    import_comfyui()
    from comfyui_qsched.comfy_adapter.v3_api import import_v3_api
    (tmp_path / "qsched_probe_api.py").write_text("import qsched_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="qsched_no_such_dependency"):
        import_v3_api(pinned="qsched_probe_api")
    assert import_v3_api(pinned="qsched_probe_api_absent").__name__ == "comfy_api.latest"
