"""The /qsched routes registered on a real ComfyUI server (shared harness; needs COMFYUI_DIR)."""
import json
import os
import urllib.error
import urllib.request

import pytest


def _get(server, path):
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"text": body.decode("utf-8", "replace")}


def test_preset_routes_on_the_comfyui_server(comfy_server):
    folder = os.path.join(comfy_server.user_dir, "qsched_presets")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "routes-foreign.json"), "w") as f:
        json.dump({"nodes": []}, f)
    for prefix in ("/qsched", "/api/qsched"):
        status, body = _get(comfy_server, prefix + "/presets")
        assert status == 200
        by_name = {entry["name"]: entry for entry in body["presets"]}
        # The pack's shipped example is listed after the user's folder, and the foreign file as invalid.
        example = by_name["example-sdxl-turbo-w4a4-euler_ancestral-4steps"]
        assert example["valid"] and example["summary"]["example"] and example["summary"]["steps"] == 4
        assert by_name["routes-foreign"] == {"name": "routes-foreign", "valid": False, "summary": None,
                                             "reason": by_name["routes-foreign"]["reason"]}
        assert "not a Q-Sched preset" in by_name["routes-foreign"]["reason"]
        status, body = _get(comfy_server, prefix + "/presets/example-sdxl-turbo-w4a4-euler_ancestral-4steps")
        assert status == 200 and body["preset"]["format"] == "qsched-preset"


@pytest.mark.parametrize("name", ["..%2F..%2Fcomfyui.db", "%2E%2E%5Csecret", "sub%2Fx", "%2Fetc%2Fpasswd"])
def test_refused_names_on_the_comfyui_server(comfy_server, name):
    status, body = _get(comfy_server, "/api/qsched/presets/" + name)
    assert status == 400 and "preset" not in body and body["error"]
